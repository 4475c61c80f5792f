"""The simulator: scenario validation, splits, topologies, misbehaving releases, and one end-to-end run.

The end-to-end test starts real node processes on 127.0.0.1 (three of them,
on six columns of UCI Adult so that model fits take seconds), crashes one,
restarts it and lets the third join late, then checks convergence, the
restarted node's budget and the report files. The relay test needs root
(network namespaces) and is skipped without it.
"""

from __future__ import annotations

import csv
import gzip
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from p2psynth.domain import Measurement
from p2psynth.release import Release
from p2psynth.schema import load_schema
from p2psynth.validation import plausibility_problem
from simulations.nodes import components, topology_edges
from simulations.releases import ReleaseRecord, distort
from simulations.runner import Expectations
from simulations.scenario import ScenarioError, load_scenario
from simulations.splits import Table, split_rows

COLUMNS = ["age", "workclass", "education", "sex", "hours-per-week", "income"]
# Field positions of COLUMNS in the raw UCI lines.
POSITIONS = [0, 1, 3, 9, 12, 14]

MINIMAL = """
format_version = 1
name = "t"
[data]
train = "{train}"
schema = "{schema}"
holdout = "none"
[nodes]
count = 3
{extra}
[[events]]
action = "publish"
[[events]]
action = "start"
[[events]]
action = "wait"
"""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, adult_data_path, adult_schema_path) -> dict[str, Path]:
    """Six columns of Adult: a schema cut from the shipped one, 6,000 training and 2,000 held-out rows."""
    folder = tmp_path_factory.mktemp("small-adult")
    text = adult_schema_path.read_text(encoding="utf-8")
    head, *blocks = text.split("[[columns]]")
    kept = [b for b in blocks if any(f'name = "{c}"' in b.split("\n", 3)[1] for c in COLUMNS)]
    schema = folder / "small.schema.toml"
    schema.write_text(head.replace('name = "uci-adult"', 'name = "uci-adult-six"')
                      + "".join("[[columns]]" + b for b in kept), encoding="utf-8")
    assert load_schema(schema).domain.attributes == tuple(COLUMNS)

    def cut(source: Path, target: Path, *, skip: int, rows: int) -> None:
        with gzip.open(source, "rt", encoding="utf-8") as handle:
            lines = [line for line in handle.read().splitlines()[skip:] if line.strip()][:rows]
        fields = [line.split(",") for line in lines]
        target.write_text("\n".join(",".join(f[i] for i in POSITIONS) for f in fields) + "\n", encoding="utf-8")

    cut(adult_data_path, folder / "train.csv", skip=0, rows=6000)
    cut(adult_data_path.parent / "adult.test.gz", folder / "holdout.csv", skip=1, rows=2000)
    return {"schema": schema, "train": folder / "train.csv", "holdout": folder / "holdout.csv"}


def _write(tmp_path: Path, small_data: dict, *, extra: str = "", events: str | None = None) -> Path:
    text = MINIMAL.format(train=small_data["train"], schema=small_data["schema"], extra=extra)
    if events is not None:
        text = text[: text.index("[[events]]")] + events
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return path


# Scenario validation -----------------------------------------------------------


def test_minimal_scenario_loads(tmp_path, small_data):
    scenario = load_scenario(_write(tmp_path, small_data))
    assert scenario.nodes.names == ["node-1", "node-2", "node-3"]
    assert [e.action for e in scenario.events] == ["publish", "start", "wait"]
    assert scenario.data.holdout is None
    assert not scenario.uses_partition


PUBLISH = '[[events]]\naction = "publish"\n'


