"""Unit tests of the network layer's pure parts: formats, codecs and decisions.

No sockets here; the tests with real libp2p hosts are in the other
test_network_* files.
"""

from __future__ import annotations

import random

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2psynth.errors import NetworkError
from p2psynth.network.announcement import (
    MAX_ANNOUNCEMENT_BYTES,
    Announcement,
    AnnouncementError,
    decode_announcement,
    sign_announcement,
)
from p2psynth.network.gossip import GossipConfig, announcement_topic
from p2psynth.network.host import (
    backoff_delays_s,
    check_security_options,
    libp2p_key_pair,
    peer_id_from_public_key,
    peer_info_from_address,
    public_key_from_peer_id,
)
from p2psynth.network.memory import MemoryReleases
from p2psynth.network.stats import OTHER_PEERS, NetworkStatistics
from p2psynth.network.sync import PullPlan, ReleaseVerdict, SyncLimits, content_id, plan_pulls
from p2psynth.network.wire import (
    GetAfterRequest,
    GetRequest,
    HaveRequest,
    SyncProtocolError,
    decode_have_response,
    decode_releases_response,
    decode_request,
    encode_error_response,
    encode_have_response,
    encode_releases_response,
    encode_request,
)


def make_key(index: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([index]) * 32)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


RELEASE_ID = bytes(range(32))


# Announcements ---------------------------------------------------------------


def test_announcement_round_trip():
    key = make_key(1)
    data = sign_announcement(release_id=RELEASE_ID, sequence=7, size_bytes=1234, private_key=key)
    announcement = decode_announcement(data)
    assert announcement.release_id == RELEASE_ID
    assert announcement.author == public_bytes(key)
    assert announcement.sequence == 7
    assert announcement.size_bytes == 1234
    assert announcement.encode() == data
    assert len(data) < 256


def test_announcement_tampered_field_rejected():
    data = sign_announcement(release_id=RELEASE_ID, sequence=7, size_bytes=1234, private_key=make_key(1))
    fields = msgpack.unpackb(data)
    fields["sequence"] = 8
    with pytest.raises(AnnouncementError) as caught:
        decode_announcement(msgpack.packb(fields, use_bin_type=True))
    assert caught.value.reason == "bad_signature"


def test_announcement_other_author_rejected():
    data = sign_announcement(release_id=RELEASE_ID, sequence=1, size_bytes=10, private_key=make_key(1))
    fields = msgpack.unpackb(data)
    fields["author"] = public_bytes(make_key(2))
    with pytest.raises(AnnouncementError) as caught:
        decode_announcement(msgpack.packb(fields, use_bin_type=True))
    assert caught.value.reason == "bad_signature"


def test_announcement_oversized_rejected_before_parsing():
    with pytest.raises(AnnouncementError) as caught:
        decode_announcement(b"\x80" * (MAX_ANNOUNCEMENT_BYTES + 1))
    assert caught.value.reason == "oversized"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 1}),
        msgpack.packb({"v": 2, "release_id": RELEASE_ID, "author": RELEASE_ID, "sequence": 1, "size": 1, "sig": bytes(64)}),
    ],
)
def test_announcement_garbage_rejected(data):
    with pytest.raises(AnnouncementError):
        decode_announcement(data)


def test_announcement_reordered_keys_rejected():
    data = sign_announcement(release_id=RELEASE_ID, sequence=1, size_bytes=10, private_key=make_key(1))
    fields = msgpack.unpackb(data)
    reordered = dict(reversed(list(fields.items())))
    with pytest.raises(AnnouncementError) as caught:
        decode_announcement(msgpack.packb(reordered, use_bin_type=True))
    assert caught.value.reason == "malformed"


def test_announcement_trailing_bytes_rejected():
    data = sign_announcement(release_id=RELEASE_ID, sequence=1, size_bytes=10, private_key=make_key(1))
    with pytest.raises(AnnouncementError):
        decode_announcement(data + b"\x00")


def test_announcement_non_minimal_integer_rejected():
    key = make_key(1)
    data = sign_announcement(release_id=RELEASE_ID, sequence=1, size_bytes=10, private_key=key)
    # The same value 10 as a uint32 (0xce) instead of a positive fixint.
    padded = data.replace(b"\xa4size\x0a", b"\xa4size\xce\x00\x00\x00\x0a")
    assert padded != data
    with pytest.raises(AnnouncementError) as caught:
        decode_announcement(padded)
    assert caught.value.reason == "not_canonical"


