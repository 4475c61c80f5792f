"""Model upkeep in the daemon: refit the global model when the current releases change.

Decisions are kept apart from the event loop: ``ModelKeeper.pending_key``
tells from the store whether the set of current releases differs from the one
the model was fitted to, and the fit itself runs in a worker thread, so the
networking tasks keep running while a model is fitted. Bursts of arriving
releases are debounced: a refit starts once no new release has arrived for
``debounce_s`` (or after ``max_delay_s`` at the latest). While some members
have no release yet, or fewer than ``releases_per_epoch`` in their current
epoch (mid-way through the measurement rounds), the quiet period is
``incomplete_debounce_s`` instead, because members that publish together
would otherwise cost one full fit per arrival. Only releases of current members are used, so removing a key from
the members file removes its releases from the next model.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from p2psynth.assembly import ReleaseEntry, assemble_model, current_entries
from p2psynth.domain import Domain
from p2psynth.errors import ModelError
from p2psynth.release import decode_release
from p2psynth.store import Store

log = logging.getLogger(__name__)

MODEL_SUFFIX = ".p2pm"


@dataclass(frozen=True)
class ModelState:
    """The current model, or why there is none."""

    model: object | None  # p2psynth.model.GraphicalModel
    model_id: str | None
    release_ids: tuple[str, ...]
    fitted_at_ms: int | None
    fit_seconds: float | None
    error: str | None
    path: Path | None


class ModelKeeper:
    """Keeps ``state`` in step with the store's current releases."""

    def __init__(
        self,
        *,
        store: Store,
        domain: Domain,
        schema_fingerprint: str,
        models_dir: Path,
        debounce_s: float = 0.5,
        incomplete_debounce_s: float = 3.0,
        max_delay_s: float = 15.0,
        members: Callable[[], set[bytes]] | None = None,
        poll_s: float = 5.0,
        releases_per_epoch: int = 1,
    ) -> None:
        self._store = store
        self._domain = domain
        self._fingerprint = schema_fingerprint
        self._models_dir = models_dir
        self._debounce_s = debounce_s
        self._incomplete_debounce_s = incomplete_debounce_s
        self._max_delay_s = max_delay_s
        # Returns the current member keys; None uses every stored author.
        self._members = members
        self._poll_s = poll_s
        # Releases of a finished epoch (3 with the round strategy): a member with
        # fewer is mid-epoch, so more of its releases are on the way.
        self._releases_per_epoch = releases_per_epoch
        # Set whenever a release was stored; cleared when a refit starts.
        self._changed = trio.Event()
        self.state = ModelState(None, None, (), None, None, "no model fitted yet", None)
        # Release ids the current state was computed from (fitted or failed).
        self._fitted_key: tuple[bytes, ...] | None = None
        self.fits = 0

    def notify(self) -> None:
        """Record that the store changed; a refit follows after the debounce."""
        self._changed.set()

    def current_keys(self) -> list[tuple[bytes, bytes]]:
        """Return (release id, author) of the stored current releases of current members."""
        keys = self._store.current_release_keys()
        if self._members is None:
            return keys
        members = self._members()
        return [(rid, author) for rid, author in keys if author in members]

    def current_rows(self):
        """Return the stored current releases of current members, with their bytes."""
        wanted = {rid for rid, _ in self.current_keys()}
        return [row for row in self._store.current_releases() if row.release_id in wanted]

    def pending_key(self) -> tuple[bytes, ...] | None:
        """Return the current release ids if they differ from the fitted ones, else None."""
        key = tuple(sorted(rid for rid, _ in self.current_keys()))
        if not key or key == self._fitted_key:
            return None
        return key

    def _quiet_period_s(self) -> float:
        """Return the debounce: longer while some member has no release or is mid-epoch."""
        if self._members is None:
            return self._debounce_s
        per_author = Counter(author for _, author in self.current_keys())
        members = self._members()
        complete = set(per_author) >= members and all(
            per_author[author] >= self._releases_per_epoch for author in members
        )
        return self._debounce_s if complete else self._incomplete_debounce_s

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self._load_latest_model_file()
        task_status.started()
        self._changed.set()  # releases may be in the store already
        while True:
            # Also look at the store now and then: 'p2psynth measure' run beside
            # the daemon writes releases that no callback reports.
            with trio.move_on_after(self._poll_s):
                await self._changed.wait()
            if not self._changed.is_set() and self.pending_key() is None:
                continue
            await self._debounce()
            self._changed = trio.Event()
            await self.refit_if_needed()

    async def _debounce(self) -> None:
        deadline = trio.current_time() + self._max_delay_s
        while trio.current_time() < deadline:
            self._changed = trio.Event()
            with trio.move_on_after(self._quiet_period_s()):
                await self._changed.wait()
                continue
            return

    async def refit_if_needed(self) -> None:
        """Fit a new model when the current releases changed since the last fit."""
        key = self.pending_key()
        if key is None:
            return
        rows = self.current_rows()
        entries = [ReleaseEntry(row.release_id, decode_release(row.data)) for row in rows]
        entries = current_entries(entries)

        started = time.perf_counter()
        try:
            model = await trio.to_thread.run_sync(self._fit, entries, abandon_on_cancel=True)
        except ModelError as exc:
            self._fitted_key = key
            self.state = ModelState(None, None, tuple(k.hex() for k in key), None, None, str(exc), None)
            log.error("model fit from %d releases failed: %s", len(key), exc)
            return
        seconds = time.perf_counter() - started

        path = self._write(model)
        self._fitted_key = key
        self.fits += 1
        self.state = ModelState(
            model=model,
            model_id=model.model_id,
            release_ids=tuple(k.hex() for k in key),
            fitted_at_ms=time.time_ns() // 1_000_000,
            fit_seconds=round(seconds, 3),
            error=None,
            path=path,
        )
        log.info("model %s fitted from %d releases in %.2f s", model.model_id[:16], len(key), seconds)

    def _fit(self, entries: list[ReleaseEntry]):
        # A daemon keeps working when members' trees together exceed the caps:
        # the least weighted cliques are left out and listed in the status.
        return assemble_model(
            entries, schema_fingerprint=self._fingerprint, domain=self._domain, drop_cliques_over_cap=True
        )

    def _write(self, model) -> Path:
        from p2psynth.nodefolder import write_file_atomically

        path = self._models_dir / f"{model.model_id}{MODEL_SUFFIX}"
        if not path.exists():
            write_file_atomically(path, model.to_bytes())
        write_file_atomically(self._models_dir / "current", (model.model_id + "\n").encode())
        return path

    def _load_latest_model_file(self) -> None:
        """Start from the model saved before a restart, if it is still current."""
        from p2psynth.model import GraphicalModel

        pointer = self._models_dir / "current"
        if not pointer.is_file():
            return
        model_id = pointer.read_text().strip()
        path = self._models_dir / f"{model_id}{MODEL_SUFFIX}"
        try:
            model = GraphicalModel.from_bytes(path.read_bytes())
        except (OSError, ModelError) as exc:
            log.warning("saved model %s cannot be loaded (%s); it will be refitted", path, exc)
            return
        key = tuple(sorted(bytes.fromhex(r) for r in model.provenance.get("releases", [])))
        self._fitted_key = key
        self.state = ModelState(model, model.model_id, tuple(k.hex() for k in key), None, None, None, path)
        log.info("loaded saved model %s", model.model_id[:16])