@pytest.mark.parametrize(
    ("edit", "events", "message"),
    [
        (("[nodes]", "[nodes]\ncolour = 1"), None, "unknown key(s) ['colour']"),
        (("count = 3", "count = 0"), None, "count = 0"),
        (("count = 3", "count = 3\nrelease_epsilon = 5.0"), None, "exceeds lifetime_epsilon"),
        (("count = 3", "count = 3\nrelease_epsilon = [1.0, 1.0]"), None, "2 values for 3 nodes"),
        (None, PUBLISH + '[[events]]\naction = "restart"\nnodes = ["node-1"]\n', "never ran"),
        (None, '[[events]]\naction = "publish"\nnodes = ["node-9"]\n', "no node named 'node-9'"),
        (None, '[[events]]\naction = "start"\n[[events]]\naction = "wait"\n', "no 'publish' event"),
        (None, PUBLISH + '[[events]]\naction = "jump"\n', "action 'jump'"),
        (None, PUBLISH + '[[events]]\naction = "partition"\ngroups = [["node-1", "node-2"], ["node-2", "node-3"]]\n',
         "appears in two groups"),
        (None, PUBLISH + '[[events]]\naction = "partition"\ngroups = [["node-1"], ["node-2"]]\n', "leave out node-3"),
        (None, PUBLISH + '[[events]]\naction = "heal"\n', "no partition to heal"),
        (None, PUBLISH + '[[events]]\naction = "misbehave"\nkind = "inflate_all"\n', "exactly one node"),
        (None, PUBLISH + '[[events]]\naction = "sleep"\nseconds = -1\n', "expected a positive number"),
    ],
)
def test_invalid_scenario_rejected(tmp_path, small_data, edit, events, message):
    path = _write(tmp_path, small_data, events=events)
    if edit is not None:
        path.write_text(path.read_text().replace(*edit))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_sweep_makes_one_run_per_value(tmp_path, small_data):
    path = _write(tmp_path, small_data)
    path.write_text(path.read_text().replace("[nodes]", "[sweep]\nnodes = [2, 4]\n\n[nodes]"))
    variants = load_scenario(path).variants()
    assert [label for label, _ in variants] == ["nodes=2", "nodes=4"]
    assert variants[1][1].nodes.count == 4
    assert len(variants[1][1].nodes.release_epsilons) == 4


def test_shipped_scenarios_load():
    from p2psynth.simulate import shipped_scenarios

    shipped = shipped_scenarios()
    for name in ("baseline-10", "partition-heal", "crash-restart", "late-joiner", "inflating-member",
                 "inflating-member-bounded", "scaling"):
        assert name in shipped
        assert load_scenario(shipped[name]).name == name


# Splits and topologies -------------------------------------------------------------


@pytest.fixture(scope="module")
def table(small_data) -> tuple[Table, object]:
    from simulations.splits import load_table

    schema = load_schema(small_data["schema"])
    loaded = load_table(small_data["train"], schema, skip_rows=0, scratch=small_data["train"].parent / "scratch.csv")
    return loaded, schema


def test_iid_split_covers_rows_once(table):
    from simulations.scenario import SplitSpec

    loaded, schema = table
    parts = split_rows(loaded, schema, SplitSpec(kind="iid", shares=(2.0, 1.0, 1.0)), count=3,
                       rng=np.random.default_rng(1))
    assert sum(len(p) for p in parts) == len(loaded.lines)
    assert len(np.unique(np.concatenate(parts))) == len(loaded.lines)
    assert len(parts[0]) == 3000


def test_split_is_repeatable_with_seed(table):
    from simulations.scenario import SplitSpec

    loaded, schema = table
    spec = SplitSpec(kind="dirichlet", column="income", alpha=1.0)
    first = split_rows(loaded, schema, spec, count=4, rng=np.random.default_rng(9))
    second = split_rows(loaded, schema, spec, count=4, rng=np.random.default_rng(9))
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_by_column_split_skews_column(table):
    from simulations.scenario import SplitSpec

    loaded, schema = table
    parts = split_rows(loaded, schema, SplitSpec(kind="by_column", column="age"), count=3,
                       rng=np.random.default_rng(2))
    age = loaded.codes[:, schema.domain.index("age")]
    means = [float(age[p].mean()) for p in parts]
    assert means[0] < means[1] < means[2]


