"""Model keeper debounce: a longer quiet period while members are missing or mid-epoch."""

from __future__ import annotations

from p2psynth.domain import Domain
from p2psynth.modelkeeper import ModelKeeper
from p2psynth.store import Store

from releasefactory import FINGERPRINT, fixed_key, make_release


def _keeper(tmp_path, members, *, releases_per_epoch):
    store = Store.create(tmp_path / "store.sqlite", node_public_key=fixed_key(9).public_key().public_bytes_raw())
    keeper = ModelKeeper(
        store=store,
        domain=Domain(("age", "sex"), (4, 2)),
        schema_fingerprint=FINGERPRINT,
        models_dir=tmp_path / "models",
        debounce_s=0.5,
        incomplete_debounce_s=3.0,
        members=lambda: members,
        releases_per_epoch=releases_per_epoch,
    )
    return store, keeper


def _publish(store, key, sequences):
    for sequence in sequences:
        data, release = make_release(key, sequence=sequence, epoch=1, seed=sequence)
        store.add_release(data, release)


def test_quiet_period_while_mid_epoch(tmp_path):
    first, second = fixed_key(1), fixed_key(2)
    members = {k.public_key().public_bytes_raw() for k in (first, second)}
    store, keeper = _keeper(tmp_path, members, releases_per_epoch=3)

    _publish(store, first, [1, 2, 3])
    assert keeper._quiet_period_s() == 3.0  # the second member has no release

    _publish(store, second, [1])
    assert keeper._quiet_period_s() == 3.0  # the second member is in round 1 of its epoch

    _publish(store, second, [2, 3])
    assert keeper._quiet_period_s() == 0.5
    store.close()


def test_quiet_period_one_release_per_epoch(tmp_path):
    first, second = fixed_key(1), fixed_key(2)
    members = {k.public_key().public_bytes_raw() for k in (first, second)}
    store, keeper = _keeper(tmp_path, members, releases_per_epoch=1)

    _publish(store, first, [1])
    assert keeper._quiet_period_s() == 3.0

    _publish(store, second, [1])
    assert keeper._quiet_period_s() == 0.5
    store.close()
