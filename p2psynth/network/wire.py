"""Wire format of the sync protocol: length-prefixed msgpack frames.

Every message is one frame: a 4-byte big-endian body length, then a msgpack
map. The reader checks the length against a limit before reading the body,
so a peer cannot make us buffer more than the limit. The decoders check
every field's type and range, so a handler only ever gets well-formed
requests. py-libp2p's own RequestResponse helper was not used: in 0.8.1 it
failed above about 6.8 MB on Yamux whatever its size option was set to,
while a length-prefixed loop on a raw stream moved 64 MB.

Requests (initiator to responder) and their responses, version 1.0::

    {"t": "have", "latest": {author(bin 32): sequence}}
        -> {"t": "have", "latest": {author: sequence}}
    {"t": "get_after", "author": bin(32), "after": int, "limit": int}
        -> {"t": "releases", "releases": [bin, ...], "more": bool}
    {"t": "get", "ids": [bin(32), ...]}
        -> {"t": "releases", "releases": [bin, ...], "more": false}
    any request that is rejected
        -> {"t": "error", "reason": str}

Version 1.1 adds two requests, so that a node can find releases missing in
the middle of an author's history and not only above its latest sequence::

    {"t": "summary", "latest": {author: sequence}}
        -> {"t": "summary", "authors": {author: [latest, count, digest(bin 16)]}}
    {"t": "index", "author": bin(32), "after": int, "limit": int}
        -> {"t": "index", "entries": [[sequence, release id(bin 32)], ...], "more": bool}

``count`` and ``digest`` describe the releases the responder holds of that
author (``index_digest``); two nodes holding the same releases of an author
send the same digest. An index response lists held releases with a sequence
above ``after`` in (sequence, release id) order, at most ``limit`` of them.
Sequences start at 1, so ``after`` 0 requests an author's releases from the first.
Every error here is a ``SyncProtocolError`` whose ``reason`` is a short
stable token used as a statistics key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

import msgpack
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from p2psynth.errors import NetworkError

FRAME_HEADER = struct.Struct(">I")
MAX_SEQUENCE = (1 << 63) - 1
KEY_BYTES = 32
DIGEST_BYTES = 16
# Read size per call; Yamux hands out at most what it has buffered anyway.
READ_CHUNK_BYTES = 256 * 1024


class SyncProtocolError(NetworkError):
    """A sync stream carried something other than a valid frame or message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EndOfStream(SyncProtocolError):
    """The peer closed its side cleanly between two frames."""

    def __init__(self) -> None:
        super().__init__("eof", "stream closed by the peer")


@dataclass(frozen=True)
class HaveRequest:
    """Our latest sequence per author; the responder returns its own map."""

    latest: dict[bytes, int]


@dataclass(frozen=True)
class GetAfterRequest:
    """Up to ``limit`` releases of ``author`` with a sequence above ``after``, in order."""

    author: bytes
    after: int
    limit: int


@dataclass(frozen=True)
class GetRequest:
    """The releases with these ids, as far as the responder holds them."""

    release_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class SummaryRequest:
    """Our latest sequence per author; the responder returns an ``AuthorSummary`` per author it holds."""

    latest: dict[bytes, int]


@dataclass(frozen=True)
class IndexRequest:
    """Up to ``limit`` (sequence, release id) pairs of ``author`` with a sequence above ``after``."""

    author: bytes
    after: int
    limit: int


Request = Union[HaveRequest, GetAfterRequest, GetRequest, SummaryRequest, IndexRequest]


@dataclass(frozen=True)
class AuthorSummary:
    """A node's releases of one author: latest sequence (0 if none), release count and ``index_digest``."""

    latest: int
    count: int
    digest: bytes


@dataclass(frozen=True)
class IndexResponse:
    """(sequence, release id) pairs in ascending order; ``more`` when the responder stopped at the limit."""

    entries: tuple[tuple[int, bytes], ...]
    more: bool


def index_digest(entries: Iterable[tuple[int, bytes]]) -> bytes:
    """Return the digest of an author's held releases: SHA-256, cut to 16 bytes.

    The input is every (sequence, release id) pair in ascending order, each
    hashed as an 8-byte big-endian sequence followed by the 32-byte id.
    """
    hasher = hashlib.sha256()
    for sequence, release_id in entries:
        hasher.update(sequence.to_bytes(8, "big"))
        hasher.update(release_id)
    return hasher.digest()[:DIGEST_BYTES]


