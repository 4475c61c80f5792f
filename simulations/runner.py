"""Carry out one scenario run: node folders, events, convergence waits, measurements.

The runner keeps its own account of which releases each node should hold
(``Expectations``) and compares it with what the nodes report in their
status files. That is what "converged" means here, and it is stricter than
equal model ids: every live node must have stored every release it can reach
and must have fitted its model to exactly the current ones (each author's
highest epoch). A model id alone can agree early, when every node has fitted
a model to the first release and the others are still arriving.

Reachability follows the topology: during a partition, or when a crashed
node cuts a line in two, each connected group of live nodes converges on the
releases held inside the group. Releases that peers are expected to reject
(a misbehaving member's) stay with their author only.

Every measurement becomes one row ``(run, t_s, event, action, metric, node,
value)`` of the report's CSV.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from p2psynth.localnet import LocalNode
from p2psynth.nodefolder import init_node, open_node
from p2psynth.schema import Schema
from simulations import quality
from simulations.launch import DirectLauncher, local_node
from simulations.nodes import (
    apply_topology, build_nodes, components, render_members, set_bootstrap, topology_edges,
)
from simulations.releases import ReleaseRecord, expected_current, noise_seed, publish_misbehaving, publish_seeded
from simulations.scenario import Event, Scenario, ScenarioError, expand_nodes
from simulations.splits import Table, describe_parts, split_rows, write_parts

log = logging.getLogger(__name__)

POLL_S = 0.5
PROGRESS_EVERY_S = 10.0
# A wait ends early once every live node holds its releases and has reported
# the same model error for this long: a refit of the same releases fails the same way.
MODEL_ERROR_GRACE_S = 30.0

Progress = Callable[[str], None]


@dataclass
class Expectations:
    """Release ids each node should hold, for the releases the simulator caused."""

    # Every release the simulator made or asked for, by id.
    records: dict[str, ReleaseRecord] = field(default_factory=dict)
    # Release ids each node holds or will hold once it converges with its group.
    holds: dict[str, set[str]] = field(default_factory=dict)

    def add(self, record: ReleaseRecord) -> None:
        self.records[record.release_id] = record
        self.holds.setdefault(record.author, set()).add(record.release_id)

    def targets(self, group: set[str]) -> dict[str, set[str]]:
        """Return, per node of a connected group, the release ids it must hold after converging."""
        spreading = set()
        for name in group:
            spreading |= {r for r in self.holds.get(name, set()) if self.records[r].expected_rejection is None}
        targets = {}
        for name in group:
            own_rejected = {r for r in self.holds.get(name, set()) if self.records[r].expected_rejection is not None}
            targets[name] = spreading | own_rejected
        return targets

    def current(self, ids: set[str]) -> set[str]:
        return expected_current([self.records[r] for r in ids])


@dataclass
class RunResult:
    label: str
    node_count: int
    epsilon: float
    rows: list[dict]
    summary: dict


class ScenarioRun:
    """One network built from a scenario (one sweep value), run through its timeline."""

    def __init__(self, scenario: Scenario, *, label: str, root: Path, schema: Schema, table: Table,
                 holdout: np.ndarray | None, progress: Progress) -> None:
        self.scenario = scenario
        self.label = label
        self.root = root
        self.schema = schema
        self.table = table
        self.holdout = holdout
        self.progress = progress
        self.rng = np.random.default_rng(scenario.seed)
        self.expect = Expectations()
        self.rows: list[dict] = []
        self.summary: dict = {"waits": [], "events": [], "quality": {}, "budget_after_restart": {}}
        self.started_at = time.monotonic()
        self.running: set[str] = set()
        # Node pairs whose connections the current partition cuts.
        self.blocked: set[frozenset[str]] = set()
        self.release_counts: dict[str, int] = {}
        self.budget_before_down: dict[str, float] = {}
        self.outsiders: list[LocalNode] = []
        # Nodes whose store got a release behind their daemon's back (a misbehaving
        # author): the daemon refits only when it is notified, so its own model is
        # not predictable and only its stored releases are checked.
        self.written_behind: set[str] = set()
        self.event: Event | None = None

    # Set-up ------------------------------------------------------------------

    def build(self) -> None:
        scenario = self.scenario
        names = scenario.nodes.names
        parts = split_rows(self.table, self.schema, scenario.split, count=scenario.nodes.count, rng=self.rng)
        paths = write_parts(self.table, parts, self.root / "data", names)
        self.summary["split"] = describe_parts(self.table, self.schema, parts,
                                               scenario.split.column or scenario.data.target)
        self.nodes = build_nodes(scenario, self.root / "nodes", data_paths=paths,
                                 row_counts=[len(p) for p in parts], network_id=f"sim-{scenario.name}")
        self.by_name = {node.name: node for node in self.nodes}

        index_edges = topology_edges(scenario.topology.kind, len(self.nodes), degree=scenario.topology.degree,
                                     rng=self.rng)
        self.edges = [(self.nodes[a].name, self.nodes[b].name) for a, b in index_edges]
        self.launcher = self._make_launcher()
        apply_topology(self.nodes, index_edges, address_of=self.launcher.address_of)
        self.summary["topology"] = {"kind": scenario.topology.kind, "dials": len(self.edges),
                                    "launcher": type(self.launcher).__name__}
        for name, part in zip(names, parts):
            self._record(metric="rows", node=name, value=len(part))

    def _make_launcher(self):
        anti_entropy = self.scenario.nodes.anti_entropy_s
        if self.scenario.uses_partition and self.scenario.nodes.partition == "namespaces":
            from simulations.partition import NamespaceLauncher

            return NamespaceLauncher(self.nodes, anti_entropy_s=anti_entropy, tag=self.root.name)
        return DirectLauncher(self.nodes, anti_entropy_s=anti_entropy)

    # Timeline ----------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            self.build()
            for event in self.scenario.events:
                self.event = event
                started = time.monotonic()
                self._say(f"event {event.index}/{len(self.scenario.events)}: {event.describe()}")
                getattr(self, f"_do_{event.action}")(event)
                self.summary["events"].append({"index": event.index, "what": event.describe(),
                                               "at_s": round(started - self.started_at, 2),
                                               "took_s": round(time.monotonic() - started, 2)})
            self.event = None
            if not any(e.action == "evaluate" for e in self.scenario.events):
                self._do_evaluate(Event(index=len(self.scenario.events) + 1, action="evaluate", nodes=("all",)))
            self._final_snapshot()
        finally:
            self.launcher.close()
        return RunResult(
            label=self.label,
            node_count=len(self.nodes),
            epsilon=float(np.mean(self.scenario.nodes.release_epsilons)),
            rows=self.rows,
            summary=self.summary,
        )

    def _do_start(self, event: Event) -> None:
        chosen = [self.by_name[n] for n in expand_nodes(event.nodes, self.scenario.nodes.names)
                  if n not in self.running]
        seconds = self.launcher.start(chosen, timeout_s=self.scenario.nodes.start_timeout_s)
        self.running |= {n.name for n in chosen}
        self._record(metric="start_s", value=round(seconds, 2))

    def _do_restart(self, event: Event) -> None:
        chosen = [self.by_name[n] for n in expand_nodes(event.nodes, self.scenario.nodes.names)]
        self.launcher.start(chosen, timeout_s=self.scenario.nodes.start_timeout_s)
        self.running |= {n.name for n in chosen}
        for node in chosen:
            after = self._spent_rho(node)
            before = self.budget_before_down.get(node.name)
            unchanged = before is not None and after is not None and abs(after - before) < 1e-12
            self.summary["budget_after_restart"][node.name] = {"before": before, "after": after,
                                                                "unchanged": unchanged}
            self._record(metric="budget_unchanged_after_restart", node=node.name, value=int(unchanged))

    def _do_crash(self, event: Event) -> None:
        self._take_down(event, self.launcher.kill)

    def _do_stop(self, event: Event) -> None:
        self._take_down(event, self.launcher.stop)

    def _take_down(self, event: Event, how: Callable[[LocalNode], None]) -> None:
        for name in expand_nodes(event.nodes, self.scenario.nodes.names):
            if name not in self.running:
                continue
            node = self.by_name[name]
            self.budget_before_down[name] = self._spent_rho(node)
            how(node)
            self.running.discard(name)

    def _do_publish(self, event: Event) -> None:
        for name in expand_nodes(event.nodes, self.scenario.nodes.names):
            node = self.by_name[name]
            epsilon = event.epsilon or self.scenario.nodes.release_epsilons[self.scenario.nodes.names.index(name)]
            number = self.release_counts.get(name, 0) + 1
            self.release_counts[name] = number
            if name in self.running:
                # The daemon measures with noise from os.urandom: not repeatable.
                with self.launcher.client(node) as client:
                    answer = client.publish(epsilon=epsilon)
                record = ReleaseRecord(answer["release_id"], name, answer["sequence"], answer["epoch"], answer["rho"])
            else:
                record = publish_seeded(node.config_path, name=name, epsilon=epsilon,
                                        seed=noise_seed(self.scenario.seed, name, number))
            self.expect.add(record)

    def _do_misbehave(self, event: Event) -> None:
        name = event.nodes[0]
        node = self.by_name[name]
        number = self.release_counts.get(name, 0) + 1
        self.release_counts[name] = number
        epsilon = event.epsilon or self.scenario.nodes.release_epsilons[self.scenario.nodes.names.index(name)]
        record = publish_misbehaving(node.config_path, name=name, kind=event.kind, factor=event.factor,
                                     epsilon=epsilon, seed=noise_seed(self.scenario.seed, name, number))
        self.expect.add(record)
        if name in self.running:
            self.written_behind.add(name)
        self.summary.setdefault("misbehaviour", []).append({
            "node": name, "kind": event.kind, "factor": event.factor,
            "expected": record.expected_rejection or "accepted", "detail": record.detail,
        })

    def _do_outsider(self, event: Event) -> None:
        """Start a node whose key is in no member's list, dialing ``connect_to``, with one release."""
        number = len(self.outsiders) + 1
        name = f"outsider-{number}"
        donor = self.nodes[0]
        config = init_node(
            self.root / "nodes" / name, name=name, data_path=str(open_node_data_path(donor)),
            schema_path=str(self.scenario.data.schema), network_id=f"sim-{self.scenario.name}",
            lifetime_epsilon=self.scenario.nodes.lifetime_epsilon,
            release_epsilon=max(self.scenario.nodes.release_epsilons), delta=self.scenario.nodes.delta, api_port=0,
        )
        outsider = local_node(config.folder)
        # The outsider's own members file lists every member and itself, so it accepts their releases.
        (outsider.folder / "members.toml").write_text(
            render_members(self.nodes, extra=[(name, outsider.public_key)]), encoding="utf-8")
        targets = [self.by_name[n] for n in expand_nodes(event.connect_to, self.scenario.nodes.names)]
        self.launcher.add_node(outsider, dials=targets)
        set_bootstrap(outsider, [self.launcher.address_of(outsider, t) for t in targets])
        record = publish_seeded(outsider.config_path, name=name, epsilon=max(self.scenario.nodes.release_epsilons),
                                seed=noise_seed(self.scenario.seed, name, 1))
        self.launcher.start([outsider], timeout_s=self.scenario.nodes.start_timeout_s)
        self.outsiders.append(outsider)
        self.summary.setdefault("outsiders", []).append({"node": name, "release_id": record.release_id,
                                                         "dials": [t.name for t in targets]})

    def _do_partition(self, event: Event) -> None:
        self.launcher.partition(event.groups)
        self.blocked = {frozenset((a, b)) for i, g in enumerate(event.groups) for h in event.groups[i + 1:]
                        for a in g for b in h}

    def _do_heal(self, event: Event) -> None:
        self.launcher.heal()
        self.blocked = set()

    def _do_sleep(self, event: Event) -> None:
        time.sleep(event.seconds)

    def _do_wait(self, event: Event) -> None:
        started = time.monotonic()
        last_progress = started
        outcome = "timeout"
        error_since: float | None = None
        # Seconds until every live node had stored every release it can reach.
        held_s: float | None = None
        state: dict = {}
        while time.monotonic() - started < event.timeout_s:
            state = self._convergence()
            elapsed = time.monotonic() - started
            self._record(metric="converged_share", value=round(state["share"], 4))
            self._record(metric="model_ids", value=state["model_ids"])
            self._record(metric="releases_held_share", value=round(state["held_share"], 4))
            if held_s is None and state["held_share"] >= 1.0:
                held_s = round(elapsed, 2)
                self._record(metric="all_releases_held_s", value=held_s)
            if state["converged"]:
                outcome = "converged"
                break
            error_since = (error_since or time.monotonic()) if state["model_error"] else None
            if error_since is not None and time.monotonic() - error_since >= MODEL_ERROR_GRACE_S:
                outcome = "model_error"
                break
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                self._say(f"  waiting {elapsed:5.0f} s: {state['done']}/{state['live']} live nodes converged, "
                          f"{state['model_ids']} model ids")
            self._check_processes()
            time.sleep(POLL_S)

        seconds = time.monotonic() - started
        if outcome == "converged":
            self._commit_convergence()
            self._say(f"  converged after {seconds:.1f} s")
        elif outcome == "model_error":
            # Every node holds the releases, so the spreading part converged.
            self._commit_convergence()
            self._say(f"  every node holds its releases but no node can fit a model: {state['model_error']}")
        else:
            self._say(f"  NOT converged within {event.timeout_s:.0f} s; see node.log files under {self.root}")
        metric = {"converged": "convergence_s", "model_error": "model_error_s", "timeout": "convergence_timeout_s"}
        self._record(metric=metric[outcome], value=round(seconds, 2))
        self.summary["waits"].append({"event": event.index, "after": self._previous_event(event),
                                      "seconds": round(seconds, 2), "converged": outcome == "converged",
                                      "outcome": outcome, "model_error": state.get("model_error"),
                                      "held_s": held_s})
        self._snapshot_counters()

    def _do_evaluate(self, event: Event) -> None:
        if self.holdout is None:
            self._say("  no holdout rows; quality skipped")
            return
        names = [n for n in expand_nodes(event.nodes, self.scenario.nodes.names) if n in self.running]
        results = quality.evaluate_nodes(
            [self.by_name[n] for n in names], launcher=self.launcher, schema=self.schema, holdout=self.holdout,
            target=self.scenario.data.target, rows=self.scenario.data.eval_rows, seed=self.scenario.seed,
            scratch=self.root / "samples",
        )
        for name, result in results.items():
            for metric, value in result.items():
                self._record(metric=metric, node=name, value=value)
        self.summary["quality"] = results
        # Misbehaving authors keep a model their daemon did not refit: leave them out of the means.
        honest = {name: r for name, r in results.items() if name not in self.written_behind}
        self.summary.setdefault("evaluations", []).append({
            "event": event.index, "what": event.describe(), "models": len({r["model"] for r in honest.values()}),
            "nodes": len(honest),
            **{key: quality.mean_of(honest, key) for key in ("tvd_1way", "tvd_2way", "tvd_3way", "auc")},
        })
        self._say(f"  quality: {quality.describe(results)}")

    # Convergence -------------------------------------------------------------

    def _groups(self) -> list[set[str]]:
        live = [n for n in self.scenario.nodes.names if n in self.running]
        edges = [(a, b) for a, b in self.edges
                 if a in self.running and b in self.running and frozenset((a, b)) not in self.blocked]
        return components(live, edges)

    def _convergence(self) -> dict:
        done = 0
        held = 0
        healthy = 0
        errors: set[str] = set()
        live = 0
        model_ids = set()
        for group in self._groups():
            targets = self.expect.targets(group)
            ready: dict[str, bool] = {}
            ids_by_target: dict[frozenset, set] = {}
            for name in group:
                status = self.by_name[name].status() or {}
                model = status.get("model") or {}
                model_ids.add(model.get("model_id"))
                target = targets[name]
                stored = (status.get("releases") or {}).get("stored")
                used = set(model.get("releases") or [])
                held += stored == len(target)
                if name in self.written_behind:
                    ready[name] = stored == len(target)
                    continue
                ids_by_target.setdefault(frozenset(target), set()).add(model.get("model_id"))
                if model.get("error"):
                    errors.add(str(model["error"]))
                else:
                    healthy += 1
                ready[name] = bool(model.get("model_id")) and stored == len(target) and used == self.expect.current(target)

            # Nodes holding the same releases must also hold the same model id.
            for name in group:
                if name not in self.written_behind and len(ids_by_target[frozenset(targets[name])]) > 1:
                    ready[name] = False
            live += len(group)
            done += sum(ready.values())
        model_ids.discard(None)
        return {"converged": live > 0 and done == live, "done": done, "live": live,
                "share": done / live if live else 0.0, "model_ids": len(model_ids),
                "held_share": held / live if live else 0.0,
                "model_error": next(iter(errors)) if live and held == live and not healthy and len(errors) == 1
                else None}

    def _commit_convergence(self) -> None:
        for group in self._groups():
            for name, target in self.expect.targets(group).items():
                self.expect.holds[name] = set(target)

    def _check_processes(self) -> None:
        for name in list(self.running):
            node = self.by_name[name]
            if not self.launcher.is_running(node):
                raise ScenarioError(f"{name} exited unexpectedly (status {node.process.returncode}); "
                                    f"see {node.folder / 'node.log'}")

    # Measurements ------------------------------------------------------------

    def _spent_rho(self, node: LocalNode) -> float | None:
        status = node.status() or {}
        return (status.get("budget") or {}).get("rho_spent")

    def _snapshot_counters(self) -> None:
        for node in self.nodes + self.outsiders:
            if node.name not in self.running and node not in self.outsiders:
                continue
            status = node.status() or {}
            total = ((status.get("network") or {}).get("total")) or {}
            self._record(metric="bytes_sent", node=node.name, value=total.get("bytes_sent", 0))
            self._record(metric="bytes_received", node=node.name, value=total.get("bytes_received", 0))
            self._record(metric="gossip_bytes_sent", node=node.name, value=total.get("gossip_bytes_sent", 0))
            for reason, count in ((status.get("rejections") or {}).get("by_reason") or {}).items():
                self._record(metric=f"rejected:{reason}", node=node.name, value=count)
            for reason, count in ((total.get("errors")) or {}).items():
                self._record(metric=f"network_error:{reason}", node=node.name, value=count)
            for event, count in ((status.get("network") or {}).get("gossip") or {}).items():
                if event.startswith("rejected"):
                    self._record(metric=f"gossip_{event}", node=node.name, value=count)

    def _final_snapshot(self) -> None:
        self._snapshot_counters()
        budgets = {}
        for node in self.nodes:
            with open_node(node.config_path) as opened:
                status = opened.ledger.status()
                stored = opened.store.count_releases()
            budgets[node.name] = {"epsilon_spent": status.epsilon_spent, "rho_spent": status.rho_spent,
                                  "releases": status.releases, "stored": stored}
            self._record(metric="epsilon_spent", node=node.name, value=round(status.epsilon_spent, 6))
            self._record(metric="rho_spent", node=node.name, value=status.rho_spent)
            self._record(metric="own_releases", node=node.name, value=status.releases)
            self._record(metric="releases_stored", node=node.name, value=stored)
        self.summary["budgets"] = budgets
        self.summary["written_behind"] = sorted(self.written_behind)
        for outsider in self.outsiders:
            rid = self.summary["outsiders"][self.outsiders.index(outsider)]["release_id"]
            holders = [n.name for n in self.nodes if _store_has(n, rid)]
            self.summary["outsiders"][self.outsiders.index(outsider)]["stored_by_members"] = holders
            self._record(metric="outsider_release_holders", node=outsider.name, value=len(holders))
        rejections: dict[str, int] = {}
        for row in self.rows:
            if row["metric"].startswith("rejected:") and row["event"] == "final":
                rejections[row["metric"]] = rejections.get(row["metric"], 0) + int(row["value"])
        self.summary["rejections"] = rejections

    def _record(self, *, metric: str, value, node: str = "") -> None:
        event = self.event
        self.rows.append({
            "run": self.label,
            "t_s": round(time.monotonic() - self.started_at, 2),
            "event": event.index if event is not None else "final",
            "action": event.action if event is not None else "final",
            "metric": metric,
            "node": node,
            "value": value,
        })

    def _previous_event(self, event: Event) -> str:
        earlier = [e for e in self.scenario.events if e.index < event.index and e.action not in ("wait", "sleep")]
        return earlier[-1].describe() if earlier else ""

    def _say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self.started_at:7.1f} s] {self.label}: {message}")


def open_node_data_path(node: LocalNode) -> Path:
    with open_node(node.config_path) as opened:
        return opened.config.data.path


def _store_has(node: LocalNode, release_hex: str) -> bool:
    with open_node(node.config_path) as opened:
        return opened.store.has_release(bytes.fromhex(release_hex))

