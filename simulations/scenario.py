"""Scenario files: what a simulated network looks like and what happens to it.

A scenario is a TOML file (the shipped ones are in ``scenarios/``)::

    format_version = 1
    name = "crash-restart"
    seed = 7

    [data]                       # defaults: the bundled raw UCI Adult files
    train = "adult"              # "adult" or a CSV path relative to this file
    schema = "adult"             # "adult" or a schema TOML path
    holdout = "adult-test"       # held-out real rows for quality; "none" to skip quality
    target = "income"            # column the AUC check predicts

    [nodes]
    count = 4
    release_epsilon = 1.0        # or a list with one value per node
    lifetime_epsilon = 4.0

    [split]
    kind = "iid"                 # iid | by_column | dirichlet

    [topology]
    kind = "full"                # full | line | ring | random

    [[events]]
    action = "publish"           # on a stopped node: a seeded offline measurement
    [[events]]
    action = "start"
    [[events]]
    action = "wait"              # until every live node holds every release it can reach

The loader is strict. An unknown key, a wrong type, a node name that does not
exist or an event that cannot apply (restarting a node that never ran, a
partition whose groups overlap) raises ``ScenarioError``, and the message
names the file, the entry and the fix. Checks that need the timeline (which nodes are running at
each event) run here too, by replaying the timeline on node states, so a
scenario fails before any process starts.

TOML was chosen because node.toml, members.toml and the schema are TOML: an
operator who writes one can write the others.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2psynth.errors import ConfigError

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent

# Names that stand for the data shipped in the repository.
BUNDLED_DATA = {
    "adult": REPO_ROOT / "data" / "adult" / "adult.data.gz",
    "adult-test": REPO_ROOT / "data" / "adult" / "adult.test.gz",
}
BUNDLED_SCHEMAS = {"adult": REPO_ROOT / "node_config" / "adult.schema.toml"}
# adult.test starts with a line that is not a row.
BUNDLED_SKIP_ROWS = {"adult": 0, "adult-test": 1}

SPLIT_KINDS = ("iid", "by_column", "dirichlet")
TOPOLOGY_KINDS = ("full", "line", "ring", "random")
MISBEHAVIOUR_KINDS = ("inflate_all", "inflate_one", "negative")
ACTIONS = (
    "start", "publish", "crash", "stop", "restart", "wait", "sleep",
    "partition", "heal", "misbehave", "outsider", "evaluate",
)
MAX_NODES = 200
MAX_SLEEP_S = 3600.0


class ScenarioError(ConfigError):
    """A scenario file is invalid or its timeline cannot be carried out."""


@dataclass(frozen=True)
class DataSpec:
    train: Path
    train_skip_rows: int
    schema: Path
    holdout: Path | None
    holdout_skip_rows: int
    target: str | None
    # 0 keeps every training row; otherwise a seeded subsample of this many rows.
    train_rows: int
    # Synthetic rows drawn from each distinct model for the quality check.
    eval_rows: int
    # 0 keeps every held-out row.
    holdout_rows: int


@dataclass(frozen=True)
class NodesSpec:
    count: int
    release_epsilons: tuple[float, ...]  # one per node
    lifetime_epsilon: float
    delta: float
    # members.toml max_rows: None leaves it out; "declared" writes each node's true size times max_rows_margin.
    max_rows: str | None
    max_rows_margin: float
    anti_entropy_s: tuple[float, float]
    start_timeout_s: float
    # How partition events cut links: "block" (each node's API) or "namespaces" (a relay; root).
    partition: str = "block"
    # The nodes' publish strategy ("rounds" or "mst") and how long a round waits for the others.
    strategy: str = "rounds"
    round_wait_s: float = 30.0

    @property
    def names(self) -> list[str]:
        return [f"node-{i + 1}" for i in range(self.count)]


@dataclass(frozen=True)
class SplitSpec:
    kind: str
    column: str | None = None
    alpha: float = 1.0
    # Relative table sizes, one per node; equal when empty.
    shares: tuple[float, ...] = ()


@dataclass(frozen=True)
class TopologySpec:
    kind: str
    degree: int = 2


@dataclass(frozen=True)
class Event:
    """One step of the timeline; fields not used by an action keep their defaults."""

    index: int
    action: str
    nodes: tuple[str, ...] = ()
    epsilon: float | None = None
    timeout_s: float = 600.0
    seconds: float = 0.0
    groups: tuple[tuple[str, ...], ...] = ()
    kind: str = ""
    factor: float = 1.0
    connect_to: tuple[str, ...] = ()
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        target = ", ".join(self.nodes) if self.nodes else ""
        if self.action == "partition":
            target = " | ".join(",".join(g) for g in self.groups)
        elif self.action == "misbehave":
            target = f"{self.nodes[0]} {self.kind} x{self.factor:g}"
        elif self.action == "sleep":
            target = f"{self.seconds:g} s"
        return f"{self.action} {target}".strip()


@dataclass(frozen=True)
class Sweep:
    """One variable run over several values; each value is a fresh network."""

    variable: str  # "nodes" or "epsilon"
    values: tuple[float, ...]


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    seed: int
    data: DataSpec
    nodes: NodesSpec
    split: SplitSpec
    topology: TopologySpec
    events: tuple[Event, ...]
    sweep: Sweep | None = None
    uses_partition: bool = field(default=False)

    def variants(self) -> list[tuple[str, "Scenario"]]:
        """Return ``(label, scenario)`` for each run: one per sweep value, or the scenario itself."""
        if self.sweep is None:
            return [("run", self)]
        runs = []
        for value in self.sweep.values:
            if self.sweep.variable == "nodes":
                count = int(value)
                nodes = replace(
                    self.nodes,
                    count=count,
                    release_epsilons=_resize(self.nodes.release_epsilons, count),
                )
                variant = replace(self, nodes=nodes, sweep=None)
                runs.append((f"nodes={count}", variant))
            else:
                nodes = replace(self.nodes, release_epsilons=(float(value),) * self.nodes.count)
                runs.append((f"epsilon={value:g}", replace(self, nodes=nodes, sweep=None)))
        return runs


def _resize(values: tuple[float, ...], count: int) -> tuple[float, ...]:
    return values[:count] if len(values) >= count else values + (values[-1],) * (count - len(values))


# Loading -------------------------------------------------------------------


def load_scenario(path: Path, *, seed: int | None = None) -> Scenario:
    """Read and check a scenario file; ``seed`` overrides the file's seed."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} not found; give a path or a shipped scenario name") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {path} is not valid TOML: {exc}") from exc

    reader = _Reader(path)
    reader.keys(raw, "the top level", {"format_version", "name", "description", "seed", "data", "nodes",
                                       "split", "topology", "events", "sweep"})
    version = reader.integer(raw, "format_version", "the top level", minimum=1)
    if version != FORMAT_VERSION:
        raise ScenarioError(f"{path}: format_version = {version}; this version of p2psynth reads {FORMAT_VERSION}")
    name = reader.string(raw, "name", "the top level", default=path.stem)
    description = reader.string(raw, "description", "the top level", default="")
    file_seed = reader.integer(raw, "seed", "the top level", default=0, minimum=0)

    base = path.resolve().parent
    data = _load_data(reader, reader.table(raw, "data"), base)
    nodes = _load_nodes(reader, reader.table(raw, "nodes"))
    split = _load_split(reader, reader.table(raw, "split"), nodes.count)
    topology = _load_topology(reader, reader.table(raw, "topology"), nodes.count)
    sweep = _load_sweep(reader, raw.get("sweep"))
    if sweep is not None and sweep.variable == "nodes" and split.shares:
        raise ScenarioError(f"{path}: [split] shares cannot be combined with a sweep over nodes; remove one")

    raw_events = raw.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ScenarioError(f"{path}: no [[events]]; a scenario needs at least 'publish', 'start' and 'wait'")
    largest = max([nodes.count] + ([int(v) for v in sweep.values] if sweep and sweep.variable == "nodes" else []))
    events = tuple(_load_event(reader, i + 1, entry) for i, entry in enumerate(raw_events))

    scenario = Scenario(
        path=path,
        name=name,
        description=description,
        seed=file_seed if seed is None else int(seed),
        data=data,
        nodes=nodes,
        split=split,
        topology=topology,
        events=events,
        sweep=sweep,
        uses_partition=any(e.action in ("partition", "heal") for e in events),
    )
    for _, variant in scenario.variants():
        check_timeline(variant)
    if largest > MAX_NODES:
        raise ScenarioError(f"{path}: {largest} nodes; the simulator runs at most {MAX_NODES}")
    return scenario


