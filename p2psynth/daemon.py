"""The node daemon: ``p2psynth node run``.

One trio event loop runs, as children of one nursery:

- the network service (libp2p host, announcement gossip, sync, anti-entropy);
- the model keeper, which refits the global model in a worker thread when the
  current releases change;
- the status writer, which keeps ``status.json`` in the node folder current
  for ``p2psynth status``;
- the local HTTP API (``p2psynth.api``), unless disabled.

Publishing measures the private table in a worker thread that opens its own
connection to the store, debits the ledger there (the same path as
``p2psynth measure``), and only then announces the release.

Shutdown: SIGINT or SIGTERM ask every part to stop; the network closes within
its ``shutdown_timeout_s`` and the whole daemon within ``shutdown_timeout_s``
of this module. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from p2psynth.errors import ConfigError, P2PSynthError
from p2psynth.members import load_members
from p2psynth.modelkeeper import ModelKeeper
from p2psynth.nodeconfig import NodeConfig, load_node_config
from p2psynth.nodefolder import OpenNode, measure_and_publish, open_node, write_file_atomically
from p2psynth.release import author_fingerprint, decode_release, release_id
from p2psynth.validation import ReleaseValidator

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


@dataclass(frozen=True, kw_only=True)
class DaemonOptions:
    """Tuning of a daemon run; the defaults suit a production node."""

    status_interval_s: float = 1.0
    shutdown_timeout_s: float = 10.0
    anti_entropy_min_interval_s: float = 5.0
    anti_entropy_max_interval_s: float = 10.0
    model_debounce_s: float = 0.5
    model_incomplete_debounce_s: float = 3.0
    redial_interval_s: float = 30.0
    # Maximum wait between two checks of the publish schedule and the data file.
    publish_check_s: float = 60.0
    serve_api: bool = True
    network_seed: int | None = None


class NodeDaemon:
    """A running node: network, validation, store, model upkeep and API."""

    def __init__(self, config: NodeConfig, *, options: DaemonOptions = DaemonOptions()) -> None:
        from p2psynth.network import NetworkConfig, NetworkService
        from p2psynth.schema import load_schema

        self.config = config
        self.options = options
        if config.data.schema is None:
            raise ConfigError(f"{config.path}: data.schema is not set; the daemon needs the network's schema")
        if config.network.members_file is None:
            raise ConfigError(f"{config.path}: network.members_file is not set")

        self.schema = load_schema(config.data.schema)
        self.members = load_members(config.network.members_file)
        self.node: OpenNode = open_node(config.path)
        self.public_key = self.node.key.public_key().public_bytes_raw()
        if self.public_key not in self.members:
            log.warning(
                "this node's key %s is not in %s; peers will reject its releases",
                author_fingerprint(self.public_key), config.network.members_file,
            )

        self.validator = ReleaseValidator(
            store=self.node.store,
            members=self.members,
            schema_fingerprint=self.schema.fingerprint,
            domain=self.schema.domain,
            own_author=self.public_key,
        )
        self.models = ModelKeeper(
            store=self.node.store,
            domain=self.schema.domain,
            schema_fingerprint=self.schema.fingerprint,
            models_dir=config.folder / "models",
            debounce_s=options.model_debounce_s,
            incomplete_debounce_s=options.model_incomplete_debounce_s,
            members=lambda: set(self.members.by_key),
            releases_per_epoch=3 if config.publish.strategy == "rounds" else 1,
        )
        self.network = NetworkService(
            private_key=self.node.key,
            config=NetworkConfig(
                network_id=config.network.network_id,
                schema_fingerprint=self.schema.fingerprint,
                listen_addrs=config.network.listen,
                bootstrap_addrs=config.network.bootstrap,
                anti_entropy_min_interval_s=options.anti_entropy_min_interval_s,
                anti_entropy_max_interval_s=options.anti_entropy_max_interval_s,
                redial_interval_s=options.redial_interval_s,
                seed=options.network_seed,
            ),
            releases=_PullSource(self.node.store, self.validator),
            accept_release=self._accept_release,
            on_announcement=self._wants_announcement,
            is_member=self._may_talk_to,
        )
        # Member keys this node refuses to exchange anything with (operator's
        # choice, also how simulations cut a network into partitions).
        self.blocked: set[bytes] = set()
        self._stop = trio.Event()
        # Serializes publishes: one measurement and ledger debit at a time.
        self._publish_lock = trio.Lock()
        self.started_at_ms = time.time_ns() // 1_000_000
        self.publishes = 0
        self.rounds = None
        if config.publish.strategy == "rounds":
            from p2psynth.roundrunner import RoundRunner
            from p2psynth.strategy import StrategyConfig

            for attribute in config.publish.focus_attributes:
                if attribute not in self.schema.domain:
                    raise ConfigError(
                        f"{config.path}: publish.focus_attributes names {attribute!r}, which is not a column "
                        f"of the schema; use some of {list(self.schema.domain.attributes)}"
                    )
            self.rounds = RoundRunner(
                daemon=self,
                config=StrategyConfig(focus_attributes=config.publish.focus_attributes),
                round_wait_s=config.publish.round_wait_s,
                on_published=self._announce,
            )
        self._nursery: trio.Nursery | None = None

    # Life cycle ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()``; ``task_status.started(self)`` once the network listens."""
        try:
            async with trio.open_nursery() as nursery:
                network_done = trio.Event()

                async def run_network(task_status: trio.TaskStatus) -> None:
                    try:
                        await self.network.run(task_status=task_status)
                    finally:
                        network_done.set()

                await nursery.start(run_network)
                await nursery.start(self.models.run)
                self._nursery = nursery
                if self.rounds is not None:
                    self.rounds.resume(nursery)
                nursery.start_soon(self._write_status_periodically)
                if self.config.publish.interval_hours > 0 or self.config.publish.on_data_change:
                    nursery.start_soon(self._publish_when_due)
                if self.options.serve_api:
                    from p2psynth.api import serve_api

                    await nursery.start(serve_api, self)
                log.info(
                    "node %s started: peer %s, %d members, %d releases stored",
                    self.config.name, self.network.peer_id, len(self.members), self.node.store.count_releases(),
                )
                self._write_status()
                task_status.started(self)

                await self._stop.wait()
                log.info("node %s stopping", self.config.name)
                self.network.stop()
                with trio.move_on_after(self.options.shutdown_timeout_s):
                    await network_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._write_status(running=False)
            self.node.close()
            log.info("node %s stopped", self.config.name)

    def stop(self) -> None:
        self._stop.set()

    # Callbacks of the network layer -----------------------------------------

    def _accept_release(self, data: bytes, *, from_peer: str):
        from p2psynth.network import ReleaseVerdict

        outcome = self.validator.accept(data, from_peer=from_peer)
        if outcome.accepted:
            self.models.notify()
            if self.rounds is not None:
                self.rounds.release_arrived()
            return ReleaseVerdict.ACCEPTED
        if outcome.reason == "replay":
            return ReleaseVerdict.DUPLICATE
        if outcome.reason == "equivocation":
            self.models.notify()  # the author's releases leave the model
        return ReleaseVerdict.REJECTED

    def _wants_announcement(self, announcement, *, from_peer: str) -> bool:
        if announcement.author not in self.members:
            return False
        return not self.node.store.has_release(announcement.release_id)

    def _may_talk_to(self, public_key: bytes) -> bool:
        return public_key in self.members and public_key not in self.blocked

    async def set_blocked(self, public_keys: set[bytes]) -> list[str]:
        """Replace the set of blocked member keys and disconnect blocked peers now.

        A blocked peer is refused by sync and gossip and disconnected at each
        anti-entropy round; bootstrap redials reconnect it briefly, after which
        it is disconnected again. Returns the blocked keys as hex.
        """
        from p2psynth.network import peer_id_from_public_key

        self.blocked = set(public_keys)
        log.info("blocked peers set to %d member key(s)", len(self.blocked))
        for key in self.blocked:
            peer_id = peer_id_from_public_key(key)
            if peer_id in self.network.host.get_connected_peers():
                with trio.move_on_after(5):
                    try:
                        await self.network.host.disconnect(peer_id)
                    except Exception as exc:  # the peer may be gone already
                        log.debug("disconnecting blocked peer %s failed: %s", peer_id, exc)
        return sorted(key.hex() for key in self.blocked)

    # Publishing --------------------------------------------------------------

    async def publish(self, *, epsilon: float | None = None) -> dict:
        """Measure the private table, debit the ledger, store and announce a release.

        With the "rounds" strategy this publishes round 1 of a new epoch. The
        daemon then publishes rounds 2 and 3 by itself, once the other
        members' releases arrive or the round's wait ends.
        """
        async with self._publish_lock:
            if self.rounds is not None and self._nursery is not None:
                published = await self.rounds.start_epoch(self._nursery, epsilon=epsilon)
            else:
                published = await trio.to_thread.run_sync(self._publish_in_thread, epsilon)
                self._announce(published)
        release = published.release
        return {
            "release_id": release_id(published.data).hex(),
            "sequence": release.sequence,
            "epoch": release.epoch,
            "round": release.round,
            "rounds_to_follow": [r for r in (2, 3) if release.round == 1 and r > release.round],
            "rho": release.rho,
            "size_bytes": len(published.data),
            "file": str(published.path),
        }

    def _announce(self, published) -> None:
        """Gossip a stored own release and refit: called on the event loop after each publish."""
        rid = release_id(published.data)
        self.network.announce_release(
            release_id=rid, sequence=published.release.sequence, size_bytes=len(published.data)
        )
        self.publishes += 1
        self.models.notify()
        self._write_status()
        log.info("announced release %s (sequence %d, round %d)", rid.hex()[:16], published.release.sequence,
                 published.release.round)

    async def _publish_when_due(self) -> None:
        """Publish on the node.toml schedule or data-file change until the budget runs out."""
        from p2psynth.errors import BudgetExceededError
        from p2psynth.schedule import ScheduleState, file_signature, publish_reason

        settings = self.config.publish
        own = self.node.store.own_releases()
        latest_ms = max((decode_release(r.data).created_at_ms for r in own), default=None)
        signature = file_signature(self.config.data.path)
        state = ScheduleState(
            last_publish_s=None if latest_ms is None else latest_ms / 1000,
            published_signature=signature,
            previous_signature=signature,
        )
        check_s = self.options.publish_check_s
        if settings.interval_hours:
            check_s = min(check_s, max(1.0, settings.interval_hours * 3600 / 10))
        while True:
            await trio.sleep(check_s)
            reason = publish_reason(
                state,
                now_s=time.time(),
                interval_hours=settings.interval_hours,
                on_data_change=settings.on_data_change,
                current_signature=file_signature(self.config.data.path),
            )
            if reason is None:
                continue
            log.info("publishing on its own: %s", reason)
            try:
                await self.publish()
            except BudgetExceededError as exc:
                log.error("scheduled publishing stops: %s", exc)
                return
            except P2PSynthError as exc:
                log.error("scheduled publish failed (%s); the next check retries", exc)
                continue
            state.last_publish_s = time.time()
            state.published_signature = state.previous_signature

    def _publish_in_thread(self, epsilon: float | None):
        # SQLite connections belong to one thread: open the node again here.
        with open_node(self.config.path) as node:
            return measure_and_publish(node, epsilon=epsilon)

    # Status ----------------------------------------------------------------

    def budget_view(self) -> dict:
        """Return the ledger's budget as JSON-ready values, or the ledger's error."""
        try:
            budget = self.node.ledger.status()
        except P2PSynthError as exc:
            return {"error": str(exc)}
        return {
            "lifetime_epsilon": budget.epsilon_limit,
            "delta": budget.delta,
            "releases": budget.releases,
            "rho_spent": budget.rho_spent,
            "rho_remaining": budget.rho_remaining,
            "epsilon_spent": budget.epsilon_spent,
            "error": None,
        }

    def model_view(self) -> dict:
        """Return the current model's id, provenance and fit facts as JSON-ready values."""
        model = self.models.state
        return {
            "model_id": model.model_id,
            "releases": list(model.release_ids),
            "fitted_at_ms": model.fitted_at_ms,
            "fit_seconds": model.fit_seconds,
            "error": model.error,
            "provenance": getattr(model.model, "provenance", None),
            "estimated_rows": getattr(model.model, "total", None),
            "dropped_cliques": [
                list(c) for c in getattr(getattr(model.model, "fit_summary", None), "dropped_cliques", ())
            ],
        }

    def status(self, *, running: bool = True) -> dict:
        store = self.node.store
        latest = store.latest_sequences()
        return {
            "running": running,
            "pid": os.getpid(),
            "node": self.config.name,
            "public_key": self.public_key.hex(),
            "fingerprint": author_fingerprint(self.public_key),
            "peer_id": self.network.peer_id,
            "addresses": self.network.addresses() if running else [],
            "network_id": self.config.network.network_id,
            "schema_fingerprint": self.schema.fingerprint,
            "started_at_ms": self.started_at_ms,
            "updated_at_ms": time.time_ns() // 1_000_000,
            "peers": [
                {"peer_id": p.peer_id, "member": self.members.name_of(p.public_key) if p.public_key else None}
                for p in (self.network.peers() if running else [])
            ],
            "releases": {
                "stored": store.count_releases(),
                # The releases the model keeper fits: current members' latest epochs.
                "current": len(self.models.current_keys()),
                "latest_sequence_by_member": {
                    self.members.name_of(author): sequence for author, sequence in sorted(latest.items())
                },
                "flagged_members": {
                    self.members.name_of(author): reason for author, reason in store.flagged_authors().items()
                },
            },
            "rejections": self.validator.rejections.snapshot(),
            "network": self.network.statistics() if running else {},
            "model": self.model_view(),
            "budget": self.budget_view(),
            "api": {"host": self.config.api.host, "port": getattr(self, "api_port", None)},
            "blocked_peers": sorted(self.members.name_of(key) for key in self.blocked),
            "rounds": {
                "strategy": self.config.publish.strategy,
                **(self.rounds.state.view() if self.rounds is not None else {}),
            },
        }

    def _write_status(self, *, running: bool = True) -> None:
        try:
            text = json.dumps(self.status(running=running), indent=2, sort_keys=True, default=str)
            write_file_atomically(self.config.folder / STATUS_FILE, text.encode())
        except Exception:  # the status file is a convenience; never stop the node for it
            log.exception("writing %s failed", STATUS_FILE)

    async def _write_status_periodically(self) -> None:
        while True:
            await trio.sleep(self.options.status_interval_s)
            self._write_status()