@dataclass(frozen=True)
class ReleasesResponse:
    """Release bodies in the order asked for; ``more`` when a batch limit cut the list short."""

    releases: tuple[bytes, ...]
    more: bool


# Framing ------------------------------------------------------------------


async def write_frame(stream: INetStream, body: bytes) -> int:
    """Write one frame; return the bytes written, header included."""
    frame = FRAME_HEADER.pack(len(body)) + body
    await stream.write(frame)
    return len(frame)


async def read_frame(stream: INetStream, *, max_bytes: int) -> bytes:
    """Read one frame body of at most ``max_bytes``.

    Raises EndOfStream when the peer closed before the first header byte,
    and SyncProtocolError("truncated") or ("oversized") for a frame cut
    short or declaring a longer body than allowed. The caller owns the
    timeout.
    """
    header = await _read_exactly(stream, FRAME_HEADER.size, at_boundary=True)
    (length,) = FRAME_HEADER.unpack(header)
    if length > max_bytes:
        raise SyncProtocolError("oversized", f"frame declares {length} bytes, over the limit of {max_bytes}")
    if length == 0:
        raise SyncProtocolError("malformed", "invalid empty frame; every frame contains a msgpack map")
    return await _read_exactly(stream, length, at_boundary=False)


async def _read_exactly(stream: INetStream, size: int, *, at_boundary: bool) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        try:
            chunk = await stream.read(min(size - len(buffer), READ_CHUNK_BYTES))
        except StreamEOF:
            chunk = b""
        if not chunk:
            if at_boundary and not buffer:
                raise EndOfStream()
            raise SyncProtocolError("truncated", f"stream ended after {len(buffer)} of {size} bytes of a frame")
        buffer += chunk
    return bytes(buffer)


class FrameReader:
    """Reads frames from one stream with as few stream reads as possible.

    ``read_frame`` reads the header and then exactly the body, two or more
    reads per frame. py-libp2p 0.8.1's Yamux sends a WINDOW_UPDATE frame
    after almost every read, each one a Noise message and a system call on
    both hosts. This reader therefore asks for up to ``READ_CHUNK_BYTES`` at
    a time and keeps what it read past the current frame for the next one. The
    buffer holds at most one frame plus one chunk.
    """

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        # Bytes read from the stream and not yet returned as a frame.
        self._buffer = bytearray()

    async def read_frame(self, *, max_bytes: int) -> bytes:
        """Read one frame body of at most ``max_bytes``; raises like ``read_frame``."""
        await self._fill(FRAME_HEADER.size, at_boundary=True)
        (length,) = FRAME_HEADER.unpack_from(self._buffer)
        if length > max_bytes:
            raise SyncProtocolError("oversized", f"frame declares {length} bytes, over the limit of {max_bytes}")
        if length == 0:
            raise SyncProtocolError("malformed", "invalid empty frame; every frame contains a msgpack map")

        end = FRAME_HEADER.size + length
        await self._fill(end, at_boundary=False)
        body = bytes(self._buffer[FRAME_HEADER.size : end])
        del self._buffer[:end]
        return body

    async def _fill(self, size: int, *, at_boundary: bool) -> None:
        while len(self._buffer) < size:
            try:
                chunk = await self._stream.read(max(size - len(self._buffer), READ_CHUNK_BYTES))
            except StreamEOF:
                chunk = b""
            if not chunk:
                if at_boundary and not self._buffer:
                    raise EndOfStream()
                raise SyncProtocolError(
                    "truncated", f"stream ended after {len(self._buffer)} of {size} bytes of a frame"
                )
            self._buffer += chunk


# Messages ------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    if isinstance(request, HaveRequest):
        return _pack({"t": "have", "latest": dict(request.latest)})
    if isinstance(request, GetAfterRequest):
        return _pack({"t": "get_after", "author": request.author, "after": request.after, "limit": request.limit})
    if isinstance(request, GetRequest):
        return _pack({"t": "get", "ids": list(request.release_ids)})
    if isinstance(request, SummaryRequest):
        return _pack({"t": "summary", "latest": dict(request.latest)})
    if isinstance(request, IndexRequest):
        return _pack({"t": "index", "author": request.author, "after": request.after, "limit": request.limit})
    raise TypeError(f"not a sync request: {request!r}")