def _load_data(reader: "_Reader", table: dict, base: Path) -> DataSpec:
    where = "[data]"
    reader.keys(table, where, {"train", "schema", "holdout", "holdout_skip_rows", "train_skip_rows", "target",
                               "train_rows", "eval_rows", "holdout_rows"})
    train_name = reader.string(table, "train", where, default="adult")
    schema_name = reader.string(table, "schema", where, default="adult")
    holdout_name = reader.string(table, "holdout", where, default="adult-test" if train_name == "adult" else "none")

    train = _data_path(reader, train_name, base, "train")
    schema = BUNDLED_SCHEMAS.get(schema_name) or _existing(reader, base / schema_name, "schema")
    holdout = None if holdout_name == "none" else _data_path(reader, holdout_name, base, "holdout")
    target = reader.string(table, "target", where, default="income" if schema_name == "adult" else "") or None
    if holdout is not None and target is None:
        raise ScenarioError(f"{reader.path}: [data] holdout is set but target is not; name the column to predict")
    return DataSpec(
        train=train,
        train_skip_rows=reader.integer(table, "train_skip_rows", where, default=BUNDLED_SKIP_ROWS.get(train_name, 0),
                                       minimum=0),
        schema=schema,
        holdout=holdout,
        holdout_skip_rows=reader.integer(table, "holdout_skip_rows", where,
                                         default=BUNDLED_SKIP_ROWS.get(holdout_name, 0), minimum=0),
        target=target,
        train_rows=reader.integer(table, "train_rows", where, default=0, minimum=0),
        eval_rows=reader.integer(table, "eval_rows", where, default=5000, minimum=100, maximum=1_000_000),
        holdout_rows=reader.integer(table, "holdout_rows", where, default=0, minimum=0),
    )


