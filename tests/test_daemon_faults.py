"""A misbehaving peer against real daemon processes: every fault is counted, no node stops.

Two daemons run as separate processes on 127.0.0.1. The test process runs a
libp2p host of its own with the key of "mallory", who is listed as a member,
and serves the real sync protocol from a crafted release source:

- two different releases of mallory with one sequence (equivocation);
- a release that claims node-2 as author but carries mallory's signature
  (forged signature);
- an old release offered again under a higher announced sequence (replay);
- a release of a key that is not a member, relayed by mallory (non-member).

It also publishes invalid gossip (an oversized announcement and one signed by
a non-member) and writes garbage, truncated and silent streams on the sync
protocol. Afterwards both daemons still run and serve valid requests.
"""

from __future__ import annotations

import msgpack
import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from releasefactory import fixed_key

from p2psynth.client import Client
from p2psynth.encoding import encode_file
from p2psynth.localnet import LocalNetwork, create_local_network
from p2psynth.measurement import measure_mst
from p2psynth.network import ReleaseVerdict, announcement_topic, sign_announcement
from p2psynth.network.host import create_host
from p2psynth.network.stats import NetworkStatistics
from p2psynth.network.sync import SYNC_PROTOCOL_ID, SyncProtocol
from p2psynth.network.wire import FRAME_HEADER
from p2psynth.noise import SecureRandom
from p2psynth.release import Release, encode_release, release_id
from p2psynth.schema import load_schema

from nodeharness import write_adult_parts

pytestmark = pytest.mark.slow

MALLORY = fixed_key(77)
STRANGER = fixed_key(78)
DEADLINE_S = 120.0


def _public(key) -> bytes:
    return key.public_key().public_bytes_raw()


def _signed_release(key, schema, codes, *, sequence: int, seed: int, author: bytes | None = None) -> bytes:
    result = measure_mst(codes, schema.domain, rho=0.5, random=SecureRandom(seed=bytes([seed]) * 32))
    release = Release(schema.fingerprint, _public(key), sequence, 1, 1_700_000_000_000, 0.5, result.measurements)
    data = encode_release(release, key)
    if author is None:
        return data
    # Swap in another author and keep the original signature: a forgery.
    version, body, signature = msgpack.unpackb(data)
    fields = msgpack.unpackb(body)
    fields[1] = author
    forged_body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([version, forged_body, signature], use_bin_type=True)


class CraftedSource:
    """What mallory's host offers over sync; ``offers`` maps author -> (sequence, bodies)."""

    def __init__(self) -> None:
        self.offers: dict[bytes, tuple[int, list[bytes]]] = {}

    def latest_sequences(self) -> dict[bytes, int]:
        return {author: sequence for author, (sequence, _) in self.offers.items()}

    def releases_after(self, author: bytes, sequence: int, *, limit: int) -> list[bytes]:
        return list(self.offers.get(author, (0, []))[1])[:limit]

    def get_release(self, rid: bytes) -> bytes | None:
        for _, bodies in self.offers.values():
            for body in bodies:
                if release_id(body) == rid:
                    return body
        return None


@pytest.fixture(scope="module")
def network(tmp_path_factory, adult_data_path, adult_schema_path):
    root = tmp_path_factory.mktemp("faults")
    paths = write_adult_parts(root, adult_data_path, parts=2, rows_per_part=3000)
    nodes = create_local_network(
        root / "nodes", data_paths=paths, schema_path=adult_schema_path,
        extra_members=[("mallory", _public(MALLORY))], strategy="mst",
    )
    with LocalNetwork(nodes) as net:
        net.start_all()
        net.wait_started(timeout_s=DEADLINE_S)
        with Client.from_node_config(nodes[0].config_path) as client:
            client.publish()
        net.wait_until(lambda: all((n.status() or {}).get("releases", {}).get("stored") == 1 for n in nodes),
                       timeout_s=DEADLINE_S, what="the honest release to spread")
        yield net


async def _wait_for(condition, what: str) -> None:
    with trio.move_on_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.2)
        return
    raise AssertionError(f"timed out waiting for {what}")


