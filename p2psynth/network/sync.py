"""The sync protocol ``/p2psynth/sync/1.1.0`` (and 1.0.0): pull releases from one peer.

Gossip is lossy: py-libp2p 0.8.1 drops messages past a 32-slot queue per peer
and past 10 messages per second per peer and topic, and a node that was down
misses everything. So every node reconciles with its peers over this
request/response protocol. Anti-entropy in the style of Demers et al., "Epidemic
algorithms for replicated database maintenance" (PODC 1987): the initiator
sends its latest sequence per author (HAVE), the responder returns its own
map, and the initiator pulls what it lacks in batches (GET_AFTER). A GET by
release id serves the pull that follows a gossip announcement. The frame and
message formats are in ``wire``.

Version 1.1 also repairs gaps inside an author's history: an author may
publish several releases per epoch, and a node that missed sequence 5 but
got 6 would never ask for 5 by "latest sequence" alone. The SUMMARY response
carries, per author, the latest sequence plus the count and a digest of the
held (sequence, release id) pairs. Where the digests differ after the
GET_AFTER pulls, the initiator pages through the peer's INDEX of that author
and GETs the ids it neither holds nor rejected. Sets are compared by digest
and not by exchanging full lists every round, because in the usual case the
digests match and a round costs one small request. Rejected ids are
remembered (bounded) so a body the node rejected is not pulled again, and a
(peer, author) pair whose lists were compared without result is skipped until
either digest changes, so a peer holding a release we reject does not cost an
INDEX request every round. Both versions share one handler. An initiator
offers 1.1 first and falls back to 1.0 with a 1.0 peer. A node whose
``ReleaseSource`` has no ``release_index`` method speaks 1.0 only.

One stream carries a session of several requests, which saves a
multistream-select round trip per request. Every limit is in ``SyncLimits``:
frame sizes, batch sizes, timeouts, concurrent streams. No input from a peer
can end the process: the stream handler catches every exception, resets the
stream and counts the reason in ``NetworkStatistics`` (inbound reasons are
prefixed ``inbound:``, failures of our own requests ``outbound:``).

The layer never decodes a release. Bodies go to the node's ``accept_release``
callback, which validates, stores and returns a ``ReleaseVerdict``. Progress
through an author's history is read back from ``ReleaseSource``, so a body
the node rejects does not advance the pull.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID

from p2psynth.errors import NetworkError
from p2psynth.network.host import public_key_from_peer_id
from p2psynth.network.session import Session, StreamPool, close_quietly, reset_quietly
from p2psynth.network.stats import NetworkStatistics
from p2psynth.network.wire import (
    AuthorSummary,
    EndOfStream,
    FrameReader,
    GetAfterRequest,
    GetRequest,
    HaveRequest,
    IndexRequest,
    Request,
    SummaryRequest,
    SyncProtocolError,
    decode_request,
    encode_error_response,
    encode_have_response,
    encode_index_response,
    encode_releases_response,
    encode_summary_response,
    index_digest,
    write_frame,
)

logger = logging.getLogger(__name__)

SYNC_PROTOCOL_ID = TProtocol("/p2psynth/sync/1.0.0")
SYNC_PROTOCOL_ID_V1_1 = TProtocol("/p2psynth/sync/1.1.0")

MiB = 1024 * 1024


class ReleaseSource(Protocol):
    """Read access to the node's releases, as the sync layer needs it (``p2psynth.store.Store`` fits)."""

    def latest_sequences(self) -> dict[bytes, int]: ...

    def releases_after(self, author: bytes, sequence: int, *, limit: int) -> list[bytes]: ...

    def get_release(self, release_id: bytes) -> bytes | None: ...