@pytest.mark.parametrize(
    "fields",
    [
        {"release_id": b"short", "sequence": 1, "size_bytes": 10},
        {"release_id": RELEASE_ID, "sequence": 0, "size_bytes": 10},
        {"release_id": RELEASE_ID, "sequence": 1, "size_bytes": 0},
        {"release_id": RELEASE_ID, "sequence": 1, "size_bytes": 17 * 1024 * 1024},
        {"release_id": RELEASE_ID, "sequence": True, "size_bytes": 10},
    ],
)
def test_sign_announcement_invalid_fields_rejected(fields):
    with pytest.raises(AnnouncementError):
        sign_announcement(private_key=make_key(1), **fields)


def test_announcement_size_limit_follows_caller():
    data = sign_announcement(release_id=RELEASE_ID, sequence=1, size_bytes=5000, private_key=make_key(1))
    with pytest.raises(AnnouncementError):
        decode_announcement(data, max_release_bytes=4096)
    assert isinstance(decode_announcement(data, max_release_bytes=5000), Announcement)


# Topics and configuration -----------------------------------------------------


def test_topic_name_from_network_and_fingerprint():
    fingerprint = "0123456789abcdef" * 4
    assert announcement_topic("adult-test", fingerprint) == "/p2psynth/adult-test/0123456789abcdef/announce/1"


@pytest.mark.parametrize(
    ("network_id", "fingerprint"),
    [("", "ab" * 32), ("has space", "ab" * 32), ("a/b", "ab" * 32), ("ok", "ABCDEF0123456789"), ("ok", "abc")],
)
def test_topic_invalid_parts_rejected(network_id, fingerprint):
    with pytest.raises(NetworkError):
        announcement_topic(network_id, fingerprint)


def test_gossip_config_degrees_checked():
    with pytest.raises(NetworkError):
        GossipConfig(mesh_degree=3, mesh_degree_low=4)


def test_sync_limits_must_be_positive():
    with pytest.raises(NetworkError):
        SyncLimits(read_timeout_s=0)


# Identity ----------------------------------------------------------------------


def test_peer_id_round_trips_public_key():
    key = make_key(3)
    peer_id = libp2p_key_pair(key)
    derived = peer_id_from_public_key(public_bytes(key))
    assert public_key_from_peer_id(derived) == public_bytes(key)
    assert public_key_from_peer_id(str(derived)) == public_bytes(key)
    assert peer_id.public_key.to_bytes() == public_bytes(key)


@pytest.mark.parametrize("text", ["", "not-a-peer-id", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"])
def test_public_key_from_invalid_peer_id(text):
    with pytest.raises(NetworkError):
        public_key_from_peer_id(text)


def test_peer_id_from_short_key_rejected():
    with pytest.raises(NetworkError):
        peer_id_from_public_key(b"\x01" * 31)


def test_address_without_peer_id_rejected():
    with pytest.raises(NetworkError) as caught:
        peer_info_from_address("/ip4/127.0.0.1/tcp/4001")
    assert "/p2p/" in str(caught.value)


def test_security_options_must_be_noise_only():
    with pytest.raises(NetworkError):
        check_security_options({})
    with pytest.raises(NetworkError):
        check_security_options({"/noise": object(), "/plaintext/2.0.0": object()})
    check_security_options({"/noise": object()})


def test_backoff_doubles_with_cap_and_jitter():
    delays = backoff_delays_s(attempts=6, initial_delay_s=0.5, max_delay_s=3.0, rng=random.Random(1))
    assert len(delays) == 5
    bases = [0.5, 1.0, 2.0, 3.0, 3.0]
    for delay, base in zip(delays, bases):
        assert 0.8 * base <= delay <= 1.2 * base


# Sync wire format ---------------------------------------------------------------


def decode(body: bytes):
    return decode_request(body, max_ids=64, max_authors=16)


def test_requests_round_trip():
    author = public_bytes(make_key(1))
    have = HaveRequest({author: 3})
    get_after = GetAfterRequest(author, 0, 16)
    get = GetRequest((RELEASE_ID,))
    assert decode(encode_request(have)) == have
    assert decode(encode_request(get_after)) == get_after
    assert decode(encode_request(get)) == get


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"t": "dance"}, "unknown_type"),
        ({"t": "have", "latest": {b"short": 1}}, "bad_request"),
        ({"t": "have", "latest": {RELEASE_ID: 0}}, "bad_request"),
        ({"t": "have", "latest": {RELEASE_ID: 1}, "extra": 1}, "bad_request"),
        ({"t": "get_after", "author": RELEASE_ID, "after": -1, "limit": 1}, "bad_request"),
        ({"t": "get_after", "author": RELEASE_ID, "after": 0, "limit": 0}, "bad_request"),
        ({"t": "get_after", "author": RELEASE_ID, "after": 0.5, "limit": 1}, "bad_request"),
        ({"t": "get", "ids": []}, "bad_request"),
        ({"t": "get", "ids": [RELEASE_ID] * 65}, "malformed"),  # over the unpacker's array limit
    ],
)
def test_invalid_requests_rejected(message, reason):
    with pytest.raises(SyncProtocolError) as caught:
        decode(msgpack.packb(message, use_bin_type=True))
    assert caught.value.reason == reason


