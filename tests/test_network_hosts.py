"""Real libp2p hosts in one process on 127.0.0.1: gossip, pulls, anti-entropy, security.

Rules for these tests: every socket listens on 127.0.0.1 with an OS-chosen
port. Every wait is on a condition under a trio.fail_after deadline. Every
service is stopped before the test returns. Releases are real signed
releases from tests/releasefactory.py.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import multiaddr
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from releasefactory import FINGERPRINT, fixed_key, make_release

from p2psynth.errors import NetworkError
from p2psynth.network import NetworkConfig, NetworkService, ReleaseVerdict, SyncLimits
from p2psynth.network.host import libp2p_key_pair, muxer_options
from p2psynth.network.memory import MemoryReleases
from p2psynth.release import decode_release, release_id
from p2psynth.store import Store

NETWORK_ID = "test-net"
DEADLINE_S = 20


@dataclass
class Node:
    """A running NetworkService with its in-memory releases and key."""

    service: NetworkService
    releases: MemoryReleases
    key: Ed25519PrivateKey
    published: list[bytes] = field(default_factory=list)

    def publish(self, *, seed: int = 0) -> bytes:
        """Store a new own release and announce it; return its bytes."""
        data, release = make_release(self.key, sequence=len(self.published) + 1, seed=seed)
        assert self.releases.accept(data) is ReleaseVerdict.ACCEPTED
        self.service.announce_release(release_id=release_id(data), sequence=release.sequence, size_bytes=len(data))
        self.published.append(data)
        return data


def make_config(**overrides) -> NetworkConfig:
    """Return a test configuration: fast dial retries, and anti-entropy rounds only every 60 s unless overridden."""
    settings = dict(
        network_id=NETWORK_ID,
        schema_fingerprint=FINGERPRINT,
        seed=7,
        anti_entropy_min_interval_s=60.0,
        anti_entropy_max_interval_s=60.0,
        dial_initial_delay_s=0.05,
        dial_attempts=3,
        shutdown_timeout_s=3.0,
    )
    settings.update(overrides)
    return NetworkConfig(**settings)


async def start_node(nursery: trio.Nursery, index: int, *, bootstrap: tuple[str, ...] = (), **overrides) -> Node:
    key = fixed_key(index)
    releases = MemoryReleases()
    service = NetworkService(
        private_key=key,
        config=make_config(bootstrap_addrs=bootstrap, **overrides),
        releases=releases,
        accept_release=releases.accept,
    )
    await nursery.start(service.run)
    return Node(service, releases, key)


async def wait_until(condition, *, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail the test after ``deadline_s``."""
    with trio.fail_after(deadline_s):
        while not condition():
            await trio.sleep(0.01)


async def wait_for_releases(node: Node, datas: list[bytes]) -> None:
    ids = [release_id(data) for data in datas]
    with trio.fail_after(DEADLINE_S):
        await node.releases.wait_for(lambda releases: all(i in releases for i in ids))


def stop_all(*nodes: Node) -> None:
    for node in nodes:
        node.service.stop()


def gossip_count(node: Node, event: str) -> int:
    return node.service.statistics()["gossip"].get(event, 0)


def peer_statistics(node: Node, other: Node) -> dict:
    return node.service.statistics()["peers"].get(other.service.peer_id, {})


def test_two_hosts_announce_and_pull():
    async def main():
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, 1)
            b = await start_node(nursery, 2, bootstrap=tuple(a.service.addresses()))
            await wait_until(lambda: a.service.gossip.mesh_peers() and b.service.gossip.mesh_peers())

            first = a.publish(seed=1)
            await wait_for_releases(b, [first])
            second = b.publish(seed=2)
            await wait_for_releases(a, [second])

            # The pull counts itself after the body is stored, so wait for the count.
            await wait_until(lambda: gossip_count(a, "pulled") == 1 and gossip_count(b, "pulled") == 1)
            assert peer_statistics(b, a)["releases"] == {"accepted": 1}
            assert peer_statistics(a, b)["bytes_sent"] >= len(first)
            assert peer_statistics(b, a)["bytes_sent"] >= len(second)
            assert a.service.statistics()["total"]["errors"] == {}
            assert b.service.statistics()["total"]["errors"] == {}
            stop_all(a, b)

    trio.run(main)


def test_gossip_bytes_counted_per_peer():
    async def main():
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, 1)
            b = await start_node(nursery, 2, bootstrap=tuple(a.service.addresses()))
            await wait_until(lambda: a.service.gossip.mesh_peers() and b.service.gossip.mesh_peers())
            sent_before = peer_statistics(a, b)["gossip_bytes_sent"]
            received_before = peer_statistics(b, a)["gossip_bytes_received"]

            data = a.publish(seed=1)
            await wait_for_releases(b, [data])
            await wait_until(lambda: gossip_count(b, "received") == 1)

            # The announcement is about 180 bytes; the RPC around it adds libp2p's signature and ids.
            announcement_bytes = 176
            assert peer_statistics(a, b)["gossip_bytes_sent"] - sent_before >= announcement_bytes
            assert peer_statistics(b, a)["gossip_bytes_received"] - received_before >= announcement_bytes
            for node in (a, b):
                total = node.service.statistics()["total"]
                assert total["gossip_bytes_sent"] > 0
                assert total["gossip_bytes_received"] > 0
            # The body went over sync, counted apart from gossip.
            assert peer_statistics(a, b)["bytes_sent"] >= len(data)
            stop_all(a, b)

    trio.run(main)