def _data_path(reader: "_Reader", name: str, base: Path, what: str) -> Path:
    if name in BUNDLED_DATA:
        return BUNDLED_DATA[name]
    return _existing(reader, base / name, what)


def _existing(reader: "_Reader", path: Path, what: str) -> Path:
    if not path.is_file():
        raise ScenarioError(
            f"{reader.path}: [data] {what} file {path} not found; paths are relative to the scenario file, "
            f"or use a bundled name ({', '.join(sorted(BUNDLED_DATA))})"
        )
    return path


def _load_nodes(reader: "_Reader", table: dict) -> NodesSpec:
    where = "[nodes]"
    reader.keys(table, where, {"count", "release_epsilon", "lifetime_epsilon", "delta", "max_rows",
                               "max_rows_margin", "anti_entropy_s", "start_timeout_s", "partition",
                               "strategy", "round_wait_s"})
    count = reader.integer(table, "count", where, minimum=1, maximum=MAX_NODES)
    raw_epsilon = table.get("release_epsilon", 1.0)
    if isinstance(raw_epsilon, list):
        if len(raw_epsilon) != count:
            raise ScenarioError(
                f"{reader.path}: [nodes] release_epsilon lists {len(raw_epsilon)} values for {count} nodes; "
                "give one value per node or a single number"
            )
        epsilons = tuple(reader.positive_number(v, f"{where} release_epsilon") for v in raw_epsilon)
    else:
        epsilons = (reader.positive_number(raw_epsilon, f"{where} release_epsilon"),) * count
    lifetime = reader.positive_number(table.get("lifetime_epsilon", 4.0), f"{where} lifetime_epsilon")
    if max(epsilons) > lifetime:
        raise ScenarioError(
            f"{reader.path}: [nodes] release_epsilon {max(epsilons):g} exceeds lifetime_epsilon {lifetime:g}"
        )
    delta = reader.positive_number(table.get("delta", 1e-9), f"{where} delta")
    if delta >= 1:
        raise ScenarioError(f"{reader.path}: [nodes] delta = {delta:g}; use a value below 1, such as 1e-9")

    max_rows = reader.string(table, "max_rows", where, default="none")
    if max_rows not in ("none", "declared"):
        raise ScenarioError(
            f"{reader.path}: [nodes] max_rows = {max_rows!r}; use \"none\" (members.toml has no bound) or "
            "\"declared\" (each member's true size times max_rows_margin)"
        )
    anti_entropy = table.get("anti_entropy_s", [1.0, 2.0])
    if (not isinstance(anti_entropy, list) or len(anti_entropy) != 2
            or not 0 < _number(anti_entropy[0]) <= _number(anti_entropy[1])):
        raise ScenarioError(
            f"{reader.path}: [nodes] anti_entropy_s = {anti_entropy!r}; give [min, max] seconds with 0 < min <= max"
        )
    partition = reader.string(table, "partition", where, default="block")
    if partition not in ("block", "namespaces"):
        raise ScenarioError(
            f"{reader.path}: [nodes] partition = {partition!r}; use \"block\" (nodes block each other through "
            "their API) or \"namespaces\" (a relay between network namespaces; needs root)"
        )
    strategy = reader.string(table, "strategy", where, default="rounds")
    if strategy not in ("rounds", "mst"):
        raise ScenarioError(
            f"{reader.path}: [nodes] strategy = {strategy!r}; use \"rounds\" (three network-wide rounds per "
            "publish) or \"mst\" (one release per publish)"
        )
    return NodesSpec(
        partition=partition,
        strategy=strategy,
        round_wait_s=reader.positive_number(table.get("round_wait_s", 30.0), f"{where} round_wait_s"),
        count=count,
        release_epsilons=epsilons,
        lifetime_epsilon=lifetime,
        delta=delta,
        max_rows=None if max_rows == "none" else max_rows,
        max_rows_margin=reader.positive_number(table.get("max_rows_margin", 1.1), f"{where} max_rows_margin"),
        anti_entropy_s=(float(anti_entropy[0]), float(anti_entropy[1])),
        start_timeout_s=reader.positive_number(table.get("start_timeout_s", 180.0), f"{where} start_timeout_s"),
    )


