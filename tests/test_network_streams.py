"""Stream reuse and buffering: one idle sync stream per peer, and chunked pubsub reads.

Real NetworkService hosts on 127.0.0.1 with in-memory releases. The pool is
read through ``NetworkService.sync`` to check which stream a session used.
"""

from __future__ import annotations

import trio
from releasefactory import fixed_key, make_release
from test_network_hosts import start_node, stop_all, wait_until

from p2psynth.network import SyncLimits
from p2psynth.network.gossip import _BufferedInboundStream
from p2psynth.network.stats import NetworkStatistics
from p2psynth.release import release_id

AUTHOR_KEY = fixed_key(31)
RELEASES = [make_release(AUTHOR_KEY, sequence=sequence, seed=sequence)[0] for sequence in range(1, 6)]


async def started_pair(nursery, *, holder_limits: SyncLimits = SyncLimits(), puller_limits: SyncLimits = SyncLimits()):
    holder = await start_node(nursery, 1, sync=holder_limits)
    puller = await start_node(nursery, 2, bootstrap=tuple(holder.service.addresses()), sync=puller_limits)
    await wait_until(lambda: puller.service.peers() and not puller.service._syncing and not holder.service._syncing)
    for data in RELEASES:
        holder.releases.accept(data)
    return holder, puller


def pooled(node, other):
    return node.service.sync._pool._idle.get(other.service.host.get_id())


def errors(node) -> dict:
    return node.service.statistics()["total"]["errors"]


def test_second_fetch_reuses_stream():
    async def main():
        async with trio.open_nursery() as nursery:
            holder, puller = await started_pair(nursery)
            await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(RELEASES[0])])
            first = pooled(puller, holder)
            assert first is not None

            result = await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(RELEASES[1])])
            assert result.accepted == 1
            assert pooled(puller, holder) is first
            assert first.requests >= 2
            assert errors(puller) == {}
            assert errors(holder) == {}
            stop_all(holder, puller)

    trio.run(main)


def test_stream_closed_by_idle_responder_replaced():
    """The holder ends idle streams after 0.3 s; the puller's next fetch retries on a new stream, error-free."""

    async def main():
        async with trio.open_nursery() as nursery:
            holder, puller = await started_pair(nursery, holder_limits=SyncLimits(read_timeout_s=0.3))
            await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(RELEASES[0])])
            first = pooled(puller, holder)
            assert first is not None
            await trio.sleep(0.6)

            result = await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(RELEASES[1])])
            assert result.accepted == 1
            assert pooled(puller, holder) is not first
            assert errors(puller) == {}
            assert errors(holder) == {}
            stop_all(holder, puller)

    trio.run(main)


def test_stream_replaced_at_request_cap():
    limits = SyncLimits(max_requests_per_session=2)

    async def main():
        async with trio.open_nursery() as nursery:
            holder, puller = await started_pair(nursery, holder_limits=limits, puller_limits=limits)
            # The connect-time sync used one request of a stream, the first fetch the second one.
            for data in RELEASES[:2]:
                result = await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(data)])
                assert result.accepted == 1
                stream = pooled(puller, holder)
                assert stream is None or stream.requests <= 2

            # The second fetch left a new stream with one request: the session's SUMMARY is its second
            # request, and the GET_AFTER that follows moves to a new stream.
            assert pooled(puller, holder).requests == 1
            result = await puller.service.sync.pull_missing(holder.service.host.get_id())
            assert result.requests == 2
            assert result.accepted == 3
            assert pooled(puller, holder).requests == 1
            assert all(release_id(data) in puller.releases for data in RELEASES)
            assert errors(puller) == {}
            assert errors(holder) == {}
            stop_all(holder, puller)

    trio.run(main)


def test_pooled_stream_forgotten_on_disconnect():
    async def main():
        async with trio.open_nursery() as nursery:
            holder, puller = await started_pair(nursery)
            await puller.service.sync.fetch(holder.service.host.get_id(), [release_id(RELEASES[0])])
            assert pooled(puller, holder) is not None
            await puller.service.host.disconnect(holder.service.host.get_id())
            await wait_until(lambda: pooled(puller, holder) is None)
            stop_all(holder, puller)

    trio.run(main)


class ChunkStream:
    """A stream of fixed chunks, as a muxer hands them out; records each read size requested."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.requested: list[int | None] = []
        self.protocol = "/meshsub/1.1.0"

    async def read(self, n: int | None = None) -> bytes:
        self.requested.append(n)
        return self._chunks.pop(0) if self._chunks else b""


def test_buffered_inbound_stream_reads_chunks():
    async def main():
        statistics = NetworkStatistics()
        inner = ChunkStream([b"\x05hello\x03abc", b"\x02xy"])
        stream = _BufferedInboundStream(inner, "peer-a", statistics)

        # A varint read byte by byte, then the body: one read of the inner stream.
        assert await stream.read(1) == b"\x05"
        assert await stream.read(5) == b"hello"
        assert await stream.read(1) == b"\x03"
        assert await stream.read(10) == b"abc"
        assert len(inner.requested) == 1
        assert inner.requested[0] >= 64 * 1024

        assert await stream.read(None) == b"\x02xy"
        assert await stream.read(0) == b""
        assert len(inner.requested) == 2
        assert statistics.total.gossip_bytes_received == 13
        assert statistics.peers["peer-a"].gossip_bytes_received == 13
        # Everything else reaches the inner stream.
        assert stream.protocol == "/meshsub/1.1.0"

    trio.run(main)
