"""Validation of received releases: every rejection reason, and what gets stored."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ConfigError
from p2psynth.members import Member, Members, load_members
from p2psynth.release import SIGNATURE_CONTEXT, Release, encode_release
from p2psynth.store import Store
from p2psynth.validation import ReleaseValidator, plausibility_problem
from releasefactory import FINGERPRINT, fixed_key

DOMAIN = Domain(("age", "sex"), (4, 2))
OWN = fixed_key(1)
MEMBER = fixed_key(2)
STRANGER = fixed_key(3)


def _release(key, *, sequence=1, counts=None, pair=None, sigma=3.0, fingerprint=FINGERPRINT, epoch=1):
    counts = np.array([100, 200, 300, 400], dtype=np.int64) if counts is None else counts
    pair = np.array([[50, 50], [100, 100], [150, 150], [200, 200]], dtype=np.int64) if pair is None else pair
    measurements = (Measurement(("age",), counts, sigma), Measurement(("age", "sex"), pair, sigma))
    release = Release(
        schema_fingerprint=fingerprint,
        author=key.public_key().public_bytes_raw(),
        sequence=sequence,
        epoch=epoch,
        created_at_ms=1,
        rho=2 / (2 * sigma**2),
        measurements=measurements,
    )
    return encode_release(release, key), release


@pytest.fixture
def validator(tmp_path):
    store = Store.create(tmp_path / "store.sqlite", node_public_key=OWN.public_key().public_bytes_raw())
    members = Members({
        k.public_key().public_bytes_raw(): Member(name, k.public_key().public_bytes_raw(), max_rows)
        for name, k, max_rows in (("own", OWN, None), ("member", MEMBER, 5000))
    })
    yield ReleaseValidator(
        store=store, members=members, schema_fingerprint=FINGERPRINT, domain=DOMAIN,
        own_author=OWN.public_key().public_bytes_raw(),
    )
    store.close()


def test_valid_release_stored(validator):
    data, _ = _release(MEMBER)
    outcome = validator.accept(data, from_peer="peer-a")
    assert outcome.accepted
    assert validator._store.count_releases() == 1


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: _release(STRANGER)[0], "non_member"),
        (lambda: _release(MEMBER, fingerprint="cd" * 32)[0], "wrong_schema"),
        (lambda: b"\x00garbage", "malformed"),
        (lambda: _release(MEMBER)[0][:-10], "malformed"),
        (lambda: b"\x00" * (17 * 1024 * 1024), "oversize"),
        (lambda: _release(MEMBER, counts=np.array([100, 200, 300, 400, 5], dtype=np.int64))[0], "domain_mismatch"),
        (lambda: _release(MEMBER, counts=np.array([10_000, 200, 300, 400], dtype=np.int64))[0], "implausible"),
        (lambda: _release(MEMBER, counts=np.array([-5000, 200, 300, 400], dtype=np.int64))[0], "implausible"),
        (lambda: _release(
            MEMBER,
            counts=np.array([1000, 2000, 3000, 4000], dtype=np.int64),
            pair=np.array([[500, 500], [1000, 1000], [1500, 1500], [2000, 2000]], dtype=np.int64),
        )[0], "implausible"),
    ],
)
def test_rejection_reasons(validator, build, reason):
    outcome = validator.accept(build(), from_peer="peer-x")
    assert not outcome.accepted
    assert outcome.reason == reason
    assert validator.rejections.by_reason[reason] == 1
    assert validator.rejections.by_peer[("peer-x", reason)] == 1
    assert validator._store.count_releases() == 0


def test_forged_signature_rejected(validator):
    data, _ = _release(MEMBER)
    version, body, _signature = msgpack.unpackb(data)
    forged = msgpack.packb([version, body, STRANGER.sign(SIGNATURE_CONTEXT + body)], use_bin_type=True)
    outcome = validator.accept(forged, from_peer="peer-f")
    assert outcome.reason == "bad_signature"


def test_replay_counted_not_stored_twice(validator):
    data, _ = _release(MEMBER)
    assert validator.accept(data, from_peer="a").accepted
    outcome = validator.accept(data, from_peer="b")
    assert outcome.reason == "replay"
    assert validator._store.count_releases() == 1


def test_equivocation_flags_author(validator):
    first, _ = _release(MEMBER, sequence=1)
    second, _ = _release(MEMBER, sequence=1, counts=np.array([101, 199, 300, 400], dtype=np.int64))
    assert validator.accept(first, from_peer="a").accepted
    outcome = validator.accept(second, from_peer="a")
    assert outcome.reason == "equivocation"

    store = validator._store
    assert store.count_releases() == 2  # both kept as evidence
    assert MEMBER.public_key().public_bytes_raw() in store.flagged_authors()
    assert store.current_releases() == []


def test_out_of_order_history_accepted(validator):
    later, _ = _release(MEMBER, sequence=2)
    earlier, _ = _release(MEMBER, sequence=1, counts=np.array([101, 199, 300, 400], dtype=np.int64))
    assert validator.accept(later, from_peer="a").accepted
    assert validator.accept(earlier, from_peer="a").accepted
    assert len(validator._store.current_releases()) == 2


def test_own_release_unknown_to_store_stops_ledger(validator):
    from p2psynth.errors import LedgerError
    from p2psynth.ledger import BudgetLedger

    data, _ = _release(OWN, sequence=3)
    outcome = validator.accept(data, from_peer="a")
    assert outcome.reason == "own_key_unknown"
    ledger = BudgetLedger(validator._store, node_key=OWN, epsilon=1.0, delta=1e-9)
    with pytest.raises(LedgerError, match="no debit"):
        ledger.status()


def test_honest_noisy_release_is_plausible():
    generator = np.random.default_rng(5)
    sigma = 40.0
    truth = generator.multinomial(2000, np.full(60, 1 / 60)).reshape(12, 5)
    noisy = truth + np.rint(generator.normal(0, sigma, truth.shape)).astype(np.int64)
    one_way = truth.sum(axis=1) + np.rint(generator.normal(0, sigma, 12)).astype(np.int64)
    release = Release(FINGERPRINT, b"\x01" * 32, 1, 1, 0, 1.0, (
        Measurement(("a",), one_way, sigma), Measurement(("a", "b"), noisy, sigma)))
    assert plausibility_problem(release) is None
    assert plausibility_problem(release, max_rows=1000) is not None


def test_members_file_errors(tmp_path):
    path = tmp_path / "members.toml"
    key = "ab" * 32
    cases = {
        "": "no \\[\\[member\\]\\]",
        f'[[member]]\nname = "a"\npublic_key = "{key[:-2]}"\n': "64 hex",
        f'[[member]]\nname = "a"\npublic_key = "{key}"\n[[member]]\nname = "b"\npublic_key = "{key}"\n': "repeats",
        f'[[member]]\nname = "a"\npublic_key = "{key}"\nmax_rows = 0\n': "max_rows",
        f'[[member]]\nname = "a"\npublic_key = "{key}"\nrole = "x"\n': "unknown key",
        "[[member]\n": "not valid TOML",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_members(path)
    with pytest.raises(ConfigError, match="not found"):
        load_members(tmp_path / "absent.toml")


def test_signed_rejections_remembered(validator):
    implausible, _ = _release(MEMBER, sequence=4, counts=np.array([10_000, 200, 300, 400], dtype=np.int64))
    assert validator.accept(implausible, from_peer="a").reason == "implausible"
    assert validator.rejected_sequences == {MEMBER.public_key().public_bytes_raw(): 4}


def test_unsigned_rejections_not_remembered(validator):
    data, _ = _release(MEMBER, sequence=6)
    version, body, _signature = msgpack.unpackb(data)
    forged = msgpack.packb([version, body, STRANGER.sign(SIGNATURE_CONTEXT + body)], use_bin_type=True)
    assert validator.accept(forged, from_peer="a").reason == "bad_signature"
    assert validator.rejected_sequences == {}
