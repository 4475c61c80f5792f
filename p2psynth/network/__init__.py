"""Networking of a p2psynth node on py-libp2p (trio): gossip announces, sync moves bodies.

Modules, from the bottom up:

- ``host``: the libp2p host from the node's Ed25519 key, Noise-only
  security, Yamux, peer id <-> public key, dialing with backoff.
- ``announcement``: the small signed message announcing a release.
- ``gossip``: Gossipsub on one topic per network and schema, with a guarded
  validator and a rate-limited publish queue.
- ``wire`` and ``sync``: the ``/p2psynth/sync/1.1.0`` (and 1.0.0)
  request/response protocol (length-prefixed msgpack frames) and
  anti-entropy pulls, gaps inside an author's history included.
- ``session``: outbound sync sessions on streams kept open per peer.
- ``stats``: counters instead of log floods.
- ``service``: ``NetworkService``, which runs all of it in a trio nursery for
  the node.

The layer treats release bytes as opaque: the node supplies a
``ReleaseSource`` (``p2psynth.store.Store`` fits) and an ``accept_release``
callback that validates and stores bodies. A source that also has
``release_index`` (``ReleaseIndex``) turns on gap repair.
"""

from p2psynth.network.announcement import Announcement, AnnouncementError, decode_announcement, sign_announcement
from p2psynth.network.gossip import GossipConfig, announcement_topic
from p2psynth.network.host import peer_id_from_public_key, public_key_from_peer_id
from p2psynth.network.service import NetworkConfig, NetworkService, PeerStatus
from p2psynth.network.sync import (
    SYNC_PROTOCOL_ID,
    SYNC_PROTOCOL_ID_V1_1,
    PullResult,
    ReleaseIndex,
    ReleaseSource,
    ReleaseVerdict,
    SyncLimits,
)

__all__ = [
    "SYNC_PROTOCOL_ID",
    "SYNC_PROTOCOL_ID_V1_1",
    "Announcement",
    "AnnouncementError",
    "GossipConfig",
    "NetworkConfig",
    "NetworkService",
    "PeerStatus",
    "PullResult",
    "ReleaseIndex",
    "ReleaseSource",
    "ReleaseVerdict",
    "SyncLimits",
    "announcement_topic",
    "decode_announcement",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "sign_announcement",
]
