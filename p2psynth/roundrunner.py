"""The daemon's side of the measurement rounds: publish round 1, then plan and publish 2 and 3.

``RoundRunner.start_epoch`` measures round 1 and returns at once. A task then
waits for the other members' releases, chooses each next round's basis with
``p2psynth.rounds.choose_basis`` and publishes the round. Reading the store,
planning and measuring run in worker threads. Each opens its own SQLite
connection (only the store, unless it publishes), so the event loop keeps
serving peers meanwhile.

A node that stops between rounds resumes at start-up. Its latest epoch's
releases show which round comes next, and round 1's rho gives the epoch's
budget, because round 1 spends a fixed share of it. The ledger debits each
round as it is published, and round 1 first checks that the whole epoch fits
the budget.

Failures of a round (budget, a plan that cannot be made) are logged and shown
in the status under ``rounds``; they never stop the daemon.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from p2psynth.accounting import rho_from_epsilon
from p2psynth.assembly import ReleaseEntry
from p2psynth.errors import P2PSynthError, RoundInProgressError, StoreError
from p2psynth.nodefolder import PublishedRelease, measure_round_and_publish, open_node
from p2psynth.release import decode_release, release_id
from p2psynth.rounds import FINAL_ROUND, FRESH_WAITS, BasisChoice, Waiting, choose_basis, plan_from_basis, plan_round_one
from p2psynth.store import Store
from p2psynth.strategy import StrategyConfig

log = logging.getLogger(__name__)

# Maximum pause between two reads of the store while a round waits. A release
# that arrives ends the pause earlier.
_RECHECK_S = 2.0


@dataclass
class RoundState:
    """Progress of this node's rounds, as the status snapshot shows it."""

    epoch: int | None = None
    round: int | None = None
    state: str = "idle"  # idle, planning, waiting, measuring, done, failed
    waiting_for: list[str] = field(default_factory=list)
    deadline_at_ms: int | None = None
    basis_method: dict[int, str] = field(default_factory=dict)
    error: str | None = None

    def view(self) -> dict:
        return {
            "epoch": self.epoch,
            "round": self.round,
            "state": self.state,
            "waiting_for": list(self.waiting_for),
            "deadline_at_ms": self.deadline_at_ms,
            "basis": {str(k): v for k, v in sorted(self.basis_method.items())},
            "error": self.error,
        }


