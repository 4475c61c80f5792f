"""Gossip of release announcements over py-libp2p's Gossipsub.

Each network has one topic, named from the network id and the schema
fingerprint, so nodes of another network or another schema never mesh with
ours. Only announcements (``announcement``) travel here, never bodies.

Settings and why, for py-libp2p 0.8.1:

- ``strict_signing``: libp2p signs every message with the publishing peer's
  key and checks the signature before delivery. This is on top of the
  author's signature inside the announcement, which survives relaying.
- A 1 s heartbeat (the library default is 120 s, which delays mesh repair by
  minutes) and ``adaptive_gossip_enabled=False``: the adaptive mode stretched
  a 1 s heartbeat to 30 s in a sparse 5-node network.
- The router drops more than ``max_messages_per_s_per_peer`` (library default
  10) messages per second from one forwarder and topic, and each peer's
  outbound queue has room for 32 RPCs. Own announcements are therefore
  queued and published at most one per ``publish_interval_s``. Anything
  still lost is recovered by the sync protocol's anti-entropy.
- Store and forward: the topic validator is asynchronous and accepts an
  announcement only once this node has stored the release body (the
  service's ``admit`` callback pulls it, from the peer that forwarded the
  announcement first). A node therefore forwards an announcement only when
  it can serve the body, and every peer it reaches can pull from the peer it
  came from. The alternative was to flood announcements at once and pull
  afterwards. It sent nodes several hops from the author to peers that did
  not have the body yet, so their first pulls failed and waited for a retry
  or an anti-entropy round, and some bodies were sent twice. The cost of
  store and forward is the time of one body transfer per hop.
- The validator is guarded: an exception escaping a validator ends the whole
  process in this version, so every failure becomes a rejection that is
  counted. The library also caches a rejection for 300 s, so a body that could
  not be pulled in time is left to the service's retries and anti-entropy.
- Pubsub must be running before the host accepts connections: a pubsub
  stream that arrives earlier raises AttributeError inside the library and
  ends the process, and the library's connect notification blocks until the
  pubsub service reads it. ``running()`` is therefore entered before
  ``host.run``.
- Gossipsub 1.1 and 1.0 only. Version 1.2 adds IDONTWANT, which this library
  version sends to every mesh peer for every message, whatever its size, so
  for announcements of under 200 bytes it only adds control traffic.
- A publisher receives its own messages; the receive loop skips them.
- Gossip bytes are counted per peer next to the sync bytes. The library
  offers no byte counter (its metrics channel blocks pubsub when nobody
  drains it), so ``_AnnouncementPubsub`` counts every RPC it writes and every
  byte it reads from an inbound pubsub stream.
- Inbound pubsub streams are read in chunks (``_BufferedInboundStream``),
  which cuts the Yamux window updates that each small read triggers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint

from p2psynth.errors import NetworkError
from p2psynth.network.announcement import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_RELEASE_BYTES,
    Announcement,
    AnnouncementError,
    decode_announcement,
)
from p2psynth.network.stats import NetworkStatistics

logger = logging.getLogger(__name__)

_NETWORK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{16,}")

# admit(announcement, forwarder, origin) -> True once the body is held locally.
# ``forwarder`` sent us the announcement; ``origin`` published it.
Admit = Callable[[Announcement, ID, ID], Awaitable[bool]]


def announcement_topic(network_id: str, schema_fingerprint: str) -> str:
    """Return the gossip topic of a network: ``/p2psynth/<network id>/<fingerprint[:16]>/announce/1``."""
    if not isinstance(network_id, str) or not _NETWORK_ID_PATTERN.fullmatch(network_id):
        raise NetworkError(
            f"invalid network id {network_id!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(schema_fingerprint, str) or not _FINGERPRINT_PATTERN.fullmatch(schema_fingerprint):
        raise NetworkError(
            f"invalid schema fingerprint {schema_fingerprint!r:.80}: expected lowercase hex of at least "
            "16 characters (Schema.fingerprint)"
        )
    return f"/p2psynth/{network_id}/{schema_fingerprint[:16]}/announce/1"


@dataclass(frozen=True, kw_only=True)
class GossipConfig:
    """Gossipsub parameters of a p2psynth node."""

    heartbeat_s: float = 1.0
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    mesh_degree_high: int = 12
    max_messages_per_s_per_peer: float = 10.0
    # Own announcements: 4 per second leaves room under the per-forwarder cap.
    publish_interval_s: float = 0.25
    publish_queue_size: int = 256
    max_release_bytes: int = MAX_RELEASE_BYTES
    # Validation includes pulling the body: bounded by this, at most this many at once.
    validation_timeout_s: float = 30.0
    max_concurrent_validations: int = 16

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0 or not self.publish_interval_s >= 0 or self.publish_queue_size < 1:
            raise NetworkError(
                f"invalid gossip timing: heartbeat_s={self.heartbeat_s!r}, "
                f"publish_interval_s={self.publish_interval_s!r}, publish_queue_size={self.publish_queue_size!r}"
            )
        if not 1 <= self.mesh_degree_low <= self.mesh_degree <= self.mesh_degree_high:
            raise NetworkError(
                "mesh degrees must satisfy 1 <= low <= degree <= high, got "
                f"{self.mesh_degree_low}, {self.mesh_degree}, {self.mesh_degree_high}"
            )


class AnnouncementGossip:
    """Publishes own announcements and validates and delivers everyone else's."""

    def __init__(
        self,
        host: IHost,
        *,
        topic: str,
        statistics: NetworkStatistics,
        admit: Admit,
        config: GossipConfig = GossipConfig(),
        is_member: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.topic = topic
        self._host = host
        self._statistics = statistics
        self._admit = admit
        self._config = config
        self._is_member = is_member
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=config.mesh_degree,
            degree_low=config.mesh_degree_low,
            degree_high=config.mesh_degree_high,
            heartbeat_interval=config.heartbeat_s,
            adaptive_gossip_enabled=False,
            max_messages_per_topic_per_second=config.max_messages_per_s_per_peer,
        )
        # Constructing Pubsub registers its stream handlers and connect notifee on the host.
        self.pubsub = _AnnouncementPubsub(
            statistics,
            host,
            self.router,
            strict_signing=True,
            allowed_topics={topic},
            validation_timeout=config.validation_timeout_s,
            max_concurrent_validator_count=config.max_concurrent_validations,
        )
        # Announcements waiting for their publish slot; bounded by publish_queue_size.
        self._publish_send, self._publish_receive = trio.open_memory_channel[bytes](config.publish_queue_size)

    @asynccontextmanager
    async def running(self) -> AsyncIterator["AnnouncementGossip"]:
        """Run pubsub, the router and the publish and receive loops for the duration of the block."""
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            with trio.fail_after(10):
                await self.pubsub.wait_until_ready()
            self.pubsub.set_topic_validator(self.topic, self.validate, is_async_validator=True)
            subscription = await self.pubsub.subscribe(self.topic)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_loop)
                nursery.start_soon(self._receive_loop, subscription)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()

    def publish(self, data: bytes) -> None:
        """Queue signed announcement bytes for publishing.

        Raises AnnouncementError if the bytes do not decode and verify, and
        NetworkError when the queue is full. The release still spreads by
        anti-entropy then, and a caller that publishes in bursts can raise
        ``publish_queue_size``.
        """
        decode_announcement(data, max_release_bytes=self._config.max_release_bytes)
        try:
            self._publish_send.send_nowait(bytes(data))
        except trio.WouldBlock:
            self._statistics.count_gossip("publish_queue_full")
            raise NetworkError(
                f"announcement queue is full ({self._config.publish_queue_size} waiting); "
                "peers will still get the release by anti-entropy"
            ) from None
        self._statistics.count_gossip("queued")

    def mesh_peers(self) -> set[ID]:
        """Return the peers in our mesh for the announcement topic."""
        return set(self.router.mesh.get(self.topic, set()))

    async def validate(self, forwarder: ID, message: rpc_pb2.Message) -> bool:
        """Topic validator: True for a member's valid announcement whose body we now hold.

        Every exception is caught and counted as a rejection; only trio's
        Cancelled (the library's validation timeout) propagates.
        """
        try:
            announcement = self._check(forwarder, message)
            if announcement is None:
                return False
            if await self._admit(announcement, forwarder, ID(message.from_id)):
                self._statistics.count_gossip("validated")
                return True
            return False
        except Exception as exc:  # a validator exception would end the process
            self._statistics.count_gossip("rejected:validator_error", str(forwarder), f"{type(exc).__name__}: {exc}")
            logger.error("announcement validator failed on a message from peer %s", forwarder, exc_info=exc)
            return False

    def _check(self, forwarder: ID, message: rpc_pb2.Message) -> Announcement | None:
        data = message.data
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            self._statistics.count_gossip("rejected:oversized", str(forwarder), f"{len(data)} bytes")
            return None
        try:
            announcement = decode_announcement(data, max_release_bytes=self._config.max_release_bytes)
        except AnnouncementError as exc:
            self._statistics.count_gossip(f"rejected:{exc.reason}", str(forwarder), str(exc))
            return None
        if self._is_member is not None and not self._is_member(announcement.author):
            self._statistics.count_gossip(
                "rejected:not_member", str(forwarder), f"author {announcement.author.hex()[:16]}"
            )
            return None
        return announcement

    async def _publish_loop(self) -> None:
        my_id = self._host.get_id()
        async for data in self._publish_receive:
            try:
                await self.pubsub.publish(self.topic, data)
                self._statistics.count_gossip("published")
            except Exception as exc:  # the library raises many types; publishing is best effort
                self._statistics.count_gossip("publish_failed", str(my_id), f"{type(exc).__name__}: {exc}")
                logger.warning("publishing an announcement failed: %s: %s", type(exc).__name__, exc)
            await trio.sleep(self._config.publish_interval_s)

    async def _receive_loop(self, subscription) -> None:
        # Validation already stored the body; delivery is only counted. The
        # subscription must still be drained: the library drops messages for
        # a subscription whose 32-slot channel is full.
        my_id = self._host.get_id()
        async for message in subscription:
            if message.from_id != my_id.to_bytes():
                self._statistics.count_gossip("received")