def decode_request(body: bytes, *, max_ids: int, max_authors: int) -> Request:
    """Parse a request frame body; raise SyncProtocolError for anything unexpected."""
    message = _unpack(body, max_items=max(max_ids, max_authors))
    kind = message.get("t")
    if kind == "have":
        _expect_keys(message, {"t", "latest"})
        return HaveRequest(_decode_latest(message["latest"], max_authors=max_authors, reason="bad_request"))
    if kind == "get_after":
        _expect_keys(message, {"t", "author", "after", "limit"})
        return GetAfterRequest(
            author=_expect_key_bytes("author", message["author"]),
            after=_expect_int("after", message["after"], minimum=0, maximum=MAX_SEQUENCE),
            limit=_expect_int("limit", message["limit"], minimum=1, maximum=MAX_SEQUENCE),
        )
    if kind == "get":
        _expect_keys(message, {"t", "ids"})
        ids = message["ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= max_ids:
            raise SyncProtocolError("bad_request", f"get request must list 1 to {max_ids} release ids")
        return GetRequest(tuple(_expect_key_bytes("release id", item) for item in ids))
    if kind == "summary":
        _expect_keys(message, {"t", "latest"})
        return SummaryRequest(_decode_latest(message["latest"], max_authors=max_authors, reason="bad_request"))
    if kind == "index":
        _expect_keys(message, {"t", "author", "after", "limit"})
        return IndexRequest(
            author=_expect_key_bytes("author", message["author"]),
            after=_expect_int("after", message["after"], minimum=0, maximum=MAX_SEQUENCE),
            limit=_expect_int("limit", message["limit"], minimum=1, maximum=MAX_SEQUENCE),
        )
    raise SyncProtocolError("unknown_type", f"unknown sync request type {kind!r:.40}")


def encode_have_response(latest: dict[bytes, int]) -> bytes:
    return _pack({"t": "have", "latest": dict(latest)})


def encode_releases_response(releases: list[bytes], *, more: bool) -> bytes:
    return _pack({"t": "releases", "releases": list(releases), "more": bool(more)})


def encode_summary_response(summaries: dict[bytes, AuthorSummary]) -> bytes:
    authors = {author: [summary.latest, summary.count, summary.digest] for author, summary in summaries.items()}
    return _pack({"t": "summary", "authors": authors})


def encode_index_response(entries: list[tuple[int, bytes]], *, more: bool) -> bytes:
    return _pack({"t": "index", "entries": [[sequence, release_id] for sequence, release_id in entries], "more": bool(more)})


def encode_error_response(reason: str) -> bytes:
    return _pack({"t": "error", "reason": reason})


def decode_have_response(body: bytes, *, max_authors: int) -> dict[bytes, int]:
    message = _decode_response(body, "have", max_items=max_authors)
    _expect_keys(message, {"t", "latest"}, reason="bad_response")
    return _decode_latest(message["latest"], max_authors=max_authors, reason="bad_response")


def decode_releases_response(body: bytes, *, max_releases: int, max_release_bytes: int) -> ReleasesResponse:
    message = _decode_response(body, "releases", max_items=max_releases)
    _expect_keys(message, {"t", "releases", "more"}, reason="bad_response")
    releases, more = message["releases"], message["more"]
    if not isinstance(releases, list) or len(releases) > max_releases:
        raise SyncProtocolError("bad_response", f"response must list at most {max_releases} releases")
    for data in releases:
        if not isinstance(data, bytes) or not 1 <= len(data) <= max_release_bytes:
            raise SyncProtocolError(
                "bad_response", f"every release must be 1 to {max_release_bytes} bytes of bin"
            )
    if not isinstance(more, bool):
        raise SyncProtocolError("bad_response", "response field 'more' must be a boolean")
    return ReleasesResponse(tuple(releases), more)


def decode_summary_response(body: bytes, *, max_authors: int) -> dict[bytes, AuthorSummary]:
    message = _decode_response(body, "summary", max_items=max(max_authors, 3))
    _expect_keys(message, {"t", "authors"}, reason="bad_response")
    authors = message["authors"]
    if not isinstance(authors, dict) or len(authors) > max_authors:
        raise SyncProtocolError("bad_response", f"'authors' must map at most {max_authors} authors to summaries")
    summaries = {}
    try:
        for author, value in authors.items():
            if not isinstance(value, list) or len(value) != 3:
                raise SyncProtocolError("bad_response", f"an author summary must be [latest, count, digest], got {value!r:.80}")
            latest, count, digest = value
            if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
                raise SyncProtocolError("bad_response", f"a digest must be {DIGEST_BYTES} bytes, got {digest!r:.80}")
            summaries[_expect_key_bytes("author", author)] = AuthorSummary(
                latest=_expect_int("latest", latest, minimum=0, maximum=MAX_SEQUENCE),
                count=_expect_int("count", count, minimum=0, maximum=MAX_SEQUENCE),
                digest=digest,
            )
    except SyncProtocolError as exc:
        raise SyncProtocolError("bad_response", str(exc)) from None
    return summaries


def decode_index_response(body: bytes, *, after: int, max_entries: int) -> IndexResponse:
    """Parse an index response to a request with ``after``.

    Entries must ascend and lie above ``after``. Those checks guarantee that paging with the last sequence as the next
    ``after`` makes progress whatever a peer sends.
    """
    message = _decode_response(body, "index", max_items=max(max_entries, 2))
    _expect_keys(message, {"t", "entries", "more"}, reason="bad_response")
    raw_entries, more = message["entries"], message["more"]
    if not isinstance(raw_entries, list) or len(raw_entries) > max_entries:
        raise SyncProtocolError("bad_response", f"an index response must list at most {max_entries} entries")
    if not isinstance(more, bool):
        raise SyncProtocolError("bad_response", "response field 'more' must be a boolean")
    entries: list[tuple[int, bytes]] = []
    previous = (after, b"")
    try:
        for item in raw_entries:
            if not isinstance(item, list) or len(item) != 2:
                raise SyncProtocolError("bad_response", f"an index entry must be [sequence, release id], got {item!r:.80}")
            entry = (
                _expect_int("sequence", item[0], minimum=after + 1, maximum=MAX_SEQUENCE),
                _expect_key_bytes("release id", item[1]),
            )
            if entry <= previous:
                raise SyncProtocolError("bad_response", "index entries must be in ascending (sequence, release id) order")
            entries.append(entry)
            previous = entry
    except SyncProtocolError as exc:
        raise SyncProtocolError("bad_response", str(exc)) from None
    return IndexResponse(tuple(entries), more)


def _decode_response(body: bytes, expected: str, *, max_items: int) -> dict[str, Any]:
    message = _unpack(body, max_items=max_items)
    kind = message.get("t")
    if kind == "error":
        reason = message.get("reason")
        raise SyncProtocolError("rejected", f"peer rejected the request: {reason!r:.80}")
    if kind != expected:
        raise SyncProtocolError("bad_response", f"expected a {expected!r} response, got {kind!r:.40}")
    return message


def _decode_latest(latest: Any, *, max_authors: int, reason: str) -> dict[bytes, int]:
    if not isinstance(latest, dict) or len(latest) > max_authors:
        raise SyncProtocolError(reason, f"'latest' must map at most {max_authors} authors to sequences")
    try:
        return {
            _expect_key_bytes("author", author): _expect_int("sequence", sequence, minimum=1, maximum=MAX_SEQUENCE)
            for author, sequence in latest.items()
        }
    except SyncProtocolError as exc:
        raise SyncProtocolError(reason, str(exc)) from None


def _expect_keys(message: dict[str, Any], keys: set[str], *, reason: str = "bad_request") -> None:
    if set(message) != keys:
        raise SyncProtocolError(reason, f"message keys must be {sorted(keys)}, got {sorted(map(str, message))}")


def _expect_key_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise SyncProtocolError("bad_request", f"{name} must be {KEY_BYTES} bytes, got {value!r:.80}")
    return value


def _expect_int(name: str, value: Any, *, minimum: int, maximum: int) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise SyncProtocolError("bad_request", f"{name} must be an integer in [{minimum}, {maximum}], got {value!r:.40}")
    return value


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _unpack(body: bytes, *, max_items: int) -> dict[str, Any]:
    # The length limits keep msgpack from allocating for sizes larger than the
    # frame; the frame reader already bounded the frame itself.
    try:
        message = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(body),
            max_str_len=64,
            max_array_len=max_items,
            max_map_len=max(max_items, 8),
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise SyncProtocolError("malformed", "frame has trailing bytes after the msgpack map") from None
    except (ValueError, TypeError, msgpack.UnpackException, OverflowError, RecursionError) as exc:
        raise SyncProtocolError("malformed", f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict) or not all(isinstance(key, str) for key in message):
        raise SyncProtocolError("malformed", "frame must hold a msgpack map with string keys")
    return message