def test_misbehaving_member_is_counted(network, adult_schema_path):
    target, other = network.nodes
    schema = load_schema(adult_schema_path)
    # Mallory measures real-looking rows, so only the intended fault is wrong.
    codes = encode_file(target.folder.parent.parent / "part-1.csv", schema).codes

    first = _signed_release(MALLORY, schema, codes, sequence=1, seed=1)
    twin = _signed_release(MALLORY, schema, codes, sequence=1, seed=2)
    forged = _signed_release(MALLORY, schema, codes, sequence=9, seed=3, author=other.public_key)
    foreign = _signed_release(STRANGER, schema, codes, sequence=1, seed=4)

    def rejections() -> dict:
        return ((target.status() or {}).get("rejections") or {}).get("by_reason") or {}

    def network_counters() -> dict:
        return (target.status() or {}).get("network") or {}

    async def main() -> None:
        host = create_host(MALLORY)
        source = CraftedSource()
        protocol = SyncProtocol(
            host, releases=source, accept_release=lambda data, from_peer: ReleaseVerdict.REJECTED,
            statistics=NetworkStatistics(),
        )
        protocol.install()
        router = GossipSub(protocols=[PROTOCOL_ID_V11], degree=2, degree_low=1, degree_high=4,
                           heartbeat_interval=1, adaptive_gossip_enabled=False)
        pubsub = Pubsub(host, router, strict_signing=True)
        status = target.status()
        topic = announcement_topic(status["network_id"], status["schema_fingerprint"])
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.subscribe(topic)
            async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                # Equivocation and forgery, pulled by the target's anti-entropy on connect.
                source.offers = {_public(MALLORY): (1, [first, twin]), other.public_key: (9, [forged])}
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target.address)))
                await _wait_for(lambda: rejections().get("equivocation", 0) >= 1, "equivocation")
                await _wait_for(lambda: rejections().get("bad_signature", 0) >= 1, "forged signature")

                # Replay: a higher announced sequence, but the body is the stored one.
                source.offers = {_public(MALLORY): (2, [first])}
                await _wait_for(lambda: rejections().get("replay", 0) >= 1, "replay")

                # A member relaying a non-member's release, served by id after an announcement.
                source.offers = {_public(STRANGER): (1, [foreign])}
                stranger_announcement = sign_announcement(
                    release_id=release_id(foreign), sequence=1, size_bytes=len(foreign), private_key=STRANGER
                )
                await _wait_for(lambda: topic in pubsub.peer_topics and pubsub.peer_topics[topic], "gossip mesh")
                await pubsub.publish(topic, stranger_announcement)
                await pubsub.publish(topic, b"\x80" * 4000)

                def gossip_rejected(reason: str) -> int:
                    return network_counters().get("gossip", {}).get(f"rejected:{reason}", 0)

                await _wait_for(lambda: gossip_rejected("not_member") >= 1, "non-member announcement")
                await _wait_for(lambda: gossip_rejected("oversized") >= 1, "oversized announcement")

                # Broken frames on the sync protocol, and a stream that never writes.
                peer = host.get_id()
                for payload, close in (
                    (FRAME_HEADER.pack(7) + b"garbage", True),
                    (FRAME_HEADER.pack(100) + b"only ten b", True),
                    (b"", False),
                ):
                    stream = await host.new_stream(info_from_p2p_addr(multiaddr.Multiaddr(target.address)).peer_id,
                                                   [SYNC_PROTOCOL_ID])
                    if payload:
                        await stream.write(payload)
                    if close:
                        await stream.close()

                def inbound(reason: str) -> int:
                    peers = network_counters().get("peers", {})
                    return peers.get(str(peer), {}).get("errors", {}).get(f"inbound:{reason}", 0)

                await _wait_for(lambda: inbound("malformed") >= 1, "garbage frame")
                await _wait_for(lambda: inbound("truncated") >= 1, "truncated frame")
                await _wait_for(lambda: inbound("timeout") >= 1, "silent stream")
                for peer_id in list(host.get_connected_peers()):
                    await host.disconnect(peer_id)

    trio.run(main)

    reasons = rejections()
    assert reasons.get("equivocation", 0) >= 1
    assert reasons.get("bad_signature", 0) >= 1
    assert reasons.get("replay", 0) >= 1
    status = target.status()
    assert "mallory" in status["releases"]["flagged_members"]
    # Both daemons still run and serve requests.
    for node in network.nodes:
        assert node.process.poll() is None
        with Client.from_node_config(node.config_path) as client:
            assert client.status()["running"] is True
    # The model, refitted without the flagged member, still comes from the honest release.
    assert status["model"]["model_id"] is not None
    assert len(status["model"]["releases"]) == 1


def test_nodes_still_converge_after_faults(network):
    with Client.from_node_config(network.nodes[1].config_path) as client:
        client.publish()
    network.wait_until(lambda: network.converged(), timeout_s=DEADLINE_S, what="convergence after the faults")
    assert len(set(network.model_ids())) == 1
