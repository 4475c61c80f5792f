"""``NetworkService``: one node's host, gossip and sync, run in a trio nursery.

Start it with ``await nursery.start(service.run)``; it returns once the host
listens and the gossip topic is subscribed. Stop it with ``stop()`` (or by
cancelling the nursery): the service then cancels its tasks and closes the
host within ``shutdown_timeout_s``.

How a release spreads:

1. The author's node stores the release, then calls ``announce_release``; the
   announcement is queued and gossiped (``gossip``).
2. Every node that receives it calls the node's ``on_announcement`` callback,
   which decides whether to pull (by default: when the store lacks the
   release id). The node then fetches the body by id from the peer that
   forwarded the announcement. That peer has the body, because nodes forward
   only announcements whose body they have stored (see ``gossip``). Only then
   does the node forward the announcement in turn. When that fetch fails,
   the node retries in the background, asking the publisher and other peers
   with backoff.
3. Anti-entropy (``sync``): on every new connection and every 5 to 10 s
   (jittered, so nodes started together do not sync in lockstep) a node
   exchanges HAVE maps with some connected peers and pulls what it lacks. This
   is what lets a late joiner or a node back from a partition catch up, and it
   repairs whatever gossip lost.

Bodies go to the node's ``accept_release`` callback, which validates and
stores them; the network layer never decodes a release.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from p2psynth.errors import NetworkError
from p2psynth.network.announcement import Announcement, decode_announcement, sign_announcement
from p2psynth.network.gossip import AnnouncementGossip, GossipConfig, announcement_topic
from p2psynth.network.host import (
    DEFAULT_LISTEN_ADDRS,
    backoff_delays_s,
    create_host,
    dial_with_backoff,
    host_addresses,
    parse_multiaddrs,
    peer_info_from_address,
    public_key_from_peer_id,
)
from p2psynth.network.stats import NetworkStatistics
from p2psynth.network.sync import (
    AcceptRelease,
    PullResult,
    ReleaseSource,
    ReleaseVerdict,
    SyncLimits,
    SyncProtocol,
    SyncProtocolError,
)

logger = logging.getLogger(__name__)

# on_announcement(announcement, from_peer=publisher peer id) -> True to pull the body.
OnAnnouncement = Callable[..., bool]


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """Everything the network layer needs besides the node's key and callbacks."""

    network_id: str
    schema_fingerprint: str
    listen_addrs: tuple[str, ...] = DEFAULT_LISTEN_ADDRS
    # Dialable addresses with /p2p/<peer id>; redialed while disconnected.
    bootstrap_addrs: tuple[str, ...] = ()
    gossip: GossipConfig = field(default_factory=GossipConfig)
    sync: SyncLimits = field(default_factory=SyncLimits)
    anti_entropy_min_interval_s: float = 5.0
    anti_entropy_max_interval_s: float = 10.0
    anti_entropy_peers_per_round: int = 2
    max_concurrent_syncs: int = 4
    dial_attempts: int = 6
    dial_initial_delay_s: float = 0.5
    dial_max_delay_s: float = 30.0
    dial_timeout_s: float = 10.0
    redial_interval_s: float = 30.0
    # Retries of a failed pull after an announcement: attempts, first wait (doubling), peers asked per attempt.
    pull_attempts: int = 6
    pull_initial_delay_s: float = 0.1
    pull_peers_per_attempt: int = 3
    max_pending_pulls: int = 256
    max_concurrent_pulls: int = 8
    shutdown_timeout_s: float = 5.0
    # Seed of the jitter and peer-choice randomness; None draws one from the OS.
    seed: int | None = None

    def __post_init__(self) -> None:
        announcement_topic(self.network_id, self.schema_fingerprint)  # raises NetworkError naming the value
        parse_multiaddrs(self.listen_addrs)
        for address in self.bootstrap_addrs:
            peer_info_from_address(address)
        if not 0 < self.anti_entropy_min_interval_s <= self.anti_entropy_max_interval_s:
            raise NetworkError(
                "anti-entropy interval must satisfy 0 < min <= max, got "
                f"{self.anti_entropy_min_interval_s} and {self.anti_entropy_max_interval_s} s"
            )
        for name in (
            "anti_entropy_peers_per_round", "max_concurrent_syncs", "dial_attempts", "pull_attempts",
            "pull_peers_per_attempt", "max_pending_pulls", "max_concurrent_pulls",
        ):
            if getattr(self, name) < 1:
                raise NetworkError(f"{name} must be at least 1, got {getattr(self, name)!r}")

    @property
    def topic(self) -> str:
        return announcement_topic(self.network_id, self.schema_fingerprint)