class RoundRunner:
    """Runs one node's measurement rounds inside the daemon."""

    def __init__(
        self,
        *,
        daemon,
        config: StrategyConfig,
        round_wait_s: float,
        on_published: Callable[[PublishedRelease], None],
    ) -> None:
        self._daemon = daemon
        self._config = config
        self._round_wait_s = round_wait_s
        self._on_published = on_published
        self._arrivals = trio.Event()
        self._running = False
        self.state = RoundState()

    # Called by the daemon ---------------------------------------------------

    def release_arrived(self) -> None:
        """Wake a waiting round: the store holds a new release."""
        self._arrivals.set()

    async def start_epoch(self, nursery: trio.Nursery, *, epsilon: float | None) -> PublishedRelease:
        """Publish round 1 of a new epoch and start the task that publishes rounds 2 and 3."""
        if self._running:
            raise RoundInProgressError(
                f"epoch {self.state.epoch} is still in round {self.state.round} ({self.state.state}); "
                "publish again after its last round (see the rounds field of 'p2psynth status')"
            )
        privacy = self._daemon.config.privacy
        rho = rho_from_epsilon(privacy.release_epsilon if epsilon is None else float(epsilon), privacy.delta)
        self._running = True
        try:
            published = await trio.to_thread.run_sync(self._publish_round_one, rho)
        except BaseException:
            self._running = False
            raise
        self._on_published(published)
        epoch = published.release.epoch
        self.state = RoundState(epoch=epoch, round=1, state="done")
        nursery.start_soon(self._finish_epoch, epoch, rho)
        return published

    def resume(self, nursery: trio.Nursery) -> None:
        """Continue an epoch that stopped between rounds (called once at start-up)."""
        own = self._own_latest_epoch()
        if not own or 1 not in own or max(own) >= FINAL_ROUND:
            return
        round_one = own[1].release
        epoch, rho = round_one.epoch, round_one.rho / self._config.one_way_share
        log.info("resuming epoch %d after round %d", epoch, max(own))
        self._running = True
        self.state = RoundState(epoch=epoch, round=max(own), state="done")
        nursery.start_soon(self._finish_epoch, epoch, rho)

    # The rounds -------------------------------------------------------------

    async def _finish_epoch(self, epoch: int, rho: float) -> None:
        try:
            for round_number in range(2, FINAL_ROUND + 1):
                own = await trio.to_thread.run_sync(self._own_latest_epoch)
                if round_number in own:
                    continue
                # Other members' epochs that started long before this one belong to an earlier network epoch.
                fresh_after_ms = own[1].release.created_at_ms - int(FRESH_WAITS * self._round_wait_s * 1000)
                choice = await self._wait_for_basis(round_number, own[round_number - 1], fresh_after_ms)
                self.state.round, self.state.state, self.state.waiting_for = round_number, "measuring", []
                self.state.basis_method[round_number] = choice.method
                published = await trio.to_thread.run_sync(self._publish_round, epoch, rho, choice)
                self._on_published(published)
                self.state.state = "done"
                log.info(
                    "published round %d of epoch %d: release %s, basis of %d releases (%s)",
                    round_number, epoch, release_id(published.data).hex()[:16], len(choice.basis), choice.method,
                )
        except P2PSynthError as exc:
            log.error("round %s of epoch %d failed: %s", self.state.round, epoch, exc)
            self.state.state, self.state.error = "failed", str(exc)
        except Exception as exc:  # a bug here must not stop the node
            log.exception("round %s of epoch %d failed", self.state.round, epoch)
            self.state.state, self.state.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._running = False
            self.state.waiting_for, self.state.deadline_at_ms = [], None

    async def _wait_for_basis(self, round_number: int, own_previous: ReleaseEntry, fresh_after_ms: int) -> BasisChoice:
        deadline = trio.current_time() + self._round_wait_s
        self.state.round, self.state.state = round_number, "planning"
        self.state.deadline_at_ms = time.time_ns() // 1_000_000 + int(self._round_wait_s * 1000)
        while True:
            self._arrivals = trio.Event()
            passed = trio.current_time() >= deadline
            choice = await trio.to_thread.run_sync(self._choose, round_number, own_previous, passed, fresh_after_ms)
            if isinstance(choice, BasisChoice):
                return choice
            names = [self._daemon.members.name_of(key) for key in choice.missing]
            if names != self.state.waiting_for:
                log.info("round %d waits for %s", round_number, ", ".join(names))
            self.state.waiting_for, self.state.state = names, "waiting"
            with trio.move_on_after(max(0.0, min(_RECHECK_S, deadline - trio.current_time()))):
                await self._arrivals.wait()

    # Worker-thread functions (each opens its own store connection) -------------

    def _publish_round_one(self, rho: float) -> PublishedRelease:
        with open_node(self._daemon.config.path) as node:
            plan = plan_round_one(self._daemon.schema.domain, rho=rho, config=self._config)
            epoch = node.store.max_own_epoch() + 1
            return measure_round_and_publish(node, plan, epoch=epoch, reserve_rho=rho)

    def _publish_round(self, epoch: int, rho: float, choice: BasisChoice) -> PublishedRelease:
        with open_node(self._daemon.config.path) as node:
            entries = [_entry(node.store.get_release(rid)) for rid in choice.basis]
            plan = plan_from_basis(
                self._daemon.schema.domain, entries, round_number=choice.round, rho=rho, config=self._config
            )
            return measure_round_and_publish(node, plan, epoch=epoch, basis=choice.basis)

    def _choose(
        self, round_number: int, own_previous: ReleaseEntry, deadline_passed: bool, fresh_after_ms: int
    ) -> BasisChoice | Waiting:
        daemon = self._daemon
        with Store.open(daemon.config.store_file) as store:
            flagged = set(store.flagged_authors())
            members = set(daemon.members.by_key) - flagged
            current = [
                _entry(stored.data)
                for stored in store.current_releases()
                if stored.author in members or stored.author == daemon.public_key
            ]

            def lookup(rid: bytes) -> ReleaseEntry | None:
                data = store.get_release(rid)
                return None if data is None else _entry(data)

            return choose_basis(
                round_number,
                domain=daemon.schema.domain,
                config=self._config,
                own_author=daemon.public_key,
                own_previous=own_previous,
                current=current,
                expected_authors=members,
                lookup=lookup,
                deadline_passed=deadline_passed,
                fresh_after_ms=fresh_after_ms,
            )

    def _own_latest_epoch(self) -> dict[int, ReleaseEntry]:
        """Return this node's releases of its highest epoch by round (empty when it has none)."""
        with Store.open(self._daemon.config.store_file) as store:
            own = store.own_releases()
            if not own:
                return {}
            epoch = max(stored.epoch for stored in own)
            entries = [_entry(stored.data) for stored in own if stored.epoch == epoch]
        return {entry.release.round: entry for entry in entries}


def _entry(data: bytes | None) -> ReleaseEntry:
    if data is None:
        raise StoreError(
            "a release named by the basis is missing from the store; check the store file and restart the node"
        )
    return ReleaseEntry(release_id(data), decode_release(data))