class _PullSource:
    """The store as served to the network layer, plus sequences this node rejected.

    Anti-entropy pulls every sequence a peer has above ours. A release that
    its author signed but that failed validation (wrong schema, domain or
    implausible counts) would otherwise be pulled again every round, so its
    sequence counts as seen. Releases whose signature did not verify are not
    counted: anyone could name an author in them.
    """

    def __init__(self, store, validator: ReleaseValidator) -> None:
        self._store = store
        self._validator = validator

    def latest_sequences(self) -> dict[bytes, int]:
        latest = self._store.latest_sequences()
        for author, sequence in self._validator.rejected_sequences.items():
            latest[author] = max(latest.get(author, 0), sequence)
        return latest

    def releases_after(self, author: bytes, sequence: int, *, limit: int) -> list[bytes]:
        return self._store.releases_after(author, sequence, limit=limit)

    def get_release(self, rid: bytes) -> bytes | None:
        return self._store.get_release(rid)

    def release_index(self, author: bytes, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """List (sequence, release id) of an author's stored releases above ``after``.

        Having this method turns on sync protocol 1.1, whose anti-entropy also
        fills gaps inside an author's history (a round-1 release missed while
        round 2 arrived, say).
        """
        return self._store.release_index(author, after=after, limit=limit)


def read_status(config_path: Path) -> dict:
    """Return the status snapshot a running daemon keeps; raise ConfigError if none."""
    config = load_node_config(config_path)
    path = config.folder / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no status at {path}: the daemon has not run in this folder; start it with "
            f"'p2psynth node run --config {config.path}'"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"status file {path} is unreadable: {exc}") from exc
    status["process_alive"] = _process_alive(status.get("pid"))
    if status.get("running") and not status["process_alive"]:
        status["running"] = False
    return status


def run_daemon(config_path: Path, *, options: DaemonOptions = DaemonOptions()) -> int:
    """Run the daemon in the foreground until SIGINT or SIGTERM; return the exit status."""
    config = load_node_config(config_path)

    async def main() -> None:
        daemon = NodeDaemon(config, options=options)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, daemon)
            await daemon.run()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # Nurseries wrap errors in groups; a user error raised while starting
        # (such as an API port in use) reaches the CLI as its one-line message.
        raise _first_user_error(group) or group from None
    return 0


def _first_user_error(group: BaseExceptionGroup) -> P2PSynthError | None:
    for error in group.exceptions:
        if isinstance(error, P2PSynthError):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = _first_user_error(error)
            if found is not None:
                return found
    return None


async def _stop_on_signal(daemon: NodeDaemon) -> None:
    # The receiver stays open until the daemon has stopped: a second signal
    # (Ctrl-C reaches a whole process group, then a supervisor sends SIGTERM)
    # must not fall back to the default action and kill the process mid-shutdown.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if daemon._stop.is_set():
                log.info("received %s while stopping; still stopping", signal.Signals(signum).name)
                continue
            log.info("received %s", signal.Signals(signum).name)
            daemon.stop()


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
