"""Release announcements: the small signed message that gossip carries.

An announcement states that a release exists: its id (SHA-256 of
the release bytes), its author's Ed25519 public key, the author's sequence
number and the body size. Peers then pull the body over the sync protocol.
Bodies never travel by gossip because py-libp2p 0.8.1 silently drops gossip
messages over 1 MiB and keeps full copies of recent messages in its router.

The author signs the announcement with the same key that signs the release,
separately from libp2p's per-message signature. libp2p signs for the peer
that published the gossip message, and that proves nothing about the
release's author once a relay forwards or re-publishes it.

Wire format: a msgpack map with the keys in this fixed order::

    {"v": 1, "release_id": bin(32), "author": bin(32), "sequence": int,
     "size": int, "sig": bin(64)}

``sig`` is Ed25519 over ``SIGNATURE_CONTEXT`` followed by the msgpack encoding
of the same map without ``sig``. Decoding accepts only the canonical encoding
(re-encoding must give back the same bytes), which rejects reordered or
duplicate keys, extra keys and non-minimal integers, and it rejects anything
over ``MAX_ANNOUNCEMENT_BYTES`` before parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2psynth.errors import NetworkError

ANNOUNCEMENT_VERSION = 1
SIGNATURE_CONTEXT = b"p2psynth/announce/v1\x00"

# A canonical announcement is 176 to 188 bytes; the limit leaves room for a
# later version without letting a peer make the validator parse much.
MAX_ANNOUNCEMENT_BYTES = 1024

# The largest release body an announcement may declare: the release decoder's
# own limit (p2psynth.release.MAX_RELEASE_BYTES, 16 MiB).
MAX_RELEASE_BYTES = 16 * 1024 * 1024
MAX_SEQUENCE = (1 << 63) - 1

_KEYS = ("v", "release_id", "author", "sequence", "size", "sig")


class AnnouncementError(NetworkError):
    """Announcement bytes fail strict decoding, limits or signature verification.

    ``reason`` is a short stable token (for example ``"oversized"`` or
    ``"bad_signature"``) used as a statistics key.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Announcement:
    """A decoded, signature-checked announcement of one release."""

    release_id: bytes
    author: bytes
    sequence: int
    size_bytes: int
    signature: bytes

    def encode(self) -> bytes:
        """Return the canonical wire bytes, signature included."""
        return _pack({**self._signed_fields(), "sig": self.signature})

    def _signed_fields(self) -> dict[str, Any]:
        return {
            "v": ANNOUNCEMENT_VERSION,
            "release_id": self.release_id,
            "author": self.author,
            "sequence": self.sequence,
            "size": self.size_bytes,
        }


def sign_announcement(
    *, release_id: bytes, sequence: int, size_bytes: int, private_key: Ed25519PrivateKey
) -> bytes:
    """Return the signed wire bytes announcing a release authored by ``private_key``'s owner."""
    author = private_key.public_key().public_bytes_raw()
    unsigned = Announcement(release_id, author, sequence, size_bytes, signature=b"")
    _check_fields(unsigned, max_release_bytes=MAX_RELEASE_BYTES)
    signature = private_key.sign(SIGNATURE_CONTEXT + _pack(unsigned._signed_fields()))
    return Announcement(release_id, author, sequence, size_bytes, signature).encode()


def decode_announcement(data: bytes, *, max_release_bytes: int = MAX_RELEASE_BYTES) -> Announcement:
    """Parse and verify announcement bytes; raise AnnouncementError on any fault."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AnnouncementError("not_bytes", f"announcement must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementError(
            "oversized", f"announcement is {len(data)} bytes, over the limit of {MAX_ANNOUNCEMENT_BYTES}"
        )

    fields = _unpack(data)
    if not isinstance(fields, dict) or tuple(fields) != _KEYS:
        keys = list(fields) if isinstance(fields, dict) else type(fields).__name__
        raise AnnouncementError("malformed", f"announcement must be a map with keys {list(_KEYS)}, got {keys}")
    if type(fields["v"]) is not int or fields["v"] != ANNOUNCEMENT_VERSION:
        raise AnnouncementError(
            "unknown_version",
            f"unknown announcement version {fields['v']!r}; this node reads version {ANNOUNCEMENT_VERSION}",
        )
    signature = fields["sig"]
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise AnnouncementError("malformed", "announcement signature must be 64 bytes of bin")

    announcement = Announcement(
        release_id=fields["release_id"],
        author=fields["author"],
        sequence=fields["sequence"],
        size_bytes=fields["size"],
        signature=signature,
    )
    _check_fields(announcement, max_release_bytes=max_release_bytes)
    if announcement.encode() != data:
        raise AnnouncementError("not_canonical", "announcement is not in canonical encoding")

    try:
        public_key = Ed25519PublicKey.from_public_bytes(announcement.author)
        public_key.verify(signature, SIGNATURE_CONTEXT + _pack(announcement._signed_fields()))
    except InvalidSignature:
        raise AnnouncementError(
            "bad_signature", f"invalid signature on announcement by author {announcement.author.hex()[:16]}"
        ) from None
    except ValueError as exc:
        raise AnnouncementError("bad_author", f"invalid author public key in announcement: {exc}") from exc
    return announcement


def _check_fields(announcement: Announcement, *, max_release_bytes: int) -> None:
    for name in ("release_id", "author"):
        value = getattr(announcement, name)
        if not isinstance(value, bytes) or len(value) != 32:
            raise AnnouncementError("malformed", f"announcement {name} must be 32 bytes, got {value!r:.80}")
    if type(announcement.sequence) is not int or not 1 <= announcement.sequence <= MAX_SEQUENCE:
        raise AnnouncementError(
            "malformed", f"announcement sequence must be an integer in [1, {MAX_SEQUENCE}], got {announcement.sequence!r}"
        )
    if type(announcement.size_bytes) is not int or not 1 <= announcement.size_bytes <= max_release_bytes:
        raise AnnouncementError(
            "malformed",
            f"announcement size must be an integer in [1, {max_release_bytes}] bytes, got {announcement.size_bytes!r}",
        )


def _pack(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    # The max_*_len limits keep msgpack from allocating more than the input
    # could hold; ExtraData means bytes after the first object.
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_ANNOUNCEMENT_BYTES,
            max_str_len=64,
            max_array_len=0,
            max_map_len=len(_KEYS),
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise AnnouncementError("malformed", "announcement has trailing bytes after the msgpack map") from None
    except (ValueError, TypeError, msgpack.UnpackException, OverflowError, RecursionError) as exc:
        raise AnnouncementError("malformed", f"announcement is not valid msgpack: {exc}") from exc