def _load_split(reader: "_Reader", table: dict, count: int) -> SplitSpec:
    where = "[split]"
    reader.keys(table, where, {"kind", "column", "alpha", "shares"})
    kind = reader.string(table, "kind", where, default="iid")
    if kind not in SPLIT_KINDS:
        raise ScenarioError(f"{reader.path}: [split] kind = {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
    column = reader.string(table, "column", where, default="") or None
    if kind in ("by_column", "dirichlet") and column is None:
        raise ScenarioError(f"{reader.path}: [split] kind = {kind!r} needs column = the column to skew by")
    shares_raw = table.get("shares", [])
    if not isinstance(shares_raw, list):
        raise ScenarioError(f"{reader.path}: [split] shares must be a list of numbers, one per node")
    shares = tuple(reader.positive_number(v, f"{where} shares") for v in shares_raw)
    if shares and len(shares) != count:
        raise ScenarioError(f"{reader.path}: [split] shares lists {len(shares)} values for {count} nodes")
    return SplitSpec(
        kind=kind,
        column=column,
        alpha=reader.positive_number(table.get("alpha", 1.0), f"{where} alpha"),
        shares=shares,
    )


def _load_topology(reader: "_Reader", table: dict, count: int) -> TopologySpec:
    where = "[topology]"
    reader.keys(table, where, {"kind", "degree"})
    kind = reader.string(table, "kind", where, default="full")
    if kind not in TOPOLOGY_KINDS:
        raise ScenarioError(f"{reader.path}: [topology] kind = {kind!r}; use one of {', '.join(TOPOLOGY_KINDS)}")
    degree = reader.integer(table, "degree", where, default=2, minimum=1)
    return TopologySpec(kind=kind, degree=degree)


def _load_sweep(reader: "_Reader", table: Any) -> Sweep | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ScenarioError(f"{reader.path}: [sweep] must be a table")
    reader.keys(table, "[sweep]", {"nodes", "epsilon"})
    if len(table) != 1:
        raise ScenarioError(f"{reader.path}: [sweep] must vary exactly one of nodes or epsilon")
    variable, values = next(iter(table.items()))
    if not isinstance(values, list) or not values:
        raise ScenarioError(f"{reader.path}: [sweep] {variable} must be a non-empty list")
    if variable == "nodes":
        parsed = tuple(float(reader.integer({"v": v}, "v", "[sweep] nodes", minimum=1, maximum=MAX_NODES))
                       for v in values)
    else:
        parsed = tuple(reader.positive_number(v, "[sweep] epsilon") for v in values)
    return Sweep(variable=variable, values=parsed)


def _load_event(reader: "_Reader", index: int, entry: Any) -> Event:
    where = f"event {index}"
    if not isinstance(entry, dict):
        raise ScenarioError(f"{reader.path}: {where} must be a table ([[events]])")
    action = entry.get("action")
    if action not in ACTIONS:
        raise ScenarioError(f"{reader.path}: {where} has action {action!r}; use one of {', '.join(ACTIONS)}")
    where = f"event {index} ({action})"
    allowed = {
        "start": {"nodes"}, "stop": {"nodes"}, "crash": {"nodes"}, "restart": {"nodes"},
        "publish": {"nodes", "epsilon"},
        "wait": {"timeout_s"},
        "sleep": {"seconds"},
        "partition": {"groups", "timeout_s"},
        "heal": set(),
        "misbehave": {"nodes", "kind", "factor", "epsilon"},
        "outsider": {"connect_to"},
        "evaluate": {"nodes"},
    }[action] | {"action", "label"}
    reader.keys(entry, where, allowed)

    nodes = _node_list(reader, entry.get("nodes", "all"), f"{where} nodes")
    event = Event(
        index=index,
        action=action,
        nodes=nodes,
        label=reader.string(entry, "label", where, default=""),
        timeout_s=reader.positive_number(entry.get("timeout_s", 600.0), f"{where} timeout_s"),
    )
    if action == "publish" and "epsilon" in entry:
        event = replace(event, epsilon=reader.positive_number(entry["epsilon"], f"{where} epsilon"))
    if action == "sleep":
        seconds = reader.positive_number(entry.get("seconds"), f"{where} seconds")
        if seconds > MAX_SLEEP_S:
            raise ScenarioError(f"{reader.path}: {where} seconds = {seconds:g}; at most {MAX_SLEEP_S:g}")
        event = replace(event, seconds=seconds)
    if action == "partition":
        groups = entry.get("groups")
        if not isinstance(groups, list) or len(groups) < 2:
            raise ScenarioError(f"{reader.path}: {where} needs groups = [[names...], [names...]] (two or more)")
        event = replace(event, groups=tuple(_node_list(reader, g, f"{where} groups") for g in groups), nodes=())
    if action == "misbehave":
        kind = reader.string(entry, "kind", where, default="")
        if kind not in MISBEHAVIOUR_KINDS:
            raise ScenarioError(f"{reader.path}: {where} kind = {kind!r}; use one of {', '.join(MISBEHAVIOUR_KINDS)}")
        if len(nodes) != 1 or nodes == ("all",):
            raise ScenarioError(f"{reader.path}: {where} names exactly one node, as nodes = [\"node-2\"]")
        factor = reader.positive_number(entry.get("factor", 3.0), f"{where} factor")
        event = replace(event, kind=kind, factor=factor,
                        epsilon=reader.positive_number(entry["epsilon"], f"{where} epsilon") if "epsilon" in entry
                        else None)
    if action == "outsider":
        event = replace(event, connect_to=_node_list(reader, entry.get("connect_to", "all"), f"{where} connect_to"),
                        nodes=())
    if action in ("wait", "sleep", "heal"):
        event = replace(event, nodes=())
    return event


def _node_list(reader: "_Reader", value: Any, where: str) -> tuple[str, ...]:
    if value == "all":
        return ("all",)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{reader.path}: {where} = {value!r}; use \"all\" or a list of names such as [\"node-1\"]")
    if len(set(value)) != len(value):
        raise ScenarioError(f"{reader.path}: {where} repeats a node: {value}")
    return tuple(value)