def test_dirichlet_split_varies_label_mix(table):
    from simulations.scenario import SplitSpec

    loaded, schema = table
    parts = split_rows(loaded, schema, SplitSpec(kind="dirichlet", column="income", alpha=0.5), count=4,
                       rng=np.random.default_rng(3))
    income = loaded.codes[:, schema.domain.index("income")]
    shares = [float(income[p].mean()) for p in parts]
    assert max(shares) - min(shares) > 0.2


def test_line_topology_breaks_at_crash():
    names = ["node-1", "node-2", "node-3"]
    edges = [(names[a], names[b]) for a, b in topology_edges("line", 3, degree=1, rng=np.random.default_rng(0))]
    assert len(components(names, edges)) == 1
    live = ["node-1", "node-3"]
    assert len(components(live, [(a, b) for a, b in edges if a in live and b in live])) == 2


def test_random_topology_connected():
    edges = topology_edges("random", 25, degree=2, rng=np.random.default_rng(4))
    names = [str(i) for i in range(25)]
    assert len(components(names, [(str(a), str(b)) for a, b in edges])) == 1
    assert all(sum(1 for a, _ in edges if a == node) >= 2 for node in range(25))


# Misbehaving releases -----------------------------------------------------------


def _release(measurements) -> Release:
    return Release(schema_fingerprint="ab" * 32, author=b"\x01" * 32, sequence=1, epoch=1, created_at_ms=0,
                   rho=sum(1 / (2 * m.sigma**2) for m in measurements), measurements=tuple(measurements))


def _honest(rng: np.random.Generator) -> list[Measurement]:
    a = rng.integers(0, 3, 5000)
    b = rng.integers(0, 4, 5000)
    noise = lambda shape: rng.normal(0, 5, shape).round().astype(np.int64)  # noqa: E731
    return [
        Measurement(("a",), np.bincount(a, minlength=3) + noise(3), 5.0),
        Measurement(("b",), np.bincount(b, minlength=4) + noise(4), 5.0),
        Measurement(("a", "b"), np.bincount(a * 4 + b, minlength=12).reshape(3, 4) + noise((3, 4)), 5.0),
    ]


@pytest.mark.parametrize(
    ("kind", "max_rows", "caught"),
    [("inflate_one", None, True), ("negative", None, True), ("inflate_all", None, False),
     ("inflate_all", 5500, True)],
)
def test_distortion_against_plausibility(kind, max_rows, caught):
    honest = _honest(np.random.default_rng(5))
    assert plausibility_problem(_release(honest), max_rows=max_rows) is None
    distorted = distort(honest, kind=kind, factor=3.0)
    problem = plausibility_problem(_release(distorted), max_rows=max_rows)
    assert (problem is not None) == caught


def test_rejected_release_stays_with_author():
    expect = Expectations()
    expect.add(ReleaseRecord("r1", "node-1", 1, 1, 0.1))
    expect.add(ReleaseRecord("r2", "node-2", 1, 1, 0.1))
    expect.add(ReleaseRecord("r3", "node-2", 2, 2, 0.1, expected_rejection="implausible"))
    targets = expect.targets({"node-1", "node-2"})
    assert targets["node-1"] == {"r1", "r2"}
    assert targets["node-2"] == {"r1", "r2", "r3"}
    assert expect.current(targets["node-2"]) == {"r1", "r3"}
    assert expect.current(targets["node-1"]) == {"r1", "r2"}


# Relay between namespaces ---------------------------------------------------------


@pytest.mark.skipif(__import__("simulations.partition", fromlist=["x"]).namespaces_available() is not None,
                    reason="network namespaces need root and the ip command")
