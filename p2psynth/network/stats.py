"""Counters of the network layer: traffic, protocol errors and rejections.

A misbehaving or broken peer can send thousands of bad frames a second, so
the network layer counts events here instead of logging each one.
``warn_limited`` logs a given peer and reason at most once per
``log_interval_s``, while the counts stay exact. Per-peer counters are kept for at most
``max_tracked_peers`` peers; later peers are summed under ``OTHER_PEERS`` so
that a peer churning through identities cannot grow memory without bound.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

OTHER_PEERS = "<other peers>"


@dataclass
class PeerTraffic:
    """Traffic with one peer, its errors by reason and its releases by verdict.

    ``frames_*`` and ``bytes_*`` count the sync protocol (the names predate
    gossip counting and are kept for readers of the status snapshot).
    ``gossip_bytes_*`` count pubsub RPCs: announcements and Gossipsub control
    messages. Neither includes Noise and Yamux framing.
    """

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    gossip_bytes_sent: int = 0
    gossip_bytes_received: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    releases: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "gossip_bytes_sent": self.gossip_bytes_sent,
            "gossip_bytes_received": self.gossip_bytes_received,
            "errors": dict(self.errors),
            "releases": dict(self.releases),
        }


class NetworkStatistics:
    """Exact counters plus rate-limited warnings; one instance per network service."""

    def __init__(
        self,
        *,
        max_tracked_peers: int = 1024,
        log_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_tracked_peers = max_tracked_peers
        self._log_interval_s = log_interval_s
        self._clock = clock
        # Totals over all peers.
        self.total = PeerTraffic()
        # Per-peer traffic, keyed by peer id string; at most max_tracked_peers + 1 keys.
        self.peers: dict[str, PeerTraffic] = {}
        # Gossip events: published, queued, received, rejected:<reason>, ...
        self.gossip: Counter[str] = Counter()
        # Monotonic time of the last warning per (peer, reason); bounded like self.peers.
        self._last_logged: dict[tuple[str, str], float] = {}

    def peer(self, peer_id: str) -> PeerTraffic:
        """Return the counters of ``peer_id``, or the shared overflow entry once the table is full."""
        traffic = self.peers.get(peer_id)
        if traffic is None:
            if len(self.peers) >= self._max_tracked_peers:
                peer_id = OTHER_PEERS
            traffic = self.peers.setdefault(peer_id, PeerTraffic())
        return traffic

    def count_sent(self, peer_id: str, size_bytes: int) -> None:
        for traffic in (self.total, self.peer(peer_id)):
            traffic.frames_sent += 1
            traffic.bytes_sent += size_bytes

    def count_received(self, peer_id: str, size_bytes: int) -> None:
        for traffic in (self.total, self.peer(peer_id)):
            traffic.frames_received += 1
            traffic.bytes_received += size_bytes

    def count_gossip_sent(self, peer_id: str, size_bytes: int) -> None:
        for traffic in (self.total, self.peer(peer_id)):
            traffic.gossip_bytes_sent += size_bytes

    def count_gossip_received(self, peer_id: str, size_bytes: int) -> None:
        for traffic in (self.total, self.peer(peer_id)):
            traffic.gossip_bytes_received += size_bytes

    def count_error(self, peer_id: str, reason: str, detail: str = "") -> None:
        """Count a protocol error of ``peer_id`` and log it unless logged recently."""
        self.total.errors[reason] += 1
        self.peer(peer_id).errors[reason] += 1
        self.warn_limited(peer_id, reason, "sync protocol error from peer %s: %s %s", detail)

    def count_gossip(self, event: str, peer_id: str | None = None, detail: str = "") -> None:
        """Count a gossip event; events named ``rejected:...`` are also logged, rate-limited."""
        self.gossip[event] += 1
        if peer_id is not None and event.startswith("rejected"):
            self.warn_limited(peer_id, event, "gossip message from peer %s: %s %s", detail)

    def count_release(self, verdict: str, peer_id: str) -> None:
        """Count the node's verdict on a release body received from ``peer_id``."""
        self.total.releases[verdict] += 1
        self.peer(peer_id).releases[verdict] += 1

    def warn_limited(self, peer_id: str, reason: str, template: str, detail: str) -> None:
        """Log ``template % (peer_id, reason, detail)`` at WARNING unless this peer and reason were logged within the interval."""
        now = self._clock()
        key = (peer_id, reason)
        last = self._last_logged.get(key)
        if last is not None and now - last < self._log_interval_s:
            return
        if last is None and len(self._last_logged) >= self._max_tracked_peers:
            self._forget_old_log_entries(now)
        self._last_logged[key] = now
        logger.warning(template, peer_id, reason, detail)

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of every counter."""
        return {
            "total": self.total.as_dict(),
            "peers": {peer_id: traffic.as_dict() for peer_id, traffic in self.peers.items()},
            "gossip": dict(self.gossip),
        }

    def _forget_old_log_entries(self, now: float) -> None:
        expired = [key for key, when in self._last_logged.items() if now - when >= self._log_interval_s]
        for key in expired:
            del self._last_logged[key]
        if len(self._last_logged) >= self._max_tracked_peers:
            # Every entry is recent: drop the oldest so the table stays bounded.
            oldest = min(self._last_logged, key=self._last_logged.__getitem__)
            del self._last_logged[oldest]