# Timeline check -------------------------------------------------------------


def expand_nodes(selector: tuple[str, ...], names: list[str]) -> list[str]:
    return list(names) if selector == ("all",) else list(selector)


def check_timeline(scenario: Scenario) -> None:
    """Replay the events on node states; raise ScenarioError at the first one that cannot apply."""
    names = scenario.nodes.names
    known = set(names)
    running: set[str] = set()
    ever_started: set[str] = set()
    partitioned = False
    published: set[str] = set()

    def fail(event: Event, message: str) -> None:
        raise ScenarioError(f"{scenario.path}: event {event.index} ({event.action}): {message}")

    for event in scenario.events:
        selected = expand_nodes(event.nodes, names)
        for name in selected + [n for g in event.groups for n in g] + list(event.connect_to if
                                                                           event.connect_to != ("all",) else ()):
            if name not in known:
                fail(event, f"no node named {name!r}; this run has {names[0]} to {names[-1]}")
        if event.action == "start":
            already = [n for n in selected if n in running]
            if already and event.nodes != ("all",):
                fail(event, f"{', '.join(already)} is running already")
            running |= set(selected)
            ever_started |= set(selected)
        elif event.action in ("crash", "stop"):
            down = [n for n in selected if n not in running]
            if down and event.nodes != ("all",):
                fail(event, f"{', '.join(down)} is not running")
            running -= set(selected)
        elif event.action == "restart":
            never = [n for n in selected if n not in ever_started]
            if never:
                fail(event, f"{', '.join(never)} never ran; use 'start' for a first start")
            if any(n in running for n in selected):
                fail(event, "restart applies to crashed or stopped nodes; crash or stop them first")
            running |= set(selected)
        elif event.action == "publish":
            published |= set(selected)
        elif event.action == "partition":
            flat = [n for g in event.groups for n in g]
            if len(set(flat)) != len(flat):
                fail(event, "a node appears in two groups; each node belongs to one group")
            missing = sorted(known - set(flat), key=names.index)
            if missing:
                fail(event, f"groups leave out {', '.join(missing)}; list every node in one group")
            partitioned = True
        elif event.action == "heal":
            if not partitioned:
                fail(event, "no partition to heal; add a 'partition' event before it")
            partitioned = False
        elif event.action in ("wait", "evaluate") and not running:
            fail(event, "no node is running; add a 'start' event before it")
        elif event.action == "outsider" and not running:
            fail(event, "no node is running for the outsider to connect to")
    if not published:
        raise ScenarioError(f"{scenario.path}: no 'publish' event; without releases there is no model to measure")


# Typed access with errors that name the entry ------------------------------------


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


@dataclass
class _Reader:
    path: Path

    def table(self, raw: dict, key: str) -> dict:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise ScenarioError(f"{self.path}: {key} must be a table, written [{key}]")
        return value

    def keys(self, table: dict, where: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ScenarioError(
                f"{self.path}: {where} has unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
            )

    def string(self, table: dict, key: str, where: str, *, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.path}: {where} {key} = {value!r}; expected a string")
        return value

    def integer(self, table: dict, key: str, where: str, *, default: int | None = None, minimum: int = 0,
                maximum: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.path}: {where} {key} = {value!r}; expected an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise ScenarioError(f"{self.path}: {where} {key} = {value}; expected {bounds}")
        return value

    def positive_number(self, value: Any, where: str) -> float:
        number = _number(value)
        if not number > 0 or not math.isfinite(number):
            raise ScenarioError(f"{self.path}: {where} = {value!r}; expected a positive number")
        return number
