"""The node's SQLite store: releases (own and received), the budget ledger, peers.

One file per node, opened in WAL mode with ``synchronous=FULL`` so that a
committed transaction is on disk before ``commit`` returns, and a SIGKILL or
power loss at any moment leaves a readable file holding every committed row.
The ledger tables live in the same file as the releases so that a release and
its budget debit are written by one transaction: either both exist or neither.

SQLite through the standard library was chosen over a separate key-value
store because the data is small (megabytes), the access pattern is a handful
of indexed lookups, and one well-tested file format keeps backups simple.

The store never decides whether a release is valid; callers (the ledger for
own releases, the node's validation for received ones) do that first.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from p2psynth.errors import LedgerError, StoreError
from p2psynth.release import Release, decode_release, release_id

log = logging.getLogger(__name__)

STORE_FORMAT = "p2psynth-store/1"

# Statements are split on ";", so the comments below must not contain one.
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Every release this node holds, own and received, as the exact signed bytes.
-- There is no uniqueness on (author, sequence) because two releases with one
-- sequence are equivocation, kept as evidence.
CREATE TABLE IF NOT EXISTS releases (
    release_id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    sequence INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    schema_fingerprint TEXT NOT NULL,
    rho REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    own INTEGER NOT NULL,
    source_peer TEXT,
    stored_at_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_by_author ON releases (author, sequence);
-- Authors caught equivocating. Their releases are kept but not used.
CREATE TABLE IF NOT EXISTS flagged_authors (
    author BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    flagged_at_ms INTEGER NOT NULL
);
-- One row per own release, written in the same transaction as the release.
-- chain_hash links each entry to the previous one so that a deleted or edited
-- row is detected.
CREATE TABLE IF NOT EXISTS ledger (
    entry INTEGER PRIMARY KEY,
    sequence INTEGER NOT NULL UNIQUE,
    release_id BLOB NOT NULL UNIQUE,
    rho REAL NOT NULL,
    created_at_ms INTEGER NOT NULL,
    chain_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StoredRelease:
    """A release row: its id, the signed bytes and the indexed fields."""

    release_id: bytes
    author: bytes
    sequence: int
    epoch: int
    own: bool
    data: bytes


class Store:
    """A node's SQLite file. Not thread-safe: open one Store per thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self.path = path

    # Opening ---------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, node_public_key: bytes) -> "Store":
        """Create a new store file; raise StoreError if one exists already."""
        path = Path(path)
        if path.exists():
            raise StoreError(
                f"store {path} exists already; a node's store contains its budget ledger "
                "and must never be replaced. Use another folder for a new node."
            )
        store = cls._connect(path)
        with store.transaction():
            for statement in _TABLES.split(";"):
                if statement.strip():
                    store._connection.execute(statement)
            store._connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format", STORE_FORMAT),
                    ("node_public_key", node_public_key.hex()),
                    ("created_at_ms", str(_now_ms())),
                ],
            )
        return store

    @classmethod
    def open(cls, path: Path, *, node_public_key: bytes | None = None) -> "Store":
        """Open an existing store; raise LedgerError if it is missing or unreadable.

        A missing store is a ledger error, not something to recreate: a fresh
        ledger would report zero budget spent for a node that may have published.
        """
        path = Path(path)
        if not path.is_file():
            raise LedgerError(
                f"store {path} (which contains the budget ledger) is missing. Restore it from a "
                "backup; creating a new one would forget the budget already spent. "
                "A new node is created with 'p2psynth init'."
            )
        store = cls._connect(path)
        try:
            meta = dict(store._connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            store.close()
            raise LedgerError(f"store {path} is unreadable ({exc}); restore it from a backup") from exc
        if meta.get("format") != STORE_FORMAT:
            store.close()
            raise LedgerError(
                f"store {path} has format {meta.get('format')!r}, expected {STORE_FORMAT!r}"
            )
        if node_public_key is not None and meta.get("node_public_key") != node_public_key.hex():
            store.close()
            raise LedgerError(
                f"store {path} belongs to another node key; its ledger cannot be used with this key. "
                "Check key_file and store_file in node.toml."
            )
        return store

    @classmethod
    def _connect(cls, path: Path) -> "Store":
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE).
            connection = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"store {path} is unreadable ({exc}); restore it from a backup") from exc
        return cls(connection, path)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a write transaction; it is on disk when the block exits without error."""
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot start a transaction on {self.path}: {exc}") from exc
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        else:
            self._connection.execute("COMMIT")

    @property
    def connection(self) -> sqlite3.Connection:
        return self._connection

    # Releases --------------------------------------------------------------

    def insert_release(
        self, data: bytes, release: Release, *, own: bool, source_peer: str | None = None
    ) -> bool:
        """Insert a release row inside the caller's transaction; return False if already stored."""
        rid = release_id(data)
        cursor = self._connection.execute(
            "INSERT OR IGNORE INTO releases (release_id, author, sequence, epoch, schema_fingerprint,"
            " rho, size_bytes, own, source_peer, stored_at_ms, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                release.author,
                release.sequence,
                release.epoch,
                release.schema_fingerprint,
                release.rho,
                len(data),
                int(own),
                source_peer,
                _now_ms(),
                data,
            ),
        )
        return cursor.rowcount == 1

    def add_release(
        self, data: bytes, release: Release, *, own: bool = False, source_peer: str | None = None
    ) -> bool:
        """Store a validated release in its own transaction; return True if it was new."""
        with self.transaction():
            return self.insert_release(data, release, own=own, source_peer=source_peer)

    def get_release(self, rid: bytes) -> bytes | None:
        row = self._connection.execute("SELECT data FROM releases WHERE release_id = ?", (rid,)).fetchone()
        return None if row is None else bytes(row[0])

    def has_release(self, rid: bytes) -> bool:
        row = self._connection.execute("SELECT 1 FROM releases WHERE release_id = ?", (rid,)).fetchone()
        return row is not None

    def releases_of(self, author: bytes) -> list[StoredRelease]:
        rows = self._connection.execute(
            "SELECT release_id, author, sequence, epoch, own, data FROM releases"
            " WHERE author = ? ORDER BY sequence, release_id",
            (author,),
        ).fetchall()
        return [_stored(row) for row in rows]

    def releases_at(self, author: bytes, sequence: int) -> list[StoredRelease]:
        rows = self._connection.execute(
            "SELECT release_id, author, sequence, epoch, own, data FROM releases"
            " WHERE author = ? AND sequence = ? ORDER BY release_id",
            (author, sequence),
        ).fetchall()
        return [_stored(row) for row in rows]

    def latest_sequences(self) -> dict[bytes, int]:
        """Return the highest stored sequence per author."""
        rows = self._connection.execute("SELECT author, MAX(sequence) FROM releases GROUP BY author")
        return {bytes(author): int(sequence) for author, sequence in rows}

    def releases_after(self, author: bytes, sequence: int, *, limit: int) -> list[bytes]:
        """Return up to ``limit`` releases of ``author`` with a higher sequence, in order."""
        rows = self._connection.execute(
            "SELECT data FROM releases WHERE author = ? AND sequence > ?"
            " ORDER BY sequence, release_id LIMIT ?",
            (author, sequence, int(limit)),
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def release_index(self, author: bytes, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Return up to ``limit`` (sequence, release id) pairs of ``author`` above ``after``, ascending.

        The sync protocol compares these lists between peers to find releases
        missing in the middle of an author's history. The release bytes are not read.
        """
        rows = self._connection.execute(
            "SELECT sequence, release_id FROM releases WHERE author = ? AND sequence > ?"
            " ORDER BY sequence, release_id LIMIT ?",
            (author, after, int(limit)),
        ).fetchall()
        return [(int(sequence), bytes(rid)) for sequence, rid in rows]

    def own_releases(self) -> list[StoredRelease]:
        rows = self._connection.execute(
            "SELECT release_id, author, sequence, epoch, own, data FROM releases"
            " WHERE own = 1 ORDER BY sequence"
        ).fetchall()
        return [_stored(row) for row in rows]

    def current_releases(self) -> list[StoredRelease]:
        """Return the releases the global model uses: every author's highest epoch.

        Authors flagged for equivocation are left out entirely.
        """
        rows = self._connection.execute(
            "SELECT r.release_id, r.author, r.sequence, r.epoch, r.own, r.data FROM releases r"
            " JOIN (SELECT author, MAX(epoch) AS epoch FROM releases GROUP BY author) latest"
            "   ON r.author = latest.author AND r.epoch = latest.epoch"
            " WHERE r.author NOT IN (SELECT author FROM flagged_authors)"
            " ORDER BY r.author, r.sequence, r.release_id"
        ).fetchall()
        return [_stored(row) for row in rows]

    def current_release_keys(self) -> list[tuple[bytes, bytes]]:
        """Return (release id, author) of ``current_releases()`` without reading the release bytes."""
        rows = self._connection.execute(
            "SELECT r.release_id, r.author FROM releases r"
            " JOIN (SELECT author, MAX(epoch) AS epoch FROM releases GROUP BY author) latest"
            "   ON r.author = latest.author AND r.epoch = latest.epoch"
            " WHERE r.author NOT IN (SELECT author FROM flagged_authors)"
            " ORDER BY r.author, r.sequence, r.release_id"
        ).fetchall()
        return [(bytes(rid), bytes(author)) for rid, author in rows]

    def max_own_epoch(self) -> int:
        """Return the highest epoch among own releases, 0 when there are none."""
        row = self._connection.execute("SELECT MAX(epoch) FROM releases WHERE own = 1").fetchone()
        return int(row[0] or 0)

    def count_releases(self) -> int:
        return int(self._connection.execute("SELECT COUNT(*) FROM releases").fetchone()[0])

    # Equivocation ----------------------------------------------------------

    def flag_author(self, author: bytes, reason: str) -> None:
        with self.transaction():
            self._connection.execute(
                "INSERT OR IGNORE INTO flagged_authors (author, reason, flagged_at_ms) VALUES (?, ?, ?)",
                (author, reason, _now_ms()),
            )

    def flagged_authors(self) -> dict[bytes, str]:
        rows = self._connection.execute("SELECT author, reason FROM flagged_authors")
        return {bytes(author): reason for author, reason in rows}

    # Peers -----------------------------------------------------------------

    def remember_peer(self, peer_id: str, addresses: list[str]) -> None:
        with self.transaction():
            self._connection.execute(
                "INSERT INTO peers (peer_id, addresses, last_seen_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET addresses = excluded.addresses,"
                " last_seen_ms = excluded.last_seen_ms",
                (peer_id, "\n".join(addresses), _now_ms()),
            )

    def known_peers(self) -> dict[str, list[str]]:
        rows = self._connection.execute("SELECT peer_id, addresses FROM peers ORDER BY peer_id")
        return {peer_id: [a for a in addresses.split("\n") if a] for peer_id, addresses in rows}

    # Meta ------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


def load_release_row(stored: StoredRelease) -> Release:
    """Decode a stored release; the store only holds bytes that decoded before."""
    return decode_release(stored.data)


def _stored(row: tuple) -> StoredRelease:
    rid, author, sequence, epoch, own, data = row
    return StoredRelease(bytes(rid), bytes(author), int(sequence), int(epoch), bool(own), bytes(data))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
