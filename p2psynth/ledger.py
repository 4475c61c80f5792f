"""The privacy budget ledger: every own release is paid for before it exists.

The privacy promise of a node is a lifetime budget (epsilon, delta). Releases
compose under zero-concentrated DP, so the ledger adds up rho and converts the
total to epsilon only for display and for the limit check. Rules:

- A release is signed, debited and stored in one SQLite transaction, committed
  with ``synchronous=FULL``. Only after the commit may its bytes be written to
  a file or sent to a peer, so at every instant the ledger covers every
  release that exists outside this process's memory.
- A restart rebuilds the spent total from the ledger rows; nothing resets it.
- The ledger is checked before every debit. Rows form a hash chain; a missing,
  edited or reordered row, an own release without a row, or a row without its
  release makes the ledger inconsistent and stops publishing with LedgerError.
- A release authored by this node's key that the ledger does not cover (for
  example received back from peers after the store was restored from an old
  backup) also stops publishing: the true spending is unknown.
- Re-sending a release re-sends its stored bytes: noise is never drawn again
  for a release that exists, because peers could average fresh draws away.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2psynth.accounting import epsilon_from_rho, rho_from_epsilon
from p2psynth.domain import Measurement
from p2psynth.errors import BudgetExceededError, LedgerError
from p2psynth.release import Release, encode_release, release_id
from p2psynth.store import Store

log = logging.getLogger(__name__)

_GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class BudgetStatus:
    """The budget as the ledger records it."""

    epsilon_limit: float
    delta: float
    rho_limit: float
    rho_spent: float
    releases: int

    @property
    def rho_remaining(self) -> float:
        return max(0.0, self.rho_limit - self.rho_spent)

    @property
    def epsilon_spent(self) -> float:
        return epsilon_from_rho(self.rho_spent, self.delta) if self.rho_spent > 0 else 0.0

    @property
    def epsilon_remaining(self) -> float:
        """Epsilon of the remaining rho spent on its own (zCDP does not subtract epsilons)."""
        return epsilon_from_rho(self.rho_remaining, self.delta) if self.rho_remaining > 0 else 0.0


class BudgetLedger:
    """Debits own releases against a lifetime (epsilon, delta) budget."""

    def __init__(self, store: Store, *, node_key: Ed25519PrivateKey, epsilon: float, delta: float) -> None:
        self._store = store
        self._key = node_key
        self._author = node_key.public_key().public_bytes_raw()
        self.epsilon_limit = float(epsilon)
        self.delta = float(delta)
        self.rho_limit = rho_from_epsilon(self.epsilon_limit, self.delta)

    # Reading ---------------------------------------------------------------

    def status(self) -> BudgetStatus:
        """Verify the ledger and return the budget it records."""
        return self._status_of(self._verified_rows())

    def _status_of(self, rows: list[tuple]) -> BudgetStatus:
        return BudgetStatus(
            epsilon_limit=self.epsilon_limit,
            delta=self.delta,
            rho_limit=self.rho_limit,
            rho_spent=sum(row[3] for row in rows),
            releases=len(rows),
        )

    def check_affordable(self, rho: float) -> BudgetStatus:
        """Raise BudgetExceededError unless ``rho`` more fits in the budget."""
        status = self.status()
        self._raise_if_over(status, rho)
        return status

    def _raise_if_over(self, status: BudgetStatus, rho: float) -> None:
        if status.rho_spent + rho > self.rho_limit * (1 + 1e-12):
            requested_epsilon = epsilon_from_rho(rho, self.delta)
            raise BudgetExceededError(
                f"privacy budget exhausted: spent epsilon {status.epsilon_spent:.4g} "
                f"(rho {status.rho_spent:.6g}) of the lifetime epsilon {self.epsilon_limit:g} "
                f"at delta {self.delta:g}; remaining epsilon {status.epsilon_remaining:.4g} "
                f"(rho {status.rho_remaining:.6g}); this release requests epsilon "
                f"{requested_epsilon:.4g} (rho {rho:.6g}). Request a smaller epsilon, or stop "
                "publishing: raising the lifetime budget weakens the promise made to data owners."
            )

    # Writing ---------------------------------------------------------------

    def publish(
        self,
        *,
        schema_fingerprint: str,
        measurements: list[Measurement],
        rho: float,
        epoch: int,
        basis: tuple[bytes, ...] = (),
        round: int = 0,
        grouping: tuple[tuple[str, tuple[int, ...]], ...] = (),
        created_at_ms: int | None = None,
    ) -> tuple[bytes, Release]:
        """Sign, debit and store a new own release in one transaction; return its bytes.

        The caller may write the bytes to a file or send them only after this
        returns: before that, they exist nowhere but in memory.
        """
        created_at_ms = time.time_ns() // 1_000_000 if created_at_ms is None else created_at_ms
        with self._store.transaction() as connection:
            rows = self._verified_rows()
            spent = sum(row[3] for row in rows)
            self._raise_if_over(self._status_of(rows), rho)

            sequence = self._next_sequence(rows)
            release = Release(
                schema_fingerprint=schema_fingerprint,
                author=self._author,
                sequence=sequence,
                epoch=epoch,
                created_at_ms=created_at_ms,
                rho=float(rho),
                measurements=tuple(measurements),
                basis=tuple(basis),
                round=round,
                grouping=tuple(grouping),
            )
            data = encode_release(release, self._key)
            rid = release_id(data)

            entry = len(rows) + 1
            previous = rows[-1][5] if rows else _GENESIS
            chain = _chain_hash(previous, entry, sequence, rid, float(rho), created_at_ms)
            connection.execute(
                "INSERT INTO ledger (entry, sequence, release_id, rho, created_at_ms, chain_hash)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry, sequence, rid, float(rho), created_at_ms, chain),
            )
            self._store.insert_release(data, release, own=True)

        log.info(
            "published release %s sequence %d: rho %.6g, total rho spent %.6g of %.6g",
            rid.hex()[:16], sequence, rho, spent + rho, self.rho_limit,
        )
        return data, release

    # Checks ----------------------------------------------------------------

    def _next_sequence(self, rows: list[tuple]) -> int:
        own_stored = self._store.latest_sequences().get(self._author, 0)
        ledger_max = max((row[1] for row in rows), default=0)
        return max(own_stored, ledger_max) + 1

    def _verified_rows(self) -> list[tuple]:
        """Return the ledger rows in order after checking the chain and the releases they cover."""
        connection = self._store.connection
        try:
            rows = connection.execute(
                "SELECT entry, sequence, release_id, rho, created_at_ms, chain_hash FROM ledger ORDER BY entry"
            ).fetchall()
            own = connection.execute(
                "SELECT release_id, sequence, rho FROM releases WHERE author = ?", (self._author,)
            ).fetchall()
        except Exception as exc:  # sqlite3.DatabaseError and friends
            raise LedgerError(
                f"ledger in {self._store.path} is unreadable ({exc}); publishing is stopped. "
                "Restore the store from a backup."
            ) from exc

        previous = _GENESIS
        for expected_entry, row in enumerate(rows, start=1):
            entry, sequence, rid, rho, created_at_ms, chain = row
            if entry != expected_entry:
                raise self._inconsistent(f"entry {expected_entry} is missing")
            if not (isinstance(rho, float) and rho > 0):
                raise self._inconsistent(f"entry {entry} has an invalid rho {rho!r}")
            if _chain_hash(previous, entry, sequence, bytes(rid), rho, created_at_ms) != bytes(chain):
                raise self._inconsistent(f"entry {entry} does not match its hash chain")
            previous = bytes(chain)

        ledger_by_id = {bytes(row[2]): row for row in rows}
        own_by_id = {bytes(rid): (sequence, rho) for rid, sequence, rho in own}
        for rid, (sequence, rho) in own_by_id.items():
            row = ledger_by_id.get(rid)
            if row is None:
                raise self._inconsistent(
                    f"release {rid.hex()[:16]} (sequence {sequence}) was signed with this node's key "
                    "but the ledger has no debit for it; the ledger may have been restored from an old backup"
                )
            if row[3] < rho * (1 - 1e-12):
                raise self._inconsistent(f"release {rid.hex()[:16]} spent more rho than its debit")
        for rid in ledger_by_id:
            if rid not in own_by_id:
                raise self._inconsistent(f"debited release {rid.hex()[:16]} is missing from the store")
        return rows

    def _inconsistent(self, detail: str) -> LedgerError:
        return LedgerError(
            f"ledger in {self._store.path} is inconsistent: {detail}. Publishing is stopped; "
            "restore the store from a backup that is newer than the last release."
        )


def _chain_hash(previous: bytes, entry: int, sequence: int, rid: bytes, rho: float, created_at_ms: int) -> bytes:
    payload = previous + struct.pack(">QQ", entry, sequence) + rid + struct.pack(">dQ", rho, created_at_ms)
    return hashlib.sha256(payload).digest()