@pytest.mark.parametrize("body", [b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({1: 2}), msgpack.packb({"t": "get"}) + b"x"])
def test_malformed_frames_rejected(body):
    with pytest.raises(SyncProtocolError) as caught:
        decode(body)
    assert caught.value.reason == "malformed"


def test_too_many_authors_rejected():
    latest = {bytes([i]) * 32: 1 for i in range(17)}
    with pytest.raises(SyncProtocolError):
        decode(encode_request(HaveRequest(latest)))


def test_responses_round_trip():
    author = public_bytes(make_key(1))
    assert decode_have_response(encode_have_response({author: 2}), max_authors=4) == {author: 2}
    response = decode_releases_response(
        encode_releases_response([b"one", b"two"], more=True), max_releases=2, max_release_bytes=10
    )
    assert response.releases == (b"one", b"two")
    assert response.more is True


def test_error_response_raises_rejected():
    with pytest.raises(SyncProtocolError) as caught:
        decode_have_response(encode_error_response("busy"), max_authors=4)
    assert caught.value.reason == "rejected"


def test_response_limits_enforced():
    with pytest.raises(SyncProtocolError):
        decode_releases_response(encode_releases_response([b"a", b"b", b"c"], more=False), max_releases=2, max_release_bytes=10)
    with pytest.raises(SyncProtocolError):
        decode_releases_response(encode_releases_response([b"x" * 11], more=False), max_releases=2, max_release_bytes=10)


# Anti-entropy planning -------------------------------------------------------------


def test_plan_pulls_lists_authors_behind_largest_gap_first():
    a, b, c, d = (bytes([i]) * 32 for i in range(1, 5))
    local = {a: 5, b: 1, c: 9}
    remote = {a: 5, b: 4, c: 2, d: 7}
    assert plan_pulls(local, remote) == [PullPlan(d, 0, 7), PullPlan(b, 1, 4)]


def test_plan_pulls_skips_non_members():
    a, b = bytes([1]) * 32, bytes([2]) * 32
    assert plan_pulls({}, {a: 1, b: 1}, is_member=lambda author: author == b) == [PullPlan(b, 0, 1)]


def test_plan_pulls_nothing_when_even():
    a = bytes([1]) * 32
    assert plan_pulls({a: 3}, {a: 3}) == []


# Statistics -------------------------------------------------------------------------


def test_statistics_log_once_per_interval(caplog):
    now = [100.0]
    statistics = NetworkStatistics(log_interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="p2psynth.network.stats"):
        for _ in range(50):
            statistics.count_error("peer-a", "inbound:malformed")
        now[0] += 61
        statistics.count_error("peer-a", "inbound:malformed")
    assert statistics.total.errors["inbound:malformed"] == 51
    assert statistics.peer("peer-a").errors["inbound:malformed"] == 51
    assert len(caplog.records) == 2


def test_statistics_bound_tracked_peers():
    statistics = NetworkStatistics(max_tracked_peers=3)
    for index in range(10):
        statistics.count_received(f"peer-{index}", 100)
    assert len(statistics.peers) == 4
    assert statistics.peers[OTHER_PEERS].frames_received == 7
    assert statistics.total.bytes_received == 1000


# In-memory releases ------------------------------------------------------------------


def describe_test_release(data: bytes) -> tuple[bytes, int]:
    author, sequence, _payload = msgpack.unpackb(data)
    return author, sequence


def test_memory_releases_serve_in_order():
    store = MemoryReleases(describe=describe_test_release)
    author = public_bytes(make_key(1))
    bodies = [msgpack.packb([author, sequence, b"x"]) for sequence in (3, 1, 2)]
    assert [store.accept(body) for body in bodies] == [ReleaseVerdict.ACCEPTED] * 3
    assert store.accept(bodies[0]) is ReleaseVerdict.DUPLICATE
    assert store.accept(b"garbage") is ReleaseVerdict.REJECTED
    assert store.accept(msgpack.packb([author, 2, b"other body"])) is ReleaseVerdict.REJECTED
    assert store.latest_sequences() == {author: 3}
    assert store.releases_after(author, 1, limit=5) == [bodies[2], bodies[0]]
    assert store.get_release(content_id(bodies[1])) == bodies[1]


def test_content_id_matches_release_id():
    from releasefactory import make_release

    from p2psynth.release import release_id

    data, _ = make_release()
    assert content_id(data) == release_id(data)
