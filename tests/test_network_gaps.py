"""Gap repair in anti-entropy (sync protocol 1.1): releases missing inside an author's history.

Real NetworkService hosts on 127.0.0.1 with in-memory releases, and for the
lying-peer cases a raw libp2p host that responds to the 1.1 requests with
crafted messages. Each sync round is started by hand with
``sync.pull_missing`` after the releases are in place, so that each check
covers exactly one round. The periodic rounds are set to 60 s.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from releasefactory import fixed_key, make_release
from test_network_faults import raw_peer
from test_network_hosts import DEADLINE_S, make_config, start_node, stop_all, wait_until

from p2psynth.network import ReleaseVerdict, SyncLimits
from p2psynth.network.memory import MemoryReleases, describe_release
from p2psynth.network.service import NetworkService
from p2psynth.network.sync import SYNC_PROTOCOL_ID, SYNC_PROTOCOL_ID_V1_1
from p2psynth.network.wire import (
    AuthorSummary,
    GetRequest,
    IndexRequest,
    SummaryRequest,
    SyncProtocolError,
    decode_index_response,
    decode_request,
    decode_summary_response,
    encode_index_response,
    encode_releases_response,
    encode_summary_response,
    index_digest,
    read_frame,
    write_frame,
)
from p2psynth.release import decode_release, release_id
from p2psynth.store import Store

AUTHOR_KEY = fixed_key(21)
AUTHOR = AUTHOR_KEY.public_key().public_bytes_raw()
HISTORY = [make_release(AUTHOR_KEY, sequence=sequence, seed=sequence)[0] for sequence in range(1, 7)]


async def connected_pair(nursery, **overrides):
    """Start a holder and a lagging node connected to it, and wait until the connect-time syncs are over."""
    holder = await start_node(nursery, 1, **overrides)
    lagging = await start_node(nursery, 2, bootstrap=tuple(holder.service.addresses()), **overrides)
    await wait_until(lambda: lagging.service.peers() and holder.service.peers())
    await wait_until(lambda: not lagging.service._syncing and not holder.service._syncing)
    return holder, lagging


def holder_peer_id(holder):
    return holder.service.host.get_id()


# Wire ------------------------------------------------------------------------------


def test_summary_response_round_trip():
    summaries = {AUTHOR: AuthorSummary(latest=6, count=4, digest=b"\x01" * 16), b"\x02" * 32: AuthorSummary(3, 0, b"\x00" * 16)}
    assert decode_summary_response(encode_summary_response(summaries), max_authors=4) == summaries


def test_summary_response_rejects_short_digest():
    body = encode_summary_response({AUTHOR: AuthorSummary(latest=1, count=1, digest=b"\x01" * 8)})
    with pytest.raises(SyncProtocolError) as caught:
        decode_summary_response(body, max_authors=4)
    assert caught.value.reason == "bad_response"


def test_index_response_round_trip():
    entries = [(2, b"\x05" * 32), (2, b"\x06" * 32), (5, b"\x01" * 32)]
    decoded = decode_index_response(encode_index_response(entries, more=True), after=1, max_entries=3)
    assert decoded.entries == tuple(entries)
    assert decoded.more is True


@pytest.mark.parametrize(
    "entries, after, max_entries, reason",
    [
        ([(3, b"\x01" * 32), (2, b"\x01" * 32)], 0, 8, "bad_response"),  # descending
        ([(2, b"\x01" * 32), (2, b"\x01" * 32)], 0, 8, "bad_response"),  # repeated
        ([(4, b"\x01" * 32)], 4, 8, "bad_response"),  # not above ``after``, so paging would not advance
        ([(s, b"\x01" * 32) for s in range(1, 10)], 0, 8, "malformed"),  # more entries than asked for
    ],
)
def test_index_response_rejects_disorder(entries, after, max_entries, reason):
    with pytest.raises(SyncProtocolError) as caught:
        decode_index_response(encode_index_response(entries, more=False), after=after, max_entries=max_entries)
    assert caught.value.reason == reason


def test_index_digest_depends_on_every_entry():
    entries = [(1, b"\x01" * 32), (2, b"\x02" * 32)]
    assert index_digest(entries) == index_digest(list(entries))
    assert index_digest(entries) != index_digest(entries[:1])
    assert index_digest(entries) != index_digest([(1, b"\x01" * 32), (3, b"\x02" * 32)])
    assert len(index_digest([])) == 16


def test_memory_release_index_lists_ascending():
    releases = MemoryReleases()
    for data in (HISTORY[3], HISTORY[0], HISTORY[5]):
        assert releases.accept(data) is ReleaseVerdict.ACCEPTED
    assert releases.release_index(AUTHOR, after=0, limit=10) == [
        (1, release_id(HISTORY[0])), (4, release_id(HISTORY[3])), (6, release_id(HISTORY[5]))
    ]
    assert releases.release_index(AUTHOR, after=1, limit=1) == [(4, release_id(HISTORY[3]))]
    assert releases.release_index(b"\x09" * 32, after=0, limit=10) == []


# Hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize("held", [[1, 2, 4, 6], [6], [1, 2, 3, 4, 5]])
def test_one_round_fills_middle_gaps(held):
    async def main():
        async with trio.open_nursery() as nursery:
            holder, lagging = await connected_pair(nursery)
            for data in HISTORY:
                holder.releases.accept(data)
            for sequence in held:
                lagging.releases.accept(HISTORY[sequence - 1])

            result = await lagging.service.sync.pull_missing(holder_peer_id(holder))

            assert result.accepted == 6 - len(held)
            assert all(release_id(data) in lagging.releases for data in HISTORY)
            assert lagging.releases.release_index(AUTHOR, after=0, limit=10) == holder.releases.release_index(
                AUTHOR, after=0, limit=10
            )
            assert lagging.service.statistics()["total"]["errors"] == {}

            # A second round finds equal digests and sends the SUMMARY only.
            again = await lagging.service.sync.pull_missing(holder_peer_id(holder))
            assert again.requests == 1
            assert again.accepted == 0
            stop_all(holder, lagging)

    trio.run(main)


def test_rejected_release_not_pulled_again():
    rejected_id = release_id(HISTORY[2])

    def describe_rejecting(data: bytes) -> tuple[bytes, int]:
        if release_id(data) == rejected_id:
            raise ValueError("rejected by this test's validator")
        return describe_release(data)

    async def main():
        async with trio.open_nursery() as nursery:
            holder = await start_node(nursery, 1)
            releases = MemoryReleases(describe=describe_rejecting)
            lagging_service = NetworkService(
                private_key=fixed_key(2),
                config=make_config(bootstrap_addrs=tuple(holder.service.addresses())),
                releases=releases,
                accept_release=releases.accept,
            )
            await nursery.start(lagging_service.run)
            await wait_until(lambda: lagging_service.peers() and not lagging_service._syncing)
            for data in HISTORY:
                holder.releases.accept(data)
            for data in (HISTORY[0], HISTORY[5]):
                releases.accept(data)

            first = await lagging_service.sync.pull_missing(holder_peer_id(holder))
            assert first.accepted == 3
            assert first.verdicts["rejected"] == 1
            assert rejected_id not in releases

            # The digests still differ because of the rejected release, yet nothing is asked for again.
            second = await lagging_service.sync.pull_missing(holder_peer_id(holder))
            assert second.requests == 1
            assert second.verdicts["rejected"] == 0
            assert lagging_service.statistics()["total"]["releases"] == {"accepted": 3, "rejected": 1}

            # Even with the comparison forgotten, the rejected id is listed but not fetched.
            lagging_service.sync._settled.clear()
            third = await lagging_service.sync.pull_missing(holder_peer_id(holder))
            assert third.requests == 2  # SUMMARY and one INDEX page, no GET
            assert third.verdicts["rejected"] == 0
            stop_all(holder)
            lagging_service.stop()

    trio.run(main)


def test_peer_speaking_1_0_still_syncs_latest():
    """A node whose source has no release_index speaks 1.0; a 1.1 node pulls new releases from it."""

    class LatestOnly:
        def __init__(self, inner: MemoryReleases) -> None:
            self.latest_sequences = inner.latest_sequences
            self.releases_after = inner.releases_after
            self.get_release = inner.get_release

    async def main():
        async with trio.open_nursery() as nursery:
            inner = MemoryReleases()
            old = NetworkService(
                private_key=fixed_key(1),
                config=make_config(),
                releases=LatestOnly(inner),
                accept_release=inner.accept,
            )
            await nursery.start(old.run)
            assert old.sync.protocols == (SYNC_PROTOCOL_ID,)
            new = await start_node(nursery, 2, bootstrap=tuple(old.addresses()))
            await wait_until(lambda: new.service.peers() and not new.service._syncing)
            for data in HISTORY:
                inner.accept(data)
            new.releases.accept(HISTORY[5])

            result = await new.service.sync.pull_missing(old.host.get_id())
            # Protocol 1.0 pulls only sequences above the latest one, so the gap stays.
            assert result.accepted == 0
            assert new.service.statistics()["total"]["errors"] == {}
            more = make_release(AUTHOR_KEY, sequence=7, seed=7)[0]
            inner.accept(more)
            result = await new.service.sync.pull_missing(old.host.get_id())
            assert result.accepted == 1
            assert release_id(more) in new.releases
            old.stop()
            new.service.stop()

    trio.run(main)


# Lying peers -----------------------------------------------------------------------


class LyingResponder:
    """Serves protocol 1.1 from a raw host: a summary that never matches and an endless index.

    ``stall`` makes the second index page repeat the first, which a correct
    node must reject instead of paging forever.
    """

    def __init__(self, *, page_entries: int, stall: bool = False) -> None:
        self.page_entries = page_entries
        self.stall = stall
        self.requests = 0
        self.get_ids = 0

    async def handle(self, stream) -> None:
        try:
            while True:
                with trio.fail_after(DEADLINE_S):
                    body = await read_frame(stream, max_bytes=1 << 20)
                self.requests += 1
                request = decode_request(body, max_ids=1024, max_authors=1024)
                await write_frame(stream, self.respond(request))
        except Exception:  # the node ended the session, or respond() met a request it does not expect
            await stream.reset()

    def respond(self, request) -> bytes:
        if isinstance(request, SummaryRequest):
            return encode_summary_response({AUTHOR: AuthorSummary(latest=0, count=10**9, digest=b"\xee" * 16)})
        if isinstance(request, IndexRequest):
            start = 1 if self.stall else request.after + 1
            entries = [(start + i, fake_id(start + i)) for i in range(min(self.page_entries, request.limit))]
            return encode_index_response(entries, more=True)
        if isinstance(request, GetRequest):
            self.get_ids += len(request.release_ids)
            return encode_releases_response([], more=False)
        raise AssertionError(f"unexpected request {request!r}")


def fake_id(sequence: int) -> bytes:
    return hashlib.sha256(sequence.to_bytes(8, "big")).digest()


def test_endless_index_is_bounded():
    limits = SyncLimits(max_index_entries=8, max_index_entries_per_author=40, max_requests_per_session=64)

    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1, sync=limits)
            liar = LyingResponder(page_entries=8)
            async with raw_peer(node.service, 9) as (host, _):
                host.set_stream_handler(SYNC_PROTOCOL_ID_V1_1, liar.handle)
                with trio.fail_after(DEADLINE_S):
                    result = await node.service.sync.pull_missing(host.get_id())

                # Paging stops once 40 ids were asked for: 5 pages and 5 GETs after the SUMMARY.
                assert result.requests == 11
                assert liar.get_ids == 40
                assert result.accepted == 0

                # The comparison is remembered: the next round sends the SUMMARY only.
                with trio.fail_after(DEADLINE_S):
                    again = await node.service.sync.pull_missing(host.get_id())
                assert again.requests == 1
            node.service.stop()

    trio.run(main)


def test_index_that_does_not_advance_rejected():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1, sync=SyncLimits(max_index_entries=4))
            liar = LyingResponder(page_entries=4, stall=True)
            async with raw_peer(node.service, 9) as (host, _):
                host.set_stream_handler(SYNC_PROTOCOL_ID_V1_1, liar.handle)
                with trio.fail_after(DEADLINE_S), pytest.raises(SyncProtocolError) as caught:
                    await node.service.sync.pull_missing(host.get_id())
                assert caught.value.reason == "bad_response"
                errors = node.service.statistics()["peers"][str(host.get_id())]["errors"]
                assert errors.get("outbound:bad_response") == 1
                # SUMMARY, page one, its GET, page two (rejected).
                assert liar.requests == 4
            node.service.stop()

    trio.run(main)


def test_store_release_index_matches_memory(tmp_path):
    store = Store.create(tmp_path / "node.sqlite", node_public_key=fixed_key(1).public_key().public_bytes_raw())
    memory = MemoryReleases()
    for data in (HISTORY[4], HISTORY[1], HISTORY[2]):
        store.add_release(data, decode_release(data))
        memory.accept(data)
    for after, limit in ((0, 10), (2, 10), (0, 2)):
        assert store.release_index(AUTHOR, after=after, limit=limit) == memory.release_index(AUTHOR, after=after, limit=limit)
    assert store.release_index(AUTHOR, after=0, limit=10)[0] == (2, release_id(HISTORY[1]))
    store.close()


def test_store_backed_node_fills_gap(tmp_path):
    """A node whose releases live in SQLite repairs a gap through Store.release_index."""
    key = fixed_key(2)
    store = Store.create(tmp_path / "node.sqlite", node_public_key=key.public_key().public_bytes_raw())

    def accept(data: bytes, *, from_peer: str) -> ReleaseVerdict:
        new = store.add_release(data, decode_release(data), own=False, source_peer=from_peer)
        return ReleaseVerdict.ACCEPTED if new else ReleaseVerdict.DUPLICATE

    async def main():
        async with trio.open_nursery() as nursery:
            holder = await start_node(nursery, 1)
            lagging = NetworkService(
                private_key=key,
                config=make_config(bootstrap_addrs=tuple(holder.service.addresses())),
                releases=store,
                accept_release=accept,
            )
            await nursery.start(lagging.run)
            assert lagging.sync.protocols == (SYNC_PROTOCOL_ID_V1_1, SYNC_PROTOCOL_ID)
            await wait_until(lambda: lagging.peers() and not lagging._syncing)
            for data in HISTORY:
                holder.releases.accept(data)
            for data in (HISTORY[0], HISTORY[3], HISTORY[5]):
                accept(data, from_peer="local")

            result = await lagging.sync.pull_missing(holder_peer_id(holder))
            assert result.accepted == 3
            assert [sequence for sequence, _ in store.release_index(AUTHOR, after=0, limit=10)] == [1, 2, 3, 4, 5, 6]
            holder.service.stop()
            lagging.stop()

    trio.run(main)
    store.close()