class ReleaseIndex(Protocol):
    """The optional method of a ``ReleaseSource`` that turns on gap repair (protocol 1.1)."""

    def release_index(self, author: bytes, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Return up to ``limit`` (sequence, release id) pairs of ``author`` above ``after``, ascending."""
        ...


class ReleaseVerdict(str, enum.Enum):
    """The node's verdict on a release body received from a peer."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


# accept_release(data, *, from_peer=peer id string) -> verdict, plain or async.
AcceptRelease = Callable[..., "ReleaseVerdict | Awaitable[ReleaseVerdict]"]
IsMember = Callable[[bytes], bool]


@dataclass(frozen=True, kw_only=True)
class SyncLimits:
    """Bounds of the sync protocol; defaults suit releases of up to 16 MiB."""

    max_request_bytes: int = 64 * 1024
    max_release_bytes: int = 16 * MiB
    # A response holds at most this many releases, and stops adding releases
    # past max_batch_bytes (one release larger than that still goes alone).
    max_batch_releases: int = 16
    max_batch_bytes: int = 8 * MiB
    max_get_ids: int = 64
    # 1024 authors make a HAVE map of about 46 KB, under max_request_bytes.
    max_authors: int = 1024
    # Initiator: one request and its response. Responder: wait for the next request.
    request_timeout_s: float = 30.0
    read_timeout_s: float = 10.0
    # Whole outbound session (HAVE plus every batch), and its request count.
    session_timeout_s: float = 120.0
    max_requests_per_session: int = 64
    max_inbound_streams: int = 32
    max_inbound_streams_per_peer: int = 4
    # Protocol 1.1: entries per INDEX response, and the entries per author that
    # the digest covers and one session pages through.
    max_index_entries: int = 512
    max_index_entries_per_author: int = 4096
    # Release ids whose body the node rejected, and (peer, author) pairs
    # compared without result, remembered in memory (oldest forgotten first).
    max_remembered_rejections: int = 4096
    max_settled_pairs: int = 4096
    # An outbound stream idle this long (at most half of read_timeout_s) is closed, not reused.
    pooled_stream_idle_s: float = 5.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise NetworkError(f"sync limit {name} must be positive, got {value!r}")

    @property
    def max_response_bytes(self) -> int:
        """Largest response frame accepted: a full batch or one maximal release, plus msgpack overhead."""
        return max(self.max_batch_bytes, self.max_release_bytes) + 64 * 1024


@dataclass(frozen=True)
class PullPlan:
    """An author whose releases a peer has up to a higher sequence than ours."""

    author: bytes
    local_sequence: int
    remote_sequence: int


@dataclass
class PullResult:
    """Outcome of one pull: verdict counts, and the ids of bodies accepted or already stored."""

    verdicts: Counter[str] = field(default_factory=Counter)
    received_ids: set[bytes] = field(default_factory=set)
    requests: int = 0

    @property
    def accepted(self) -> int:
        return self.verdicts[ReleaseVerdict.ACCEPTED.value]


def content_id(data: bytes) -> bytes:
    """Return the release id of release bytes: SHA-256, as ``p2psynth.release.release_id``."""
    return hashlib.sha256(data).digest()


def plan_pulls(
    local: Mapping[bytes, int], remote: Mapping[bytes, int], *, is_member: IsMember | None = None
) -> list[PullPlan]:
    """List the authors for which ``remote`` is ahead of ``local``, largest gap first.

    Authors rejected by ``is_member`` are skipped. Ties break on the author
    key so that the order is deterministic.
    """
    plans = [
        PullPlan(author, local.get(author, 0), sequence)
        for author, sequence in remote.items()
        if sequence > local.get(author, 0) and (is_member is None or is_member(author))
    ]
    plans.sort(key=lambda plan: (plan.local_sequence - plan.remote_sequence, plan.author))
    return plans


class SyncProtocol:
    """Responder and initiator of the sync protocol on one host."""

    def __init__(
        self,
        host: IHost,
        *,
        releases: ReleaseSource,
        accept_release: AcceptRelease,
        statistics: NetworkStatistics,
        limits: SyncLimits = SyncLimits(),
        is_member: IsMember | None = None,
        on_peer_ahead: Callable[[ID], None] | None = None,
    ) -> None:
        self._host = host
        self._releases = releases
        self._accept_release = accept_release
        self._statistics = statistics
        self.limits = limits
        self._is_member = is_member
        # Called (synchronously) when a HAVE request shows the peer holds releases we lack.
        self._on_peer_ahead = on_peer_ahead
        # Open inbound streams, in total and per peer id string; bounded by the limits.
        self._inbound_streams = 0
        self._inbound_by_peer: Counter[str] = Counter()
        # The source's release_index method. Without it the node speaks protocol 1.0 only.
        self._release_index: Callable[..., list[tuple[int, bytes]]] | None = getattr(
            releases, "release_index", None
        )
        # Ids of bodies the node rejected, which are not pulled again while remembered.
        self._rejected_ids: OrderedDict[bytes, None] = OrderedDict()
        # (peer, author) -> (peer digest, our digest) of an index comparison
        # that left nothing to pull; skipped while both digests stay the same.
        self._settled: OrderedDict[tuple[str, bytes], tuple[bytes, bytes]] = OrderedDict()
        # One idle outbound stream per peer, reused by the next session (see ``session``).
        self._pool = StreamPool(
            max_idle_s=min(limits.pooled_stream_idle_s, limits.read_timeout_s / 2),
            max_requests=limits.max_requests_per_session,
        )

    @property
    def protocols(self) -> tuple[TProtocol, ...]:
        """The protocol ids this node serves and offers, preferred first."""
        if self._release_index is None:
            return (SYNC_PROTOCOL_ID,)
        return (SYNC_PROTOCOL_ID_V1_1, SYNC_PROTOCOL_ID)

    def install(self) -> None:
        """Register the stream handler on the host, for every protocol version spoken."""
        for protocol_id in self.protocols:
            self._host.set_stream_handler(protocol_id, self.handle_stream)

    # Responder ---------------------------------------------------------------

    async def handle_stream(self, stream: INetStream) -> None:
        """Serve one inbound session; every exception is caught, counted and ends in a stream reset.

        Only trio's Cancelled propagates, when the host shuts down.
        """
        peer = "<unknown>"
        try:
            peer_id = stream.muxed_conn.peer_id
            peer = str(peer_id)
            rejection = self._admission_rejection(peer_id)
            if rejection is not None:
                self._statistics.count_error(peer, f"inbound:{rejection}")
                await _send_rejection(stream, rejection)
                return
            await self._serve_admitted(stream, peer_id)
        except Exception as exc:  # last guard: an exception here would end the process
            self._statistics.count_error(peer, "inbound:internal", f"{type(exc).__name__}: {exc}")
            logger.error("sync handler failed on a stream from peer %s", peer, exc_info=exc)
            await reset_quietly(stream)

    async def _serve_admitted(self, stream: INetStream, peer_id: ID) -> None:
        peer = str(peer_id)
        self._inbound_streams += 1
        self._inbound_by_peer[peer] += 1
        try:
            await self._serve_session(stream, peer_id)
            await close_quietly(stream)
        except EndOfStream:
            await close_quietly(stream)
        except SyncProtocolError as exc:
            self._statistics.count_error(peer, f"inbound:{exc.reason}", str(exc))
            await reset_quietly(stream)
        except (BaseLibp2pError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._statistics.count_error(peer, "inbound:stream_error", f"{type(exc).__name__}: {exc}")
            await reset_quietly(stream)
        finally:
            self._inbound_streams -= 1
            self._inbound_by_peer[peer] -= 1
            if self._inbound_by_peer[peer] <= 0:
                del self._inbound_by_peer[peer]

    def _admission_rejection(self, peer_id: ID) -> str | None:
        if self._is_member is not None:
            try:
                member = self._is_member(public_key_from_peer_id(peer_id))
            except NetworkError:
                member = False
            if not member:
                return "not_member"
        if self._inbound_streams >= self.limits.max_inbound_streams:
            return "busy"
        if self._inbound_by_peer[str(peer_id)] >= self.limits.max_inbound_streams_per_peer:
            return "busy"
        return None

    async def _serve_session(self, stream: INetStream, peer_id: ID) -> None:
        """Serve requests until the peer closes the stream, stays idle or exceeds the request cap.

        A stream without a first request within ``read_timeout_s`` is an
        error. After a served request, the same wait ends the stream cleanly,
        because initiators keep a stream open for their next session.
        """
        peer = str(peer_id)
        reader = FrameReader(stream)
        served = 0
        while True:
            body = b""
            with trio.move_on_after(self.limits.read_timeout_s) as waiting:
                body = await reader.read_frame(max_bytes=self.limits.max_request_bytes)
            if waiting.cancelled_caught:
                if served == 0:
                    raise SyncProtocolError("timeout", f"no request within {self.limits.read_timeout_s} s")
                return
            if served >= self.limits.max_requests_per_session:
                raise SyncProtocolError(
                    "too_many_requests", f"stream exceeded {self.limits.max_requests_per_session} requests"
                )
            self._statistics.count_received(peer, len(body) + 4)
            await self._serve_request(stream, body, peer_id)
            served += 1

    async def _serve_request(self, stream: INetStream, body: bytes, peer_id: ID) -> None:
        # A function of its own, so that the response (up to a full batch of
        # bodies) is freed before the loop waits on an idle stream.
        request = decode_request(body, max_ids=self.limits.max_get_ids, max_authors=self.limits.max_authors)
        response = self._respond(request, peer_id)
        with trio.move_on_after(self.limits.request_timeout_s) as writing:
            sent = await write_frame(stream, response)
        if writing.cancelled_caught:
            raise SyncProtocolError("write_timeout", f"response not taken within {self.limits.request_timeout_s} s")
        self._statistics.count_sent(str(peer_id), sent)

    def _respond(self, request: Request, peer_id: ID) -> bytes:
        # NOTE: the store is read synchronously on the event loop. A batch of
        # 8 MiB from SQLite takes milliseconds, so a thread was not worth it.
        if isinstance(request, HaveRequest):
            latest = self._releases.latest_sequences()
            if self._on_peer_ahead is not None and plan_pulls(latest, request.latest, is_member=self._is_member):
                self._on_peer_ahead(peer_id)
            if len(latest) > self.limits.max_authors:
                # NOTE: a network with more authors than max_authors syncs only the first ones by key.
                latest = dict(sorted(latest.items())[: self.limits.max_authors])
            return encode_have_response(latest)

        if isinstance(request, GetAfterRequest):
            limit = min(request.limit, self.limits.max_batch_releases)
            bodies = self._releases.releases_after(request.author, request.after, limit=limit)
            batch = self._fill_batch(bodies)
            return encode_releases_response(batch, more=len(batch) < len(bodies) or len(bodies) == limit)

        if isinstance(request, GetRequest):
            considered = request.release_ids[: self.limits.max_batch_releases]
            bodies = []
            for release_id in considered:
                data = self._releases.get_release(release_id)
                if data is not None:
                    bodies.append(data)
            batch = self._fill_batch(bodies)
            more = len(batch) < len(bodies) or len(considered) < len(request.release_ids)
            return encode_releases_response(batch, more=more)

        if isinstance(request, SummaryRequest):
            latest = self._releases.latest_sequences()
            if self._on_peer_ahead is not None and plan_pulls(latest, request.latest, is_member=self._is_member):
                self._on_peer_ahead(peer_id)
            authors = sorted(latest)[: self.limits.max_authors]
            return encode_summary_response({author: self.summarize(author, latest[author]) for author in authors})

        if isinstance(request, IndexRequest):
            limit = min(request.limit, self.limits.max_index_entries)
            entries = self.local_index(request.author, after=request.after, limit=limit + 1)
            return encode_index_response(entries[:limit], more=len(entries) > limit)
        raise TypeError(f"unhandled sync request {request!r}")

    def local_index(self, author: bytes, *, after: int = 0, limit: int) -> list[tuple[int, bytes]]:
        """Return the node's (sequence, release id) pairs of ``author`` above ``after``; empty without an index."""
        if self._release_index is None:
            return []
        return list(self._release_index(author, after=after, limit=limit))

    def summarize(self, author: bytes, latest: int) -> AuthorSummary:
        """Return the SUMMARY entry of ``author``: ``latest`` and the count and digest of held releases.

        NOTE: the count and digest cover the first ``max_index_entries_per_author``
        releases only; an author with more never has its later gaps repaired.
        """
        entries = self.local_index(author, limit=self.limits.max_index_entries_per_author)
        return AuthorSummary(latest=latest, count=len(entries), digest=index_digest(entries))

    def _fill_batch(self, bodies: list[bytes]) -> list[bytes]:
        batch: list[bytes] = []
        total = 0
        for data in bodies:
            if len(data) > self.limits.max_release_bytes:
                logger.error("stored release of %d bytes is over the sync limit; not sent", len(data))
                continue
            if batch and total + len(data) > self.limits.max_batch_bytes:
                break
            batch.append(data)
            total += len(data)
        return batch

    # Initiator ---------------------------------------------------------------

    async def pull_missing(self, peer_id: ID) -> PullResult:
        """Exchange SUMMARY maps with ``peer_id`` (HAVE with a 1.0 peer) and pull every release we lack.

        First the releases above our latest sequence of each author, then
        (protocol 1.1) those missing inside our copy of an author's history.
        Bounded by ``session_timeout_s`` and ``max_requests_per_session``;
        whatever is left is pulled in a later round. Raises SyncProtocolError
        (already counted) when the session fails.
        """
        result = PullResult()
        with trio.move_on_after(self.limits.session_timeout_s) as deadline:
            async with self._session(peer_id) as session:
                local = self._releases.latest_sequences()
                summaries: dict[bytes, AuthorSummary] = {}
                if session.protocol == SYNC_PROTOCOL_ID_V1_1:
                    summaries = await session.summary(local)
                    remote = {author: summary.latest for author, summary in summaries.items() if summary.latest > 0}
                else:
                    remote = await session.have(local)
                result.requests += 1

                budget_left = True
                for plan in plan_pulls(local, remote, is_member=self._is_member):
                    if not await self._pull_author(session, plan, result):
                        budget_left = False
                        break
                if budget_left and summaries:
                    await self._repair_gaps(session, summaries, result)
        if deadline.cancelled_caught:
            self._statistics.count_error(str(peer_id), "outbound:session_timeout")
        return result

    async def _pull_author(self, session: Session, plan: PullPlan, result: PullResult) -> bool:
        """Pull one author's releases after ours; return False once the session's request budget is spent."""
        after = plan.local_sequence
        while after < plan.remote_sequence:
            if result.requests >= self.limits.max_requests_per_session:
                return False
            # A gossip pull may have stored some of these meanwhile; do not fetch them twice.
            after = max(after, self._releases.latest_sequences().get(plan.author, 0))
            if after >= plan.remote_sequence:
                break
            response = await session.get_after(plan.author, after)
            result.requests += 1
            for data in response.releases:
                await self._deliver(data, session.peer, result)

            # Progress is what the node stored, so rejected bodies cannot loop us.
            stored = self._releases.latest_sequences().get(plan.author, 0)
            if not response.releases or stored <= after:
                break
            after = stored
        return True

    async def _repair_gaps(self, session: Session, summaries: dict[bytes, AuthorSummary], result: PullResult) -> None:
        """Pull the releases a peer holds that are missing inside our copy of each author's history.

        Runs after the GET_AFTER pulls, so only authors whose digests still
        differ cost requests. Stops when the session's request budget is spent.
        """
        for author in sorted(summaries):
            summary = summaries[author]
            if summary.count == 0 or (self._is_member is not None and not self._is_member(author)):
                continue
            local_digest = self.summarize(author, 0).digest
            if local_digest == summary.digest:
                continue
            key = (session.peer, author)
            if self._settled.get(key) == (summary.digest, local_digest):
                continue
            if not await self._repair_author(session, author, result):
                return
            self._remember(self._settled, key, (summary.digest, self.summarize(author, 0).digest), self.limits.max_settled_pairs)

    async def _repair_author(self, session: Session, author: bytes, result: PullResult) -> bool:
        """Page through the peer's index of ``author`` and GET what we lack; return False once the budget is spent."""
        stored_ids = {
            release_id for _, release_id in self.local_index(author, limit=self.limits.max_index_entries_per_author)
        }
        requested: set[bytes] = set()
        after = 0
        while len(requested) < self.limits.max_index_entries_per_author:
            if result.requests >= self.limits.max_requests_per_session:
                return False
            page = await session.index(author, after, self.limits.max_index_entries)
            result.requests += 1
            missing = [
                release_id
                for _, release_id in page.entries
                if release_id not in stored_ids and release_id not in requested and release_id not in self._rejected_ids
            ]
            requested.update(missing)
            if missing and not await self._get_ids(session, missing, result):
                return False
            if not page.more or not page.entries:
                return True
            after = page.entries[-1][0]  # entries ascend above ``after``, so paging ends
        return True

    async def fetch(self, peer_id: ID, release_ids: Iterable[bytes]) -> PullResult:
        """Ask ``peer_id`` for releases by id and hand each body returned to the node.

        Ids the peer does not hold are skipped. Bodies whose SHA-256 is not
        among the ids asked for are dropped and counted. Raises
        SyncProtocolError (already counted) when the session fails.
        """
        result = PullResult()
        with trio.move_on_after(self.limits.session_timeout_s) as deadline:
            async with self._session(peer_id) as session:
                await self._get_ids(session, list(dict.fromkeys(release_ids)), result)
        if deadline.cancelled_caught:
            self._statistics.count_error(str(peer_id), "outbound:session_timeout")
        return result

    async def _get_ids(self, session: Session, pending: list[bytes], result: PullResult) -> bool:
        """GET ``pending`` ids in chunks and deliver the bodies; return False once the budget is spent."""
        while pending:
            if result.requests >= self.limits.max_requests_per_session:
                return False
            chunk = pending[: self.limits.max_get_ids]
            response = await session.get(chunk)
            result.requests += 1
            received = set()
            for data in response.releases:
                release_id = content_id(data)
                if release_id not in chunk:
                    self._statistics.count_error(session.peer, "outbound:unexpected_release")
                    continue
                received.add(release_id)
                await self._deliver(data, session.peer, result, release_id)

            # "more" means a batch limit cut the response short: ask again for the rest.
            if response.more and received:
                pending = [release_id for release_id in pending if release_id not in received]
            else:
                pending = pending[len(chunk) :]
        return True

    async def _deliver(self, data: bytes, peer: str, result: PullResult, release_id: bytes | None = None) -> None:
        release_id = release_id or content_id(data)
        verdict = await self.accept(data, from_peer=peer)
        result.verdicts[verdict.value] += 1
        if verdict is ReleaseVerdict.REJECTED:
            # The id is the hash of these bytes, so every peer would send the same rejected body.
            self._remember(self._rejected_ids, release_id, None, self.limits.max_remembered_rejections)
        else:
            result.received_ids.add(release_id)

    @staticmethod
    def _remember(table: OrderedDict, key: object, value: object, capacity: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > capacity:
            table.popitem(last=False)

    async def accept(self, data: bytes, *, from_peer: str) -> ReleaseVerdict:
        """Hand a body to the node's callback; a failing callback counts as a rejection."""
        try:
            verdict = self._accept_release(data, from_peer=from_peer)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            verdict = ReleaseVerdict(verdict)
        except Exception:
            logger.exception("accept_release failed on a release from peer %s; counted as rejected", from_peer)
            verdict = ReleaseVerdict.REJECTED
        self._statistics.count_release(verdict.value, from_peer)
        return verdict

    def _session(self, peer_id: ID) -> Session:
        return Session(
            self._host, peer_id, limits=self.limits, statistics=self._statistics, protocols=self.protocols,
            pool=self._pool,
        )

    def forget_peer(self, peer_id: ID) -> None:
        """Drop state kept for a peer whose connection closed: its idle outbound stream."""
        self._pool.forget(peer_id)


async def _send_rejection(stream: INetStream, reason: str) -> None:
    """Send an error frame on a rejected stream, then close it; bounded to one second."""
    with trio.move_on_after(1.0):
        try:
            await write_frame(stream, encode_error_response(reason))
        except Exception:  # the peer may be gone already; the rejection is counted either way
            pass
    await close_quietly(stream)