class _AnnouncementPubsub(Pubsub):
    """Pubsub that forwards each message once and counts gossip bytes per peer.

    py-libp2p 0.8.1 marks a message as seen only after its validator
    returns, and forwards every copy that passed validation. Our validator
    waits for a body transfer, so the copies that other mesh peers send
    meanwhile were each validated and forwarded again. In a 50-host test that
    raised announcement deliveries by half. ``push_msg`` therefore drops a
    copy while another copy of the same message is being validated, as
    go-libp2p does by forwarding only the first validated copy. The dropped
    copy is not a validation failure, so the forwarder's peer score is not
    lowered. If the first copy fails validation, the library caches that
    result for the message id anyway, so a dropped copy would have failed too.

    NOTE: the one "hello" RPC (our subscriptions) sent on each new outbound
    stream bypasses ``write_msg`` in py-libp2p 0.8.1 and is not counted as
    sent. The peer's hello is counted as received.
    """

    def __init__(self, statistics: NetworkStatistics, *args, **kwargs) -> None:
        self._traffic_statistics = statistics
        # Ids of messages with a copy in validation now.
        self._validating: set[bytes] = set()
        super().__init__(*args, **kwargs)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        message_id = self._msg_id_constructor(msg)
        if message_id in self._validating:
            self._traffic_statistics.count_gossip("duplicate_in_validation")
            return
        self._validating.add(message_id)
        try:
            await super().push_msg(msg_forwarder, msg)
        finally:
            self._validating.discard(message_id)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        written = await super().write_msg(stream, rpc_msg)
        if written:
            size = rpc_msg.ByteSize()
            self._traffic_statistics.count_gossip_sent(str(stream.muxed_conn.peer_id), size + len(encode_uvarint(size)))
        return written

    async def stream_handler(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        await super().stream_handler(_BufferedInboundStream(stream, peer, self._traffic_statistics))


class _BufferedInboundStream:
    """An inbound pubsub stream read in chunks, counting the bytes; everything else is delegated.

    The library reads an RPC's varint length one byte per ``read`` call and
    then the body, and py-libp2p 0.8.1's Yamux follows almost every read with
    a WINDOW_UPDATE frame to the sender. Reading up to ``CHUNK_BYTES`` at once
    and serving the small reads from that buffer cuts those frames to about
    one per RPC. ``read(n)`` still returns at most ``n`` bytes.
    """

    CHUNK_BYTES = 64 * 1024

    def __init__(self, stream: INetStream, peer: str, statistics: NetworkStatistics) -> None:
        self._stream = stream
        self._peer = peer
        self._statistics = statistics
        # Bytes read from the stream and not yet returned; refilled only when empty.
        self._buffer = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if not self._buffer:
            data = await self._stream.read(self.CHUNK_BYTES if n is not None and 0 <= n < self.CHUNK_BYTES else n)
            self._statistics.count_gossip_received(self._peer, len(data))
            self._buffer += data
        size = len(self._buffer) if n is None or n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
