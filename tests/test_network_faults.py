"""Bad input against a running node: broken sync frames and invalid gossip.

A raw libp2p host connects to a NetworkService on 127.0.0.1. It speaks Noise
and Yamux like a node, but without the node's checks, and sends what a
broken peer might: garbage, truncated and oversized frames, a stream that
never writes, and invalid announcements. Each case must be counted under its
reason and leave the service serving valid requests.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import msgpack
import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from releasefactory import fixed_key, make_release
from test_network_hosts import DEADLINE_S, Node, make_config, start_node, wait_for_releases, wait_until

from p2psynth.network import ReleaseVerdict, SyncLimits, sign_announcement
from p2psynth.network.host import create_host
from p2psynth.network.memory import MemoryReleases
from p2psynth.network.service import NetworkService
from p2psynth.network.stats import NetworkStatistics
from p2psynth.network.sync import SYNC_PROTOCOL_ID, SyncProtocol
from p2psynth.network.wire import (
    FRAME_HEADER,
    HaveRequest,
    SyncProtocolError,
    decode_have_response,
    encode_request,
    read_frame,
    write_frame,
)
from p2psynth.release import release_id

READ_TIMEOUT_S = 0.3


@asynccontextmanager
async def raw_peer(target: NetworkService, index: int = 9, *, with_pubsub: bool = False):
    """Yield (host, pubsub or None) connected to ``target``; pubsub has no validator."""
    host = create_host(fixed_key(index))
    pubsub = None
    if with_pubsub:
        router = GossipSub(protocols=[PROTOCOL_ID_V11], degree=2, degree_low=1, degree_high=4, heartbeat_interval=1,
                           adaptive_gossip_enabled=False)
        pubsub = Pubsub(host, router, strict_signing=True)
    async with _maybe_services(pubsub):
        if pubsub is not None:
            await pubsub.subscribe(target.config.topic)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target.addresses()[0])))
            try:
                yield host, pubsub
            finally:
                for peer_id in list(host.get_connected_peers()):
                    await host.disconnect(peer_id)


@asynccontextmanager
async def _maybe_services(pubsub):
    if pubsub is None:
        yield
        return
    async with background_trio_service(pubsub), background_trio_service(pubsub.router):
        yield


def frame(body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body)) + body


def inbound_errors(node: Node, host) -> dict:
    return node.service.statistics()["peers"].get(str(host.get_id()), {}).get("errors", {})


async def have_request_succeeds(host, node: Node) -> dict:
    """Send a valid HAVE on a fresh stream and return the decoded response."""
    stream = await host.new_stream(node.service.host.get_id(), [SYNC_PROTOCOL_ID])
    await write_frame(stream, encode_request(HaveRequest({})))
    with trio.fail_after(DEADLINE_S):
        body = await read_frame(stream, max_bytes=1 << 20)
    await stream.close()
    return decode_have_response(body, max_authors=64)


async def send_raw(host, node: Node, payload: bytes, *, close: bool) -> None:
    stream = await host.new_stream(node.service.host.get_id(), [SYNC_PROTOCOL_ID])
    if payload:
        await stream.write(payload)
    if close:
        await stream.close()


def test_broken_frames_counted_and_service_survives():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1, sync=SyncLimits(read_timeout_s=READ_TIMEOUT_S))
            data, _ = make_release(node.key, sequence=1)
            node.releases.accept(data)

            async with raw_peer(node.service) as (host, _):
                cases = [
                    ("inbound:malformed", frame(b"garbage"), True),
                    ("inbound:truncated", FRAME_HEADER.pack(100) + b"only ten b", True),
                    ("inbound:oversized", FRAME_HEADER.pack(0xFFFFFFFF) + b"x" * 100, False),
                    ("inbound:unknown_type", frame(msgpack.packb({"t": "nope"})), True),
                    ("inbound:timeout", b"", False),
                ]
                for reason, payload, close in cases:
                    await send_raw(host, node, payload, close=close)
                    await wait_until(lambda: inbound_errors(node, host).get(reason) == 1)

                inbound = {key for key in inbound_errors(node, host) if key.startswith("inbound:")}
                assert inbound == {reason for reason, _, _ in cases}
                assert await have_request_succeeds(host, node) == {node.key.public_key().public_bytes_raw(): 1}
            node.service.stop()

    trio.run(main)


def test_half_written_frame_times_out():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1, sync=SyncLimits(read_timeout_s=READ_TIMEOUT_S))
            async with raw_peer(node.service) as (host, _):
                # Half a header, then silence with the stream left open.
                await send_raw(host, node, b"\x00\x00", close=False)
                await wait_until(lambda: inbound_errors(node, host).get("inbound:timeout") == 1)
                assert await have_request_succeeds(host, node) == {}
            node.service.stop()

    trio.run(main)


def test_stream_limit_per_peer_rejects_extra():
    async def main():
        async with trio.open_nursery() as nursery:
            limits = SyncLimits(read_timeout_s=2.0, max_inbound_streams_per_peer=2)
            node = await start_node(nursery, 1, sync=limits)
            async with raw_peer(node.service) as (host, _):
                # Two silent streams hold both slots; the third is rejected as busy.
                for _ in range(3):
                    await send_raw(host, node, b"", close=False)
                await wait_until(lambda: inbound_errors(node, host).get("inbound:busy") == 1)
            node.service.stop()

    trio.run(main)


def test_non_member_stream_rejected():
    """The sync handler alone (without the service, which would disconnect first) rejects non-members."""

    async def main():
        member = fixed_key(1).public_key().public_bytes_raw()
        statistics = NetworkStatistics()
        releases = MemoryReleases()
        host = create_host(fixed_key(1))
        sync = SyncProtocol(
            host,
            releases=releases,
            accept_release=releases.accept,
            statistics=statistics,
            is_member=lambda key: key == member,
        )
        sync.install()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            outsider = create_host(fixed_key(9))
            async with outsider.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                await outsider.connect(info_from_p2p_addr(host.get_addrs()[0]))
                stream = await outsider.new_stream(host.get_id(), [SYNC_PROTOCOL_ID])
                await write_frame(stream, encode_request(HaveRequest({})))
                with trio.fail_after(DEADLINE_S):
                    body = await read_frame(stream, max_bytes=1024)
                with pytest.raises(SyncProtocolError) as caught:
                    decode_have_response(body, max_authors=4)
                assert "not_member" in str(caught.value)
                assert statistics.peer(str(outsider.get_id())).errors["inbound:not_member"] == 1
                await outsider.disconnect(host.get_id())

    trio.run(main)


def test_invalid_announcements_rejected_by_validator():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1)
            topic = node.service.config.topic
            async with raw_peer(node.service, with_pubsub=True) as (host, pubsub):
                await wait_until(lambda: host.get_id() in node.service.gossip.pubsub.peer_topics.get(topic, set()))
                await wait_until(lambda: node.service.host.get_id() in pubsub.peer_topics.get(topic, set()))

                def rejected(reason: str) -> int:
                    return node.service.statistics()["gossip"].get(f"rejected:{reason}", 0)

                await pubsub.publish(topic, b"\xc1 not msgpack")
                await wait_until(lambda: rejected("malformed") == 1)
                await pubsub.publish(topic, b"\x80" * 2000)
                await wait_until(lambda: rejected("oversized") == 1)
                forged = bytearray(sign_announcement(release_id=bytes(32), sequence=1, size_bytes=10, private_key=fixed_key(5)))
                forged[-1] ^= 1
                await pubsub.publish(topic, bytes(forged))
                await wait_until(lambda: rejected("bad_signature") == 1)

                # A valid announcement passes the format checks, but the node forwards it only
                # once it has stored the body. The raw peer serves no sync protocol, so the pull
                # fails, is counted and is queued for retries.
                data, _ = make_release(fixed_key(9), sequence=1)
                valid = sign_announcement(
                    release_id=release_id(data), sequence=1, size_bytes=len(data), private_key=fixed_key(9)
                )
                await pubsub.publish(topic, valid)
                await wait_until(lambda: inbound_errors(node, host).get("outbound:open_failed", 0) >= 1)
                assert node.service.statistics()["gossip"].get("validated", 0) == 0
                assert node.service.statistics()["gossip"].get("received", 0) == 0
                assert await have_request_succeeds(host, node) == {}
            node.service.stop()

    trio.run(main)


def test_failing_callbacks_do_not_stop_service():
    """An is_member that raises and an accept_release that raises are contained and counted."""

    async def main():
        bad_author = fixed_key(3).public_key().public_bytes_raw()

        def is_member(key: bytes) -> bool:
            if key == bad_author:
                raise RuntimeError("membership lookup failed")
            return True

        def accept(data: bytes, *, from_peer: str) -> ReleaseVerdict:
            raise RuntimeError("store is broken")

        releases = MemoryReleases()
        node_service = NetworkService(
            private_key=fixed_key(1),
            config=make_config(),
            releases=releases,
            accept_release=accept,
            is_member=is_member,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(node_service.run)
            other = await start_node(nursery, 2, bootstrap=tuple(node_service.addresses()))
            await wait_until(lambda: node_service.gossip.mesh_peers() and other.service.gossip.mesh_peers())

            # The validator's membership check raises: counted as a rejection.
            relayed, _ = make_release(fixed_key(3), sequence=1)
            other.releases.accept(relayed)
            other.service.announce(
                sign_announcement(
                    release_id=release_id(relayed), sequence=1, size_bytes=len(relayed), private_key=fixed_key(3)
                )
            )
            await wait_until(lambda: node_service.statistics()["gossip"].get("rejected:validator_error") == 1)

            # accept_release raises: the body counts as rejected.
            other.publish(seed=4)
            await wait_until(lambda: node_service.statistics()["total"]["releases"].get("rejected", 0) >= 1)

            # Both services still exchange releases the other way.
            more, _ = make_release(fixed_key(1), sequence=1)
            releases.accept(more)
            node_service.announce_release(release_id=release_id(more), sequence=1, size_bytes=len(more))
            await wait_for_releases(other, [more])
            node_service.stop()
            other.service.stop()

    trio.run(main)
