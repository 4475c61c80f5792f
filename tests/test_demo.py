"""The demo end to end on a small dataset, its interruption, and its data split.

``test_demo_end_to_end`` runs the same path as ``p2psynth demo`` with 3 real
node processes on 127.0.0.1 and 3,000 node rows, then checks the synthetic
file against the schema and the report against the properties every report
must have. The interruption tests run the demo as a user would and stop it
with SIGTERM, or with SIGINT to its whole process group as Ctrl-C in a
terminal does. No node process may outlive it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p2psynth.daemon import _process_alive
from p2psynth.demo import _prepare_output, main, run_demo, split_rows
from p2psynth.errors import ConfigError
from p2psynth.schema import CategoricalColumn, load_schema

NODES = 3
DATA_ROWS = 3000
TEST_ROWS = 1500
SYNTHETIC_ROWS = 1500
PHASES = ("split", "start", "publish", "converge", "sample", "report", "total")
LINE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "out"
    lines: list[str] = []
    result = run_demo(
        out_dir=out_dir, nodes=NODES, rows=SYNTHETIC_ROWS, seed=7,
        data_rows=DATA_ROWS, test_rows=TEST_ROWS, progress=lines.append,
    )
    return result, lines


@pytest.fixture(scope="module")
def schema(adult_schema_path):
    return load_schema(adult_schema_path)


# The whole job --------------------------------------------------------------------


@pytest.mark.slow
def test_demo_synthetic_file(demo, schema):
    result, _ = demo
    assert result.synthetic_path == result.out_dir / "synthetic.csv"
    frame = pd.read_csv(result.synthetic_path, keep_default_na=False, na_values=[""])
    assert list(frame.columns) == list(schema.names)
    assert len(frame) == SYNTHETIC_ROWS
    for column in schema.columns:
        values = frame[column.name].dropna()
        if isinstance(column, CategoricalColumn):
            assert set(values) <= set(column.categories), column.name
        else:
            low, high = column.bounds
            assert pd.api.types.is_numeric_dtype(values), column.name
            assert values.between(low, high).all(), column.name
            if column.integer:
                assert (values == values.round()).all(), column.name
    assert frame["income"].notna().mean() > 0.9


@pytest.mark.slow
def test_demo_report_files(demo):
    result, _ = demo
    report = result.out_dir / "report"
    assert result.report_path == report / "report.md"
    for name in ("marginals.png", "pair_tvd.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = result.report_path.read_text()
    assert "3-way TVD" in text
    assert "AUC for income" in text
    assert "## Time per phase" in text
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["tvd"] == result.metrics["tvd"]
    assert tuple(metrics["phase_seconds"]) == PHASES


@pytest.mark.slow
def test_demo_metrics_sane(demo):
    result, _ = demo
    tvd = result.metrics["tvd"]
    # A marginal's TVD is at least that of any marginal it contains, so the means rise with the order.
    assert 0 < tvd["1-way"]["mean"] <= tvd["2-way"]["mean"] <= tvd["3-way"]["mean"] < 1
    assert tvd["3-way"]["count"] == 455
    ml = result.metrics["ml_efficacy"]
    assert ml["target"] == "income"
    assert ml["train_rows"] == SYNTHETIC_ROWS
    assert ml["test_rows"] == TEST_ROWS
    assert 0 <= ml["auc"] <= 1
    extra = result.metrics["extra"]
    assert extra["AUC for income trained on the real node rows (reference)"] > 0.8
    assert extra["nodes"] == NODES
    assert extra["model id"] == result.model_id
    for index in range(1, NODES + 1):
        assert extra[f"epsilon of node-{index} (delta 1e-09)"] == pytest.approx(1.0, rel=1e-6)


@pytest.mark.slow
def test_demo_phase_times(demo):
    result, lines = demo
    assert tuple(result.phase_seconds) == PHASES
    assert all(seconds > 0 for seconds in result.phase_seconds.values())
    assert result.phase_seconds["total"] >= sum(
        seconds for phase, seconds in result.phase_seconds.items() if phase != "total"
    ) - 1e-6
    assert any(f"{NODES}/{NODES} nodes running" in line for line in lines)
    assert any("converged: model" in line for line in lines)
    assert any(f"stopped {NODES} nodes" in line for line in lines)


@pytest.mark.slow
def test_demo_node_tables_skewed(demo, schema):
    result, _ = demo
    assert sum(result.rows_per_node) == DATA_ROWS
    mean_ages = []
    for index, rows in enumerate(result.rows_per_node, start=1):
        table = pd.read_csv(result.out_dir / "data" / f"node-{index}.csv", skipinitialspace=True)
        assert list(table.columns) == list(schema.names)
        assert len(table) == rows
        mean_ages.append(table["age"].mean())
    # Dirichlet shares over age groups: the nodes' age profiles differ.
    assert max(mean_ages) - min(mean_ages) > 3


@pytest.mark.slow
def test_demo_leaves_no_process(demo):
    result, _ = demo
    folders = sorted((result.out_dir / "nodes").iterdir())
    assert len(folders) == NODES
    for folder in folders:
        status = json.loads((folder / "status.json").read_text())
        assert status["running"] is False, folder.name
        assert not _process_alive(status["pid"]), folder.name


# Output folder --------------------------------------------------------------------


def test_demo_rejects_non_empty_out(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    assert main(["--out", str(out_dir), "--nodes", "2"]) == 1
    err = capsys.readouterr().err
    assert "is not empty (notes.txt)" in err
    assert "--force" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]


def test_force_removes_only_demo_files(tmp_path):
    out_dir = tmp_path / "out"
    (out_dir / "nodes" / "node-1").mkdir(parents=True)
    (out_dir / "report").mkdir()
    (out_dir / "synthetic.csv").write_text("a\n")
    (out_dir / "notes.txt").write_text("keep me")
    _prepare_output(out_dir, force=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]


def test_out_path_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _prepare_output(path, force=True)


# Interruption ---------------------------------------------------------------------


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_interrupt_stops_nodes(tmp_path, how):
    out_dir = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "p2psynth.demo", "--out", str(out_dir), "--nodes", "2",
         "--data-rows", "1000", "--test-rows", "500", "--rows", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        seen = []
        while not any("2/2 nodes running" in line for line in seen):
            try:
                seen.append(lines.get(timeout=LINE_TIMEOUT_S))
            except queue.Empty:
                pytest.fail(f"the demo printed no '2/2 nodes running' within {LINE_TIMEOUT_S} s: {seen}")
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        reader.join(timeout=10)
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()

    assert code == 130, stderr
    assert "interrupted; every node process was stopped" in stderr
    folders = sorted((out_dir / "nodes").iterdir())
    assert len(folders) == 2
    for folder in folders:
        status = json.loads((folder / "status.json").read_text())
        assert not _process_alive(status["pid"]), folder.name


# The split --------------------------------------------------------------------------


def test_split_iid_balanced():
    groups = np.random.default_rng(0).integers(0, 16, size=1000)
    parts = split_rows(groups, nodes=4, method="iid", alpha=0.5, seed=1)
    assert [part.size for part in parts] == [250, 250, 250, 250]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))


def test_split_sorted_contiguous():
    groups = np.random.default_rng(0).integers(0, 16, size=1000)
    parts = split_rows(groups, nodes=4, method="sorted", alpha=0.5, seed=1)
    assert [part.size for part in parts] == [250, 250, 250, 250]
    for lower, upper in zip(parts, parts[1:]):
        assert groups[lower].max() <= groups[upper].min()


def test_split_dirichlet_covers_rows():
    groups = np.random.default_rng(0).integers(0, 16, size=2000)
    parts = split_rows(groups, nodes=5, method="dirichlet", alpha=0.5, seed=1)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    again = split_rows(groups, nodes=5, method="dirichlet", alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    # Skewed: some node's share of some group is far from the even 1/5.
    shares = [np.bincount(groups[part], minlength=16) / np.bincount(groups, minlength=16) for part in parts]
    assert np.max(np.abs(np.array(shares) - 0.2)) > 0.3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nodes": 5, "method": "iid"}, "left node 4 without rows"),
    ({"nodes": 2, "method": "random"}, "split method 'random' is unknown"),
    ({"nodes": 0, "method": "iid"}, "at least 1 node"),
    ({"nodes": 2, "method": "dirichlet", "alpha": 0.0}, "alpha = 0.0"),
])
def test_split_rejects_bad_options(kwargs, message):
    options = {"alpha": 0.5, "seed": 1} | kwargs
    with pytest.raises(ConfigError, match=message):
        split_rows(np.zeros(3, dtype=np.int64), **options)