@dataclass(frozen=True)
class PeerStatus:
    """A connected peer: its id, its Ed25519 key (None for a non-Ed25519 id) and addresses."""

    peer_id: str
    public_key: bytes | None
    addresses: tuple[str, ...]


def next_anti_entropy_delay_s(config: NetworkConfig, rng: random.Random) -> float:
    """Return the wait before the next anti-entropy round, uniform in [min, max]."""
    return rng.uniform(config.anti_entropy_min_interval_s, config.anti_entropy_max_interval_s)


class NetworkService:
    """A node's networking: libp2p host, announcement gossip, sync and anti-entropy."""

    def __init__(
        self,
        *,
        private_key: Ed25519PrivateKey,
        config: NetworkConfig,
        releases: ReleaseSource,
        accept_release: AcceptRelease,
        on_announcement: OnAnnouncement | None = None,
        is_member: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.config = config
        self._private_key = private_key
        self._releases = releases
        self._on_announcement_callback = on_announcement
        self._is_member = is_member
        self._rng = random.Random(config.seed)
        self._statistics = NetworkStatistics()
        self.host: IHost = create_host(private_key)
        self.public_key = private_key.public_key().public_bytes_raw()

        self.sync = SyncProtocol(
            self.host,
            releases=releases,
            accept_release=accept_release,
            statistics=self._statistics,
            limits=config.sync,
            is_member=is_member,
            on_peer_ahead=self._request_sync,
        )
        self.gossip = AnnouncementGossip(
            self.host,
            topic=config.topic,
            statistics=self._statistics,
            admit=self._admit,
            config=config.gossip,
            is_member=is_member,
        )
        self.host.get_network().register_notifee(_ConnectNotifee(self._request_sync, self.sync.forget_peer))

        # Peers that need a sync session soon (new connection, or ahead of us); dropped when full.
        self._sync_send, self._sync_receive = trio.open_memory_channel[ID](256)
        # Peers with a sync session running, and those to sync again once it ends.
        self._syncing: set[ID] = set()
        self._resync: set[ID] = set()
        # Release ids being fetched by a gossip validation, with an event set when it ends.
        self._in_flight: dict[bytes, trio.Event] = {}
        # Release ids queued for a background retry or being retried; at most max_pending_pulls.
        self._pending_pulls: set[bytes] = set()
        self._pull_send, self._pull_receive = trio.open_memory_channel[tuple[Announcement, ID]](
            config.max_pending_pulls
        )
        self._stop_requested = trio.Event()
        self._running = False

    # Life cycle --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()`` or cancellation; ``task_status.started(self)`` once listening.

        Cancellation from outside shuts down the same way as ``stop()``: the
        service works in a shielded scope, because py-libp2p 0.8.1 leaves its
        listening socket open when its clean-up is cancelled.
        """
        if self._running:
            raise NetworkError("this NetworkService is running already; create one service per run")
        self._running = True
        finished = trio.Event()
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self._serve_shielded, finished)
                task_status.started(self)
                await finished.wait()
            finally:
                if not finished.is_set():
                    self.stop()
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(self.config.shutdown_timeout_s + 1.0):
                            await finished.wait()

    async def _serve_shielded(self, finished: trio.Event, *, task_status: trio.TaskStatus) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._serve(task_status=task_status)
        finally:
            finished.set()

    async def _serve(self, *, task_status: trio.TaskStatus) -> None:
        listen_addrs = parse_multiaddrs(self.config.listen_addrs)
        with trio.CancelScope() as shutdown_scope:
            self.sync.install()
            async with self.gossip.running():
                async with self.host.run(listen_addrs=listen_addrs):
                    try:
                        await _stop_auto_connector(self.host)
                        async with trio.open_nursery() as nursery:
                            self._start_tasks(nursery)
                            logger.info(
                                "network started: peer %s listening on %s, topic %s",
                                self.peer_id, ", ".join(self.addresses()), self.config.topic,
                            )
                            task_status.started()
                            await self._stop_requested.wait()

                            # Bound the whole shutdown, library clean-up included.
                            shutdown_scope.deadline = trio.current_time() + self.config.shutdown_timeout_s
                            nursery.cancel_scope.cancel()
                    finally:
                        await self._disconnect_all()
        if shutdown_scope.cancelled_caught:
            logger.warning("network shutdown exceeded %.1f s and was cut short", self.config.shutdown_timeout_s)
        logger.info("network stopped: peer %s", self.peer_id)

    async def _disconnect_all(self) -> None:
        """Close every connection before the host stops.

        Leaving ``host.run`` with connections open leaves their sockets
        unclosed in py-libp2p 0.8.1 (a ResourceWarning at garbage
        collection). Shielded, so that it also runs when the service is
        cancelled from outside, and bounded by half the shutdown time.
        """
        with trio.move_on_after(self.config.shutdown_timeout_s / 2) as scope:
            scope.shield = True
            for peer_id in list(self.host.get_connected_peers()):
                try:
                    await self.host.disconnect(peer_id)
                except Exception as exc:  # the peer may be closing the same connection
                    logger.debug("closing the connection to %s failed: %s", peer_id, exc)

    def stop(self) -> None:
        """Ask ``run`` to return; it closes the host within ``shutdown_timeout_s``."""
        self._stop_requested.set()

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._anti_entropy_loop)
        for _ in range(self.config.max_concurrent_pulls):
            nursery.start_soon(self._pull_worker)
        for address in self.config.bootstrap_addrs:
            nursery.start_soon(self._keep_connected, address)

    # Interface for the node --------------------------------------------------

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    def addresses(self) -> list[str]:
        """Return our dialable addresses, each ending in ``/p2p/<peer id>``."""
        return host_addresses(self.host)

    def peers(self) -> list[PeerStatus]:
        """Return the peers we are connected to."""
        statuses = []
        for peer_id in self.host.get_connected_peers():
            try:
                public_key = public_key_from_peer_id(peer_id)
            except NetworkError:
                public_key = None
            statuses.append(PeerStatus(str(peer_id), public_key, _peer_addresses(self.host, peer_id)))
        return statuses

    def statistics(self) -> dict:
        """Return counters of traffic, errors, gossip and pulls (JSON-ready)."""
        snapshot = self._statistics.snapshot()
        snapshot["connected_peers"] = len(self.host.get_connected_peers())
        snapshot["mesh_peers"] = len(self.gossip.mesh_peers())
        snapshot["pending_pulls"] = len(self._pending_pulls)
        return snapshot

    def announce(self, announcement: bytes) -> None:
        """Queue signed announcement bytes (from ``sign_announcement``) for gossip.

        The release must be in ``releases`` already: peers pull the body from
        us as soon as they see the announcement. Raises AnnouncementError for
        bytes that do not verify, and NetworkError when the release is not
        stored or the publish queue is full.
        """
        decoded = decode_announcement(announcement, max_release_bytes=self.config.gossip.max_release_bytes)
        if self._releases.get_release(decoded.release_id) is None:
            raise NetworkError(
                f"release {decoded.release_id.hex()} is not in the store; store it before announcing it"
            )
        self.gossip.publish(announcement)

    def announce_release(self, *, release_id: bytes, sequence: int, size_bytes: int) -> bytes:
        """Sign an announcement of our own release with the node key, queue it and return its bytes."""
        data = sign_announcement(
            release_id=release_id, sequence=sequence, size_bytes=size_bytes, private_key=self._private_key
        )
        self.announce(data)
        return data

    async def connect(self, address: str) -> str:
        """Dial ``address`` (with ``/p2p/<peer id>``) with backoff; return the peer id."""
        peer_id = await dial_with_backoff(
            self.host,
            address,
            attempts=self.config.dial_attempts,
            initial_delay_s=self.config.dial_initial_delay_s,
            max_delay_s=self.config.dial_max_delay_s,
            attempt_timeout_s=self.config.dial_timeout_s,
            rng=self._rng,
        )
        return str(peer_id)

    async def sync_now(self) -> PullResult:
        """Run one anti-entropy session with every connected peer, one after another; return the totals."""
        total = PullResult()
        for peer_id in list(self.host.get_connected_peers()):
            if not self._may_sync_with(peer_id):
                continue
            try:
                result = await self.sync.pull_missing(peer_id)
            except SyncProtocolError:
                continue  # counted by the sync layer
            total.verdicts.update(result.verdicts)
            total.received_ids |= result.received_ids
            total.requests += result.requests
        return total

    # Announcements and pulls -------------------------------------------------

    async def _admit(self, announcement: Announcement, forwarder: ID, origin: ID) -> bool:
        """Return True once the announced body is stored; gossip forwards the announcement only then."""
        release_id = announcement.release_id
        if self._releases.get_release(release_id) is not None:
            return True
        if not self._wants(announcement, origin):
            self._statistics.count_gossip("not_wanted")
            return False

        # Copies of one announcement arrive from several peers: fetch once.
        in_flight = self._in_flight.get(release_id)
        if in_flight is not None:
            await in_flight.wait()
            return self._releases.get_release(release_id) is not None

        done = trio.Event()
        self._in_flight[release_id] = done
        try:
            stored = await self._fetch_from(release_id, [forwarder, origin])
        finally:
            done.set()
            del self._in_flight[release_id]
        if stored:
            self._statistics.count_gossip("pulled")
            return True
        self._queue_retry(announcement, origin)
        return False

    async def _fetch_from(self, release_id: bytes, peer_ids: list[ID]) -> bool:
        """Ask each connected peer in turn for one release; return True once it is stored."""
        connected = set(self.host.get_connected_peers())
        for peer_id in dict.fromkeys(peer_ids):
            if peer_id not in connected or not self._may_sync_with(peer_id):
                continue
            try:
                result = await self.sync.fetch(peer_id, [release_id])
            except SyncProtocolError:
                continue  # counted by the sync layer
            if release_id in result.received_ids:
                return True
            if result.verdicts[ReleaseVerdict.REJECTED.value]:
                return False  # the bytes match the id, so every peer would send the same rejected body
        return False

    def _queue_retry(self, announcement: Announcement, origin: ID) -> None:
        if announcement.release_id in self._pending_pulls:
            return
        try:
            self._pull_send.send_nowait((announcement, origin))
        except trio.WouldBlock:
            self._statistics.count_gossip("pull_dropped_queue_full")
            return
        self._pending_pulls.add(announcement.release_id)

    def _wants(self, announcement: Announcement, origin: ID) -> bool:
        if self._on_announcement_callback is None:
            return self._releases.get_release(announcement.release_id) is None
        try:
            return bool(self._on_announcement_callback(announcement, from_peer=str(origin)))
        except Exception:
            logger.exception("on_announcement failed for release %s; not pulling it", announcement.release_id.hex())
            return False

    async def _pull_worker(self) -> None:
        async for announcement, origin in self._pull_receive:
            try:
                await self._pull_announced(announcement, origin)
            except Exception:  # a bug here must not stop the other pulls
                logger.exception("pulling release %s failed", announcement.release_id.hex())
            finally:
                self._pending_pulls.discard(announcement.release_id)

    async def _pull_announced(self, announcement: Announcement, origin: ID) -> None:
        """Retry a failed fetch with backoff, asking the publisher first, then random other peers."""
        release_id = announcement.release_id
        delays = backoff_delays_s(
            attempts=self.config.pull_attempts + 1,
            initial_delay_s=self.config.pull_initial_delay_s,
            max_delay_s=5.0,
            rng=self._rng,
        )
        for attempt in range(self.config.pull_attempts):
            await trio.sleep(delays[attempt])
            if self._releases.get_release(release_id) is not None:
                return  # anti-entropy or another copy of the announcement got it first
            if await self._fetch_from(release_id, self._pull_candidates(origin)):
                self._statistics.count_gossip("pulled_on_retry")
                return
        self._statistics.count_gossip("pull_gave_up")
        logger.debug("no peer had release %s after %d attempts", release_id.hex(), self.config.pull_attempts)

    def _pull_candidates(self, origin: ID) -> list[ID]:
        connected = [p for p in self.host.get_connected_peers() if self._may_sync_with(p)]
        others = [p for p in connected if p != origin]
        self._rng.shuffle(others)
        ordered = ([origin] if origin in connected else []) + others
        return ordered[: self.config.pull_peers_per_attempt]

    # Anti-entropy ------------------------------------------------------------

    def _request_sync(self, peer_id: ID) -> None:
        """Schedule a sync session with ``peer_id`` soon, without waiting (a full queue drops the request)."""
        if peer_id in self._syncing:
            self._resync.add(peer_id)
            return
        try:
            self._sync_send.send_nowait(peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._statistics.count_gossip("sync_request_dropped")

    async def _anti_entropy_loop(self) -> None:
        limiter = trio.CapacityLimiter(self.config.max_concurrent_syncs)
        async with trio.open_nursery() as nursery:
            next_round = trio.current_time() + next_anti_entropy_delay_s(self.config, self._rng)
            while True:
                peer_id = None
                with trio.move_on_at(next_round):
                    peer_id = await self._sync_receive.receive()
                if peer_id is not None:
                    self._start_sync(nursery, limiter, peer_id)
                    continue

                connected = [p for p in self.host.get_connected_peers() if self._may_sync_with(p)]
                for peer_id in self._rng.sample(connected, min(len(connected), self.config.anti_entropy_peers_per_round)):
                    self._start_sync(nursery, limiter, peer_id)
                next_round = trio.current_time() + next_anti_entropy_delay_s(self.config, self._rng)

    def _start_sync(self, nursery: trio.Nursery, limiter: trio.CapacityLimiter, peer_id: ID) -> None:
        # Opening a stream to a peer that has gone would make the swarm dial it again.
        if peer_id in self._syncing or peer_id not in self.host.get_connected_peers():
            return
        if not self._may_sync_with(peer_id):
            nursery.start_soon(self._disconnect_non_member, peer_id)
            return
        self._syncing.add(peer_id)
        nursery.start_soon(self._sync_session, limiter, peer_id)

    async def _sync_session(self, limiter: trio.CapacityLimiter, peer_id: ID) -> None:
        try:
            async with limiter:
                result = await self.sync.pull_missing(peer_id)
            if result.accepted:
                logger.debug("anti-entropy pulled %d releases from peer %s", result.accepted, peer_id)
        except SyncProtocolError:
            pass  # counted by the sync layer; the next round retries
        except Exception:  # a bug here must not stop anti-entropy
            logger.exception("anti-entropy session with peer %s failed", peer_id)
        finally:
            self._syncing.discard(peer_id)
            if peer_id in self._resync:
                self._resync.discard(peer_id)
                self._request_sync(peer_id)

    def _may_sync_with(self, peer_id: ID) -> bool:
        if self._is_member is None:
            return True
        try:
            return bool(self._is_member(public_key_from_peer_id(peer_id)))
        except NetworkError:
            return False  # not an Ed25519 peer id, so not a member
        except Exception:  # a failing is_member must not stop anti-entropy
            logger.exception("is_member failed for peer %s; treating it as a non-member", peer_id)
            return False

    async def _disconnect_non_member(self, peer_id: ID) -> None:
        self._statistics.count_error(str(peer_id), "not_member_connection")
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(peer_id)
            except Exception as exc:  # the peer may have gone already
                logger.debug("disconnecting non-member %s failed: %s", peer_id, exc)

    # Bootstrap peers ---------------------------------------------------------

    async def _keep_connected(self, address: str) -> None:
        """Dial a bootstrap address with backoff, then redial it whenever it is disconnected."""
        peer_id = peer_info_from_address(address).peer_id
        attempts = self.config.dial_attempts
        while True:
            if peer_id not in self.host.get_connected_peers():
                try:
                    await dial_with_backoff(
                        self.host,
                        address,
                        attempts=attempts,
                        initial_delay_s=self.config.dial_initial_delay_s,
                        max_delay_s=self.config.dial_max_delay_s,
                        attempt_timeout_s=self.config.dial_timeout_s,
                        rng=self._rng,
                    )
                    logger.info("connected to bootstrap peer %s", address)
                except NetworkError as exc:
                    self._statistics.warn_limited(str(peer_id), "dial_failed", "bootstrap peer %s: %s %s", str(exc))
                # After the first round, one try per interval keeps a dead address cheap.
                attempts = 1
            await trio.sleep(self.config.redial_interval_s)


class _ConnectNotifee(INotifee):
    """Schedules a sync session for every new connection and drops the state of a closed one, without waiting."""

    def __init__(self, on_connected: Callable[[ID], None], on_disconnected: Callable[[ID], None]) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        try:
            self._on_connected(conn.muxed_conn.peer_id)
        except Exception:  # a notifee exception would surface inside the swarm
            logger.exception("scheduling a sync for a new connection failed")

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        try:
            self._on_disconnected(conn.muxed_conn.peer_id)
        except Exception:  # a notifee exception would surface inside the swarm
            logger.exception("forgetting the sync state of a closed connection failed")

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


async def _stop_auto_connector(host: IHost) -> None:
    """Stop the swarm's auto-connector, which would dial every peer in the peerstore.

    py-libp2p 0.8.1 starts it with every swarm. Below the low watermark (100
    connections by default, so always in a network of organizations) it
    re-dials, every 10 s, any peer whose address entered the peerstore: peers
    learned from identify or gossip records, and non-members this service
    disconnected. It also logs its state at INFO on every pass. A p2psynth
    node dials only its configured bootstrap peers; other peers dial it.
    """
    auto_connector = getattr(host.get_network(), "auto_connector", None)
    if auto_connector is not None:
        await auto_connector.stop()


def _peer_addresses(host: IHost, peer_id: ID) -> tuple[str, ...]:
    try:
        return tuple(str(address) for address in host.get_peerstore().addrs(peer_id))
    except Exception:  # the peerstore raises PeerStoreError for a peer without addresses
        return ()