def test_relay_cuts_and_heals():
    from simulations.partition import Relay, _ip, _socket_in

    names = ["p2psim-test-a", "p2psim-test-b"]
    for name in names:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
    relay = Relay()
    # An echo server inside namespace b.
    server = _socket_in(names[1])
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(10)
        port = server.getsockname()[1]

        def echo() -> None:
            for _ in range(2):
                connection, _ = server.accept()
                with connection:
                    while data := connection.recv(1024):
                        connection.sendall(data)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        relay_port = relay.forward(listen_namespace=None, target_namespace=names[1], target_port=port,
                                   pair=frozenset(("a", "b")), avoid_ports=set())

        client = socket.create_connection(("127.0.0.1", relay_port), timeout=10)
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
        assert relay.block({frozenset(("a", "b"))}) == 1
        assert _closed(client)
        client.close()

        refused = socket.create_connection(("127.0.0.1", relay_port), timeout=10)
        refused.sendall(b"x")
        assert _closed(refused)
        refused.close()

        relay.block(set())
        healed = socket.create_connection(("127.0.0.1", relay_port), timeout=10)
        healed.sendall(b"again")
        assert healed.recv(16) == b"again"
        healed.close()
    finally:
        server.close()
        relay.close()
        for name in names:
            _ip("netns", "delete", name)


def _closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(16) == b""
    except ConnectionResetError:
        return True


# End to end ------------------------------------------------------------------------

CRASH_AND_JOIN = """
format_version = 1
name = "ci-crash-join"
description = "Three nodes: two start, one crashes and restarts, the third joins late."
seed = 11

[data]
train = "{train}"
schema = "{schema}"
holdout = "{holdout}"
target = "income"
eval_rows = 2000

[nodes]
count = 3
release_epsilon = 1.0
anti_entropy_s = [0.5, 1.0]

[[events]]
action = "publish"
[[events]]
action = "start"
nodes = ["node-1", "node-2"]
[[events]]
action = "wait"
timeout_s = 120
[[events]]
action = "crash"
nodes = ["node-2"]
[[events]]
action = "publish"
nodes = ["node-1"]
epsilon = 0.5
[[events]]
action = "restart"
nodes = ["node-2"]
[[events]]
action = "start"
nodes = ["node-3"]
[[events]]
action = "wait"
timeout_s = 120
[[events]]
action = "evaluate"
"""


def test_crash_and_late_join_end_to_end(tmp_path, small_data):
    from p2psynth.simulate import run_scenario

    path = tmp_path / "ci.toml"
    path.write_text(CRASH_AND_JOIN.format(**{k: str(v) for k, v in small_data.items()}), encoding="utf-8")
    lines: list[str] = []
    folder = run_scenario(path, out_dir=tmp_path / "reports", progress=lines.append)

    for name in ("summary.md", "measurements.csv", "summary.json", "convergence.png", "quality.png",
                 "rejections.png", "traffic.png"):
        assert (folder / name).is_file(), name
    assert any("converged after" in line for line in lines)

    summary = json.loads((folder / "summary.json").read_text())["runs"]["run"]
    assert [w["converged"] for w in summary["waits"]] == [True, True]
    assert summary["budget_after_restart"]["node-2"]["unchanged"] is True
    assert summary["budget_after_restart"]["node-2"]["after"] > 0
    # Three first releases plus node-1's second; the late joiner and the restarted node hold all four.
    assert {name: b["stored"] for name, b in summary["budgets"].items()} == {"node-1": 4, "node-2": 4, "node-3": 4}
    assert summary["budgets"]["node-1"]["releases"] == 2
    assert len({q["model"] for q in summary["quality"].values()}) == 1

    with open(folder / "measurements.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r["metric"] == "convergence_s"]) == 2
    auc = {r["node"]: float(r["value"]) for r in rows if r["metric"] == "auc"}
    assert set(auc) == {"node-1", "node-2", "node-3"}
    assert all(0.5 < value <= 1.0 for value in auc.values())
    tvd = [float(r["value"]) for r in rows if r["metric"] == "tvd_2way"]
    assert tvd and all(0.0 < value < 0.5 for value in tvd)
    assert "| node-3 |" in (folder / "summary.md").read_text()