def test_full_mesh_validates_each_message_once():
    """Copies that arrive while the first one waits for its body are dropped, not validated and forwarded again.

    Host i takes 0.1 * i s to store a body, so the faster hosts forward the
    announcement to slower ones while those are still validating their copy.
    """

    async def main():
        async with trio.open_nursery() as nursery:
            nodes = []
            for index in (1, 2, 3, 4, 5):
                releases = MemoryReleases()

                async def slow_accept(data: bytes, *, from_peer: str, releases=releases, delay_s=0.1 * index):
                    await trio.sleep(delay_s)
                    return releases.accept(data, from_peer=from_peer)

                bootstrap = tuple(address for node in nodes for address in node.service.addresses())
                service = NetworkService(
                    private_key=fixed_key(index),
                    config=make_config(bootstrap_addrs=bootstrap),
                    releases=releases,
                    accept_release=slow_accept,
                )
                await nursery.start(service.run)
                nodes.append(Node(service, releases, fixed_key(index)))
            await wait_until(lambda: all(len(n.service.gossip.mesh_peers()) == 4 for n in nodes))

            data = nodes[0].publish(seed=1)
            for node in nodes[1:]:
                await wait_for_releases(node, [data])
            await wait_until(lambda: all(gossip_count(node, "received") >= 1 for node in nodes[1:]))
            await trio.sleep(0.2)  # room for late copies, which must be dropped
            for node in nodes[1:]:
                assert gossip_count(node, "validated") == 1
                assert gossip_count(node, "received") == 1
            assert sum(gossip_count(node, "duplicate_in_validation") for node in nodes) >= 1
            stop_all(*nodes)

    trio.run(main)


def test_four_hosts_in_a_line_relay_and_pull():
    async def main():
        async with trio.open_nursery() as nursery:
            nodes = [await start_node(nursery, 1)]
            for index in (2, 3, 4):
                nodes.append(await start_node(nursery, index, bootstrap=tuple(nodes[-1].service.addresses())))
            await wait_until(
                lambda: all(len(n.service.gossip.mesh_peers()) == (1 if i in (0, 3) else 2) for i, n in enumerate(nodes))
            )

            first, last = nodes[0], nodes[3]
            from_first = first.publish(seed=1)
            from_last = last.publish(seed=2)
            for node in nodes:
                await wait_for_releases(node, [from_first, from_last])

            # The ends are not connected, so the far end pulled from a relay.
            assert last.service.peer_id not in {p.peer_id for p in first.service.peers()}
            await wait_until(lambda: gossip_count(last, "pulled") == 1)
            assert peer_statistics(last, nodes[2])["releases"]["accepted"] == 1
            for node in nodes:
                assert len(node.releases) == 2
            stop_all(*nodes)

    trio.run(main)


