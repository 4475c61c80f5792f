"""An in-memory release collection for simulations, benchmarks and tests.

``MemoryReleases`` is both halves of what ``NetworkService`` needs from a
node: a ``ReleaseSource`` to serve peers from, and an ``accept`` method to pass
as ``accept_release``. A real node uses ``p2psynth.store.Store`` and its own
validation instead; this class keeps nothing on disk.

Only ``describe(data)`` reads the release format: it returns the author key
and sequence of release bytes and raises to reject them. The default,
``describe_release``, runs the strict decoder of ``p2psynth.release``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from p2psynth.network.sync import ReleaseVerdict, content_id
from p2psynth.release import decode_release

logger = logging.getLogger(__name__)

Describe = Callable[[bytes], "tuple[bytes, int]"]


def describe_release(data: bytes) -> tuple[bytes, int]:
    """Return (author, sequence) of release bytes; raise ReleaseFormatError if they are invalid."""
    release = decode_release(data)
    return release.author, release.sequence


class MemoryReleases:
    """Release bytes by id and by (author, sequence), with change notification."""

    def __init__(self, *, describe: Describe = describe_release) -> None:
        self._describe = describe
        # Release bytes by release id (SHA-256 of the bytes).
        self.by_id: dict[bytes, bytes] = {}
        # author -> sequence -> release bytes; the first body stored for a sequence wins.
        self._by_author: dict[bytes, dict[int, bytes]] = {}
        # author -> sequence -> release id, the same entries as _by_author.
        self._ids_by_author: dict[bytes, dict[int, bytes]] = {}
        # Set and replaced on every accepted release, so waiters can sleep until a change.
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, release_id: object) -> bool:
        return release_id in self.by_id

    def latest_sequences(self) -> dict[bytes, int]:
        return {author: max(by_sequence) for author, by_sequence in self._by_author.items()}

    def releases_after(self, author: bytes, sequence: int, *, limit: int) -> list[bytes]:
        by_sequence = self._by_author.get(author, {})
        return [by_sequence[s] for s in sorted(s for s in by_sequence if s > sequence)[:limit]]

    def get_release(self, release_id: bytes) -> bytes | None:
        return self.by_id.get(release_id)

    def release_index(self, author: bytes, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Return up to ``limit`` (sequence, release id) pairs of ``author`` above ``after``, ascending."""
        ids = self._ids_by_author.get(author, {})
        return [(s, ids[s]) for s in sorted(s for s in ids if s > after)[:limit]]

    def accept(self, data: bytes, *, from_peer: str = "") -> ReleaseVerdict:
        """Store release bytes if ``describe`` accepts them; usable as ``accept_release``."""
        release_id = content_id(data)
        if release_id in self.by_id:
            return ReleaseVerdict.DUPLICATE
        try:
            author, sequence = self._describe(data)
        except Exception as exc:  # describe raises whatever its format raises
            logger.debug("rejected release %s from %s: %s", release_id.hex()[:16], from_peer or "local", exc)
            return ReleaseVerdict.REJECTED
        by_sequence = self._by_author.setdefault(author, {})
        if sequence in by_sequence:
            return ReleaseVerdict.REJECTED  # a second body for one sequence: equivocation
        by_sequence[sequence] = data
        self._ids_by_author.setdefault(author, {})[sequence] = release_id
        self.by_id[release_id] = data
        self._changed.set()
        self._changed = trio.Event()
        return ReleaseVerdict.ACCEPTED

    async def wait_for(self, condition: Callable[["MemoryReleases"], bool]) -> None:
        """Sleep until ``condition(self)`` holds; the caller bounds the wait with a cancel scope."""
        while not condition(self):
            await self._changed.wait()
