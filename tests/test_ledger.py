"""Budget ledger and store: debits, limits, restarts and detected tampering."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from p2psynth.accounting import rho_from_epsilon
from p2psynth.domain import Measurement
from p2psynth.errors import BudgetExceededError, LedgerError
from p2psynth.ledger import BudgetLedger
from p2psynth.release import decode_release, release_id
from p2psynth.store import Store
from releasefactory import FINGERPRINT, fixed_key, make_release

DELTA = 1e-9


def _measurements(sigma: float = 50.0) -> list[Measurement]:
    return [Measurement(("age",), np.arange(4, dtype=np.int64), sigma)]


@pytest.fixture
def key():
    return fixed_key(3)


@pytest.fixture
def store_path(tmp_path, key):
    path = tmp_path / "store.sqlite"
    Store.create(path, node_public_key=key.public_key().public_bytes_raw()).close()
    return path


def _ledger(store_path, key, epsilon=3.0):
    store = Store.open(store_path, node_public_key=key.public_key().public_bytes_raw())
    return store, BudgetLedger(store, node_key=key, epsilon=epsilon, delta=DELTA)


def _publish(ledger, rho):
    return ledger.publish(schema_fingerprint=FINGERPRINT, measurements=_measurements(), rho=rho, epoch=1)


def test_publish_debits_and_stores(store_path, key):
    store, ledger = _ledger(store_path, key)
    data, release = _publish(ledger, 0.01)

    status = ledger.status()
    assert status.releases == 1
    assert status.rho_spent == pytest.approx(0.01)
    assert store.get_release(release_id(data)) == data
    assert decode_release(data).sequence == 1
    store.close()


def test_sequences_increase(store_path, key):
    store, ledger = _ledger(store_path, key)
    sequences = [_publish(ledger, 0.001)[1].sequence for _ in range(3)]
    assert sequences == [1, 2, 3]
    store.close()


def test_restart_keeps_spent_total(store_path, key):
    store, ledger = _ledger(store_path, key)
    _publish(ledger, 0.02)
    _publish(ledger, 0.03)
    store.close()

    store, ledger = _ledger(store_path, key)
    assert ledger.status().rho_spent == pytest.approx(0.05)
    assert ledger.status().releases == 2
    store.close()


def test_budget_exhaustion_message(store_path, key):
    store, ledger = _ledger(store_path, key, epsilon=1.0)
    limit = rho_from_epsilon(1.0, DELTA)
    _publish(ledger, limit * 0.6)

    with pytest.raises(BudgetExceededError) as caught:
        _publish(ledger, limit * 0.6)
    message = str(caught.value)
    assert "spent epsilon" in message
    assert "remaining epsilon" in message
    assert "requests epsilon" in message
    assert ledger.status().releases == 1  # the rejected release left no trace
    store.close()


def test_missing_store_is_ledger_error(tmp_path, key):
    with pytest.raises(LedgerError, match="missing"):
        Store.open(tmp_path / "absent.sqlite")


def test_unreadable_store_is_ledger_error(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="unreadable"):
        Store.open(path)


def test_store_of_other_key_rejected(store_path):
    with pytest.raises(LedgerError, match="another node key"):
        Store.open(store_path, node_public_key=fixed_key(8).public_key().public_bytes_raw())


def test_create_never_overwrites(store_path, key):
    from p2psynth.errors import StoreError

    with pytest.raises(StoreError, match="exists already"):
        Store.create(store_path, node_public_key=key.public_key().public_bytes_raw())


def _tamper(store_path, statement, parameters=()):
    connection = sqlite3.connect(store_path)
    connection.execute(statement, parameters)
    connection.commit()
    connection.close()


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM ledger WHERE entry = 1",
        "DELETE FROM ledger WHERE entry = 2",
        "UPDATE ledger SET rho = rho / 10 WHERE entry = 1",
        "DELETE FROM releases WHERE own = 1 AND sequence = 1",
    ],
)
def test_tampered_ledger_stops_publishing(store_path, key, statement):
    store, ledger = _ledger(store_path, key)
    _publish(ledger, 0.01)
    _publish(ledger, 0.01)
    store.close()

    _tamper(store_path, statement)
    store, ledger = _ledger(store_path, key)
    with pytest.raises(LedgerError, match="inconsistent"):
        ledger.status()
    with pytest.raises(LedgerError, match="inconsistent"):
        _publish(ledger, 0.01)
    store.close()


def test_own_release_without_debit_stops_publishing(store_path, key):
    """A release signed with this key but absent from the ledger (restored old backup)."""
    store, ledger = _ledger(store_path, key)
    data, release = make_release(key, sequence=7)
    store.add_release(data, release, own=False, source_peer="peer-x")

    with pytest.raises(LedgerError, match="no debit"):
        ledger.status()
    store.close()


def test_equivocation_evidence_kept(store_path, key):
    store, _ = _ledger(store_path, key)
    other = fixed_key(5)
    first, first_release = make_release(other, sequence=2, seed=1)
    second, second_release = make_release(other, sequence=2, seed=2)
    assert store.add_release(first, first_release)
    assert store.add_release(second, second_release)
    assert not store.add_release(first, first_release)  # duplicate bytes

    assert len(store.releases_at(first_release.author, 2)) == 2
    store.flag_author(first_release.author, "equivocation")
    assert store.current_releases() == []
    store.close()


def test_current_releases_use_latest_epoch(store_path, key):
    store, _ = _ledger(store_path, key)
    other = fixed_key(6)
    for sequence, epoch in [(1, 1), (2, 1), (3, 2), (4, 2)]:
        data, release = make_release(other, sequence=sequence, epoch=epoch, seed=sequence)
        store.add_release(data, release)

    current = store.current_releases()
    assert [row.sequence for row in current] == [3, 4]
    assert store.latest_sequences() == {other.public_key().public_bytes_raw(): 4}
    assert len(store.releases_after(other.public_key().public_bytes_raw(), 1, limit=2)) == 2
    store.close()


def test_store_survives_reopen_in_wal_mode(store_path, key):
    store, ledger = _ledger(store_path, key)
    _publish(ledger, 0.01)
    mode = store.connection.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = store.connection.execute("PRAGMA synchronous").fetchone()[0]
    store.close()
    assert mode == "wal"
    assert synchronous == 2  # FULL
    assert os.path.getsize(store_path) > 0