def test_late_joiner_catches_up_from_store(tmp_path):
    """A node joining after the releases were published pulls them all, in batches, with no new publish."""
    authors = [fixed_key(index) for index in (11, 12, 13)]
    datas = [make_release(key, sequence=s, seed=s)[0] for key in authors for s in range(1, 7)]

    async def main():
        key = fixed_key(1)
        store = Store.create(tmp_path / "node.sqlite", node_public_key=key.public_key().public_bytes_raw())

        def accept(data: bytes, *, from_peer: str) -> ReleaseVerdict:
            release = decode_release(data)
            new = store.add_release(data, release, own=False, source_peer=from_peer)
            return ReleaseVerdict.ACCEPTED if new else ReleaseVerdict.DUPLICATE

        for data in datas:
            assert accept(data, from_peer="local") is ReleaseVerdict.ACCEPTED
        limits = SyncLimits(max_batch_releases=4)
        holder = NetworkService(
            private_key=key,
            config=make_config(sync=limits),
            releases=store,
            accept_release=accept,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(holder.run)
            joiner = await start_node(nursery, 2, bootstrap=tuple(holder.addresses()), sync=limits)
            await wait_for_releases(joiner, datas)

            statistics = joiner.service.statistics()
            assert statistics["gossip"].get("received", 0) == 0
            # One HAVE, then two batches of at most 4 for each author's 6 releases.
            assert statistics["peers"][holder.peer_id]["frames_sent"] >= 7
            assert statistics["peers"][holder.peer_id]["releases"] == {"accepted": 18}
            assert joiner.releases.latest_sequences() == store.latest_sequences()
            holder.stop()
            joiner.service.stop()
        store.close()

    trio.run(main)


def test_periodic_anti_entropy_repairs_without_gossip():
    async def main():
        async with trio.open_nursery() as nursery:
            fast = dict(anti_entropy_min_interval_s=0.2, anti_entropy_max_interval_s=0.4)
            a = await start_node(nursery, 1, **fast)
            b = await start_node(nursery, 2, bootstrap=tuple(a.service.addresses()), **fast)
            await wait_until(lambda: b.service.peers())

            # Stored but never announced: only anti-entropy can move it.
            data, _ = make_release(a.key, sequence=1, seed=5)
            assert a.releases.accept(data) is ReleaseVerdict.ACCEPTED
            await wait_for_releases(b, [data])
            assert b.service.statistics()["gossip"].get("received", 0) == 0
            stop_all(a, b)

    trio.run(main)


def test_stop_closes_within_deadline():
    async def main():
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                a = await start_node(nursery, 1)
                b = await start_node(nursery, 2, bootstrap=tuple(a.service.addresses()))
                await wait_until(lambda: a.service.peers())
                stop_all(a, b)
        # Both run() calls returned, so the nursery closed; a second run raises.
        with pytest.raises(NetworkError):
            await a.service.run()

    trio.run(main)
    gc.collect()  # an unclosed socket would raise ResourceWarning here


def test_cancelled_services_close_sockets():
    """Cancelling the nursery instead of calling stop() still closes every connection."""

    async def main():
        with trio.move_on_after(DEADLINE_S) as outer:
            async with trio.open_nursery() as nursery:
                a = await start_node(nursery, 1)
                b = await start_node(nursery, 2, bootstrap=tuple(a.service.addresses()))
                await wait_until(lambda: a.service.peers() and b.service.peers())
                nursery.cancel_scope.cancel()
        assert not outer.cancelled_caught
        assert a.service.host.get_connected_peers() == []
        assert b.service.host.get_connected_peers() == []

    trio.run(main)
    # An unclosed socket would raise ResourceWarning here, which the test run turns into an error.
    gc.collect()


def test_announce_requires_stored_release():
    releases = MemoryReleases()
    service = NetworkService(
        private_key=fixed_key(1), config=make_config(), releases=releases, accept_release=releases.accept
    )
    data, release = make_release(fixed_key(1), sequence=1)
    with pytest.raises(NetworkError) as caught:
        service.announce_release(release_id=release_id(data), sequence=1, size_bytes=len(data))
    assert "store it before announcing" in str(caught.value)

    releases.accept(data)
    announcement = service.announce_release(release_id=release_id(data), sequence=1, size_bytes=len(data))
    assert service.statistics()["gossip"]["queued"] == 1
    assert len(announcement) < 256


def test_non_member_peer_disconnected():
    async def main():
        members = {fixed_key(index).public_key().public_bytes_raw() for index in (1, 2)}
        async with trio.open_nursery() as nursery:
            releases = MemoryReleases()
            guarded = NetworkService(
                private_key=fixed_key(1),
                config=make_config(),
                releases=releases,
                accept_release=releases.accept,
                is_member=members.__contains__,
            )
            await nursery.start(guarded.run)
            outsider = await start_node(nursery, 3, bootstrap=tuple(guarded.addresses()))

            await wait_until(
                lambda: guarded.statistics()["total"]["errors"].get("not_member_connection", 0) >= 1
            )
            await wait_until(lambda: outsider.service.peer_id not in {p.peer_id for p in guarded.peers()})
            guarded.stop()
            outsider.service.stop()

    trio.run(main)


# Security ----------------------------------------------------------------------------


def test_host_offers_only_noise_and_yamux():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1)
            network = node.service.host.get_network()
            assert list(network.upgrader.security_multistream.transports) == ["/noise"]
            assert list(network.upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]
            node.service.stop()

    trio.run(main)


def make_plaintext_host(index: int):
    key_pair = libp2p_key_pair(fixed_key(index))
    return new_host(
        key_pair=key_pair,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        muxer_opt=muxer_options(),
        enable_mDNS=False,
    )


def test_plaintext_only_peer_cannot_connect():
    async def main():
        plaintext = make_plaintext_host(9)
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, 1, dial_attempts=2)
            async with plaintext.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                # The plaintext peer dials us.
                with trio.fail_after(DEADLINE_S):
                    with pytest.raises(Exception) as caught:
                        await plaintext.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.service.addresses()[0])))
                assert not isinstance(caught.value, AssertionError)
                assert node.service.peers() == []

                # We dial the plaintext peer.
                address = f"{plaintext.get_addrs()[0]}"
                with trio.fail_after(DEADLINE_S):
                    with pytest.raises(NetworkError):
                        await node.service.connect(address)
                assert node.service.peers() == []
                assert plaintext.get_connected_peers() == []

            # The node still works with a Noise peer afterwards.
            other = await start_node(nursery, 2, bootstrap=tuple(node.service.addresses()))
            await wait_until(lambda: node.service.gossip.mesh_peers())
            data = node.publish(seed=3)
            await wait_for_releases(other, [data])
            stop_all(node, other)

    trio.run(main)
