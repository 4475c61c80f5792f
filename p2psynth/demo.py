"""The main job end to end: ``p2psynth demo`` and ``python -m p2psynth.demo --out DIR``.

Steps, each timed and reported as one phase:

1. **split**: the raw UCI Adult training file shipped in ``data/adult`` is cut
   into one private table per node, written as CSV files under ``DIR/data``.
   The held-out rows of ``adult.test`` (first line skipped) are the real test
   set of the quality report, and no node reads them.
2. **start**: ``p2psynth.localnet`` creates one node folder per table under
   ``DIR/nodes`` (one network, every node a member, every address on
   127.0.0.1) and starts each node as its own ``p2psynth node run`` process.
3. **publish**: every node measures its table and publishes one release,
   asked through its own local HTTP API (``Client.publish``).
4. **converge**: the demo waits until every node stores every release and
   has fitted the same model (same model id) from all of them.
5. **sample**: synthetic rows are drawn through the API of the first node
   into ``DIR/synthetic.csv``.
6. **report**: ``p2psynth.evaluate.write_report`` compares the synthetic
   rows with the held-out rows on integer codes (1-, 2- and 3-way marginal
   TVD, AUC for ``income`` when a classifier is trained on the synthetic rows)
   and writes ``DIR/report`` (report.md, metrics.json, PNG plots). The report
   also lists each member's epsilon from the model's provenance, the AUC of
   the same classifier trained on the real node rows for reference, and the
   time of each phase.

The nodes are stopped in a ``finally`` block, so Ctrl-C (KeyboardInterrupt)
and SIGTERM also stop every node process the demo started.

The split is skewed on purpose, because members of a real network do not
hold identically distributed tables. For each age group of the schema (its
numeric bins), the default split draws node shares from a symmetric
Dirichlet distribution with concentration ``alpha`` and assigns the group's
rows by those shares. A small ``alpha`` gives each node a few dominant age
groups.
Federated learning benchmarks skew labels the same way: Hsu, Qi and Brown
(2019, "Measuring the effects of non-identical data distribution for
federated visual classification", arXiv:1909.06335) draw each client's class
proportions from a Dirichlet distribution. Drawing each group's node shares
instead, as here, also makes the node tables differ in size, as members'
tables do. ``sorted`` cuts the rows, ordered by the split column, into
contiguous parts of equal size (the harshest skew), and ``iid`` deals the
rows out at random.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import logging
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from p2psynth.errors import ConfigError, P2PSynthError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_PATH = REPO_ROOT / "data" / "adult" / "adult.data.gz"
DEFAULT_TEST_PATH = REPO_ROOT / "data" / "adult" / "adult.test.gz"
DEFAULT_SCHEMA_PATH = REPO_ROOT / "node_config" / "adult.schema.toml"
TARGET = "income"
SPLITS = ("dirichlet", "sorted", "iid")
# Entries of the output folder the demo creates; --force removes only these.
OUTPUT_ENTRIES = ("data", "nodes", "report", "synthetic.csv")
EXIT_INTERRUPTED = 130


@dataclass
class DemoResult:
    """Output paths and measurements of one demo run."""

    out_dir: Path
    synthetic_path: Path
    report_path: Path
    metrics: dict
    phase_seconds: dict[str, float] = field(default_factory=dict)
    rows_per_node: list[int] = field(default_factory=list)
    model_id: str | None = None


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so ``finally`` blocks run."""


# Splitting the data ---------------------------------------------------------


def read_rows(path: Path, *, skip_rows: int = 0) -> list[str]:
    """Return the non-empty lines of a (gzip) CSV file without the first ``skip_rows`` lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read data file {path}: {exc}") from exc
    return [line for line in lines[skip_rows:] if line.strip()]


def split_rows(
    group_codes: np.ndarray,
    *,
    nodes: int,
    method: str,
    alpha: float,
    seed: int,
) -> list[np.ndarray]:
    """Assign row indices to ``nodes`` parts by ``method``; return one sorted index array per part.

    ``group_codes`` contains the split column's code of every row. Raises
    ConfigError when a part would be empty.
    """
    if method not in SPLITS:
        raise ConfigError(f"split method {method!r} is unknown; use one of {', '.join(SPLITS)}")
    if nodes < 1:
        raise ConfigError(f"nodes = {nodes}; a network needs at least 1 node")
    rng = np.random.default_rng(seed)
    rows = group_codes.shape[0]

    if method == "iid":
        owner = rng.permutation(rows) % nodes
    elif method == "sorted":
        # Random tie-breaking inside a group, so equal codes are not kept in file order.
        order = np.lexsort((rng.random(rows), group_codes))
        owner = np.empty(rows, dtype=np.int64)
        owner[order] = np.arange(rows) * nodes // rows
    else:
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ConfigError(f"alpha = {alpha!r}; the Dirichlet concentration must be a positive number")
        owner = np.empty(rows, dtype=np.int64)
        for group in np.unique(group_codes):
            members = np.flatnonzero(group_codes == group)
            shares = rng.dirichlet(np.full(nodes, alpha))
            owner[members] = rng.choice(nodes, size=members.size, p=shares)

    parts = [np.flatnonzero(owner == node) for node in range(nodes)]
    for position, part in enumerate(parts):
        if part.size == 0:
            raise ConfigError(
                f"the {method} split left node {position + 1} without rows; "
                "use more rows, fewer nodes, a larger --alpha or another --seed"
            )
    return parts


def _subset(count: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Return sorted indices of ``limit`` rows drawn without replacement (all rows if None)."""
    if limit is None or limit >= count:
        return np.arange(count)
    if limit < 1:
        raise ConfigError(f"row limit {limit} is invalid; use a positive number of rows")
    return np.sort(rng.choice(count, size=limit, replace=False))


# The demo -------------------------------------------------------------------


def run_demo(
    *,
    out_dir: Path,
    nodes: int = 5,
    rows: int = 10_000,
    seed: int = 0,
    force: bool = False,
    split: str = "dirichlet",
    split_column: str = "age",
    alpha: float = 0.5,
    data_path: Path = DEFAULT_DATA_PATH,
    test_path: Path = DEFAULT_TEST_PATH,
    test_skip_rows: int = 1,
    schema_path: Path = DEFAULT_SCHEMA_PATH,
    data_rows: int | None = None,
    test_rows: int | None = None,
    release_epsilon: float = 1.0,
    lifetime_epsilon: float = 4.0,
    delta: float = 1e-9,
    start_timeout_s: float = 180.0,
    publish_timeout_s: float = 300.0,
    converge_timeout_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo (see the module docstring) and return where its files are.

    ``data_rows`` and ``test_rows`` cap the node rows and held-out rows (a
    seeded random subset), for quick runs. Raises ConfigError for invalid
    options or a non-empty ``out_dir`` without ``force``, and
    ``LocalNetworkError`` when the nodes do not start or converge in time.
    Every node process started here is stopped before this function returns
    or raises.
    """
    from p2psynth.schema import load_schema

    started = time.monotonic()
    report_progress = _progress_printer(progress, started)
    out_dir = Path(out_dir)
    if rows < 1:
        raise ConfigError(f"rows = {rows}; ask for at least 1 synthetic row")
    _prepare_output(out_dir, force=force)
    schema = load_schema(schema_path)
    for name in (split_column, TARGET):
        schema.column(name)  # raises SchemaError naming the columns
    phases: dict[str, float] = {}

    # 1. Split the node data and encode the held-out rows.
    phase_started = time.monotonic()
    data_files, rows_per_node, train_codes, test_codes = _write_node_tables(
        out_dir / "data",
        schema=schema,
        data_path=Path(data_path),
        test_path=Path(test_path),
        test_skip_rows=test_skip_rows,
        nodes=nodes,
        split=split,
        split_column=split_column,
        alpha=alpha,
        seed=seed,
        data_rows=data_rows,
        test_rows=test_rows,
    )
    phases["split"] = time.monotonic() - phase_started
    split_text = _describe_split(split, split_column, alpha)
    report_progress(
        f"split {sum(rows_per_node):,} rows of {Path(data_path).name} over {nodes} nodes ({split_text}): "
        + ", ".join(f"{count:,}" for count in rows_per_node)
        + f"; {len(test_codes):,} held-out rows of {Path(test_path).name}"
    )

    # 2-5. The network: start, publish, converge, sample. The finally block stops it.
    from p2psynth.localnet import LocalNetwork, create_local_network

    local_nodes = create_local_network(
        out_dir / "nodes",
        data_paths=data_files,
        schema_path=Path(schema_path),
        network_id="p2psynth-demo",
        lifetime_epsilon=lifetime_epsilon,
        release_epsilon=release_epsilon,
        delta=delta,
    )
    network = LocalNetwork(local_nodes)
    synthetic_path = out_dir / "synthetic.csv"
    try:
        phases["start"] = _start_nodes(network, timeout_s=start_timeout_s, report=report_progress)
        phases["publish"] = _publish_everywhere(network, timeout_s=publish_timeout_s, report=report_progress)
        # Each node publishes round 1 when asked and rounds 2 and 3 by itself.
        phases["converge"], model_id = _wait_converged(
            network, releases=3 * len(local_nodes), timeout_s=converge_timeout_s, report=report_progress
        )
        phases["sample"], provenance = _sample(
            network, synthetic_path, rows=rows, seed=seed, report=report_progress
        )
    finally:
        _stop_network(network, report_progress)

    # 6. Quality report on codes, against the held-out rows.
    phase_started = time.monotonic()
    report_path, metrics = _write_quality_report(
        out_dir / "report",
        schema=schema,
        synthetic_path=synthetic_path,
        train_codes=train_codes,
        test_codes=test_codes,
        extra=_report_rows(
            local_nodes, rows_per_node, provenance, split_text=split_text, model_id=model_id, phases=phases
        ),
        seed=seed,
    )
    phases["report"] = time.monotonic() - phase_started
    phases["total"] = time.monotonic() - started
    _record_report_times(report_path, phases)
    report_progress(f"wrote the quality report in {phases['report']:.1f} s")

    return DemoResult(
        out_dir=out_dir,
        synthetic_path=synthetic_path,
        report_path=report_path,
        metrics=metrics,
        phase_seconds=phases,
        rows_per_node=rows_per_node,
        model_id=model_id,
    )


def _progress_printer(progress: Callable[[str], None] | None, started: float) -> Callable[[str], None]:
    def report(message: str) -> None:
        line = f"[{time.monotonic() - started:6.1f} s] {message}"
        if progress is None:
            print(line, flush=True)
        else:
            progress(line)

    return report


def _prepare_output(out_dir: Path, *, force: bool) -> None:
    """Create ``out_dir``; reject a non-empty one unless ``force``, which removes earlier demo files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} is a file; choose a folder with --out")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not force:
        listing = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise ConfigError(
            f"output folder {out_dir} is not empty ({listing}); choose another --out, "
            "or pass --force to replace the files of an earlier demo run"
        )
    for name in OUTPUT_ENTRIES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _describe_split(split: str, column: str, alpha: float) -> str:
    if split == "dirichlet":
        return f"Dirichlet alpha {alpha:g} over {column} groups"
    if split == "sorted":
        return f"sorted by {column}"
    return "iid"


def _write_node_tables(
    folder: Path,
    *,
    schema,
    data_path: Path,
    test_path: Path,
    test_skip_rows: int,
    nodes: int,
    split: str,
    split_column: str,
    alpha: float,
    seed: int,
    data_rows: int | None,
    test_rows: int | None,
) -> tuple[list[Path], list[int], np.ndarray, np.ndarray]:
    """Write one CSV per node; return the files, their row counts, the node codes and the test codes."""
    from p2psynth.encoding import encode_file

    rng = np.random.default_rng([seed, 1])
    lines = read_rows(data_path)
    codes = encode_file(data_path, schema, header=False).codes
    if len(lines) != len(codes):
        raise ConfigError(
            f"{data_path} has {len(lines)} non-empty lines but {len(codes)} encoded rows; "
            "the demo needs one row per line"
        )
    chosen = _subset(len(lines), data_rows, rng)
    codes = codes[chosen]
    parts = split_rows(
        codes[:, schema.names.index(split_column)], nodes=nodes, method=split, alpha=alpha, seed=seed
    )

    folder.mkdir(parents=True, exist_ok=True)
    header = ",".join(schema.names)
    files = []
    for position, part in enumerate(parts):
        path = folder / f"node-{position + 1}.csv"
        body = "\n".join(lines[chosen[index]] for index in part)
        path.write_text(f"{header}\n{body}\n", encoding="utf-8")
        files.append(path)

    test_codes = encode_file(test_path, schema, header=False, skip_rows=test_skip_rows).codes
    test_codes = test_codes[_subset(len(test_codes), test_rows, rng)]
    return files, [int(part.size) for part in parts], np.ascontiguousarray(codes), np.ascontiguousarray(test_codes)


def _start_nodes(network, *, timeout_s: float, report: Callable[[str], None]) -> float:
    """Start every node process and wait until each serves its API; return the seconds taken."""
    started = time.monotonic()
    count = len(network.nodes)
    report(f"starting {count} node processes (logs in {network.nodes[0].folder.parent}/*/node.log)")
    network.start_all()
    progress = _StateReporter(report)

    def all_started() -> bool:
        ready = sum(1 for node in network.nodes if _serves_api(node.status()))
        progress.update(ready, f"  {ready}/{count} nodes running")
        return ready == count

    network.wait_until(all_started, timeout_s=timeout_s, what="the nodes to start")
    return time.monotonic() - started


class _StateReporter:
    """Prints a progress line when the watched state changes, and repeats it while a wait drags on."""

    def __init__(self, report: Callable[[str], None], *, repeat_s: float = 15.0) -> None:
        self._report = report
        self._repeat_s = repeat_s
        self._started = time.monotonic()
        self._state: object = None
        self._shown_at: float | None = None

    def update(self, state: object, message: str) -> None:
        now = time.monotonic()
        if self._shown_at is None or state != self._state:
            self._state = state
            self._shown_at = now
            self._report(message)
        elif now - self._shown_at >= self._repeat_s:
            self._shown_at = now
            self._report(f"{message} (still waiting after {now - self._started:.0f} s)")


def _serves_api(status: dict | None) -> bool:
    return bool(status and status.get("running") and (status.get("api") or {}).get("port"))


def _publish_everywhere(network, *, timeout_s: float, report: Callable[[str], None]) -> float:
    """Ask every node's API to publish one release, all at once; return the seconds taken."""
    from p2psynth.client import Client
    from p2psynth.localnet import LocalNetworkError

    started = time.monotonic()
    count = len(network.nodes)
    report("publishing: each node measures its table and publishes a release through its API")

    def publish(node) -> dict:
        with Client.from_node_config(node.config_path, timeout_s=timeout_s) as client:
            return client.publish()

    # Not a ``with`` block: on an interrupt, waiting here for the requests
    # would delay stopping the nodes, and stopping them ends the requests.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=count)
    try:
        futures = {pool.submit(publish, node): node for node in network.nodes}
        done = 0
        for future in concurrent.futures.as_completed(futures, timeout=timeout_s):
            node = futures[future]
            release = future.result()
            done += 1
            report(f"  {done}/{count} published: {node.name} release {release['release_id'][:12]}")
    except concurrent.futures.TimeoutError:
        raise LocalNetworkError(f"timed out after {timeout_s:.0f} s waiting for the nodes to publish") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return time.monotonic() - started


def _wait_converged(
    network, *, releases: int, timeout_s: float, report: Callable[[str], None]
) -> tuple[float, str]:
    """Wait until all nodes hold all ``releases`` and one model fitted from all; return seconds and model id."""
    started = time.monotonic()
    nodes = len(network.nodes)
    count = releases
    report("converging: the nodes measure rounds 2 and 3, releases spread by gossip and sync, "
           "every node fits the global model")
    progress = _StateReporter(report)

    def converged() -> bool:
        statuses = [node.status() or {} for node in network.nodes]
        holding = sum(1 for s in statuses if (s.get("releases") or {}).get("stored") == count)
        complete = [s.get("model") or {} for s in statuses]
        fitted = [m.get("model_id") for m in complete if len(m.get("releases") or ()) == count]
        progress.update(
            (holding, len(fitted), len(set(fitted))),
            f"  {holding}/{nodes} nodes hold all {count} releases; "
            f"{len(fitted)}/{nodes} fitted a model from all of them",
        )
        return holding == nodes and len(fitted) == nodes and len(set(fitted)) == 1

    network.wait_until(converged, timeout_s=timeout_s, what="the nodes to converge on one model", poll_s=0.25)
    model_id = network.model_ids(network.nodes)[0]
    report(f"  converged: model {model_id[:16]} on all {nodes} nodes")
    return time.monotonic() - started, model_id


def _sample(network, path: Path, *, rows: int, seed: int, report: Callable[[str], None]) -> tuple[float, dict]:
    """Sample ``rows`` rows through the first node's API into ``path``; return seconds and the provenance."""
    from p2psynth.client import Client

    started = time.monotonic()
    node = network.nodes[0]
    with Client.from_node_config(node.config_path) as client:
        provenance = client.model().get("provenance") or {}
        client.sample_to_file(path, rows=rows, seed=seed)
    seconds = time.monotonic() - started
    report(f"sampled {rows:,} rows through the API of {node.name} into {path} in {seconds:.1f} s")
    return seconds, provenance


def _stop_network(network, report: Callable[[str], None]) -> None:
    """Stop every node process; on a second interrupt, kill them instead of waiting."""
    try:
        network.stop_all()
    except (KeyboardInterrupt, _Terminated):
        for node in network.nodes:
            network.kill(node)
        raise
    failed = [
        f"{node.name} (status {node.process.returncode})"
        for node in network.nodes
        if node.process is not None and node.process.returncode not in (0, None)
    ]
    if failed:
        log.warning("demo nodes exited with an error: %s", ", ".join(failed))
        report(f"stopped the nodes; exited with an error: {', '.join(failed)} (see their node.log)")
    else:
        report(f"stopped {len(network.nodes)} nodes")


def _report_rows(
    local_nodes, rows_per_node: Sequence[int], provenance: dict, *, split_text: str, model_id: str, phases: dict
) -> dict:
    from p2psynth.assembly import PROVENANCE_DELTA

    names = {node.public_key.hex(): node.name for node in local_nodes}
    members = provenance.get("members") or {}
    epsilon_key = f"epsilon_at_delta_{PROVENANCE_DELTA:g}"
    rows = {
        "nodes": len(local_nodes),
        "split": split_text,
        "node rows": ", ".join(f"{node.name} {count}" for node, count in zip(local_nodes, rows_per_node)),
        "model id": model_id,
    }
    for author, record in sorted(members.items(), key=lambda item: names.get(item[0], item[0])):
        name = names.get(author, author[:16])
        rows[f"epsilon of {name} (delta {PROVENANCE_DELTA:g})"] = record.get(epsilon_key)
    for phase, seconds in phases.items():
        rows[f"time: {phase} (s)"] = round(seconds, 2)
    return rows


def _write_quality_report(
    folder: Path, *, schema, synthetic_path: Path, train_codes, test_codes, extra: dict, seed: int
) -> tuple[Path, dict]:
    from p2psynth.encoding import encode_file
    from p2psynth.evaluate import ml_efficacy, write_report

    synthetic = encode_file(synthetic_path, schema, header=True).codes
    baseline = ml_efficacy(train_codes, test_codes, schema.domain, target=TARGET, seed=seed)
    extra = dict(extra)
    extra[f"AUC for {TARGET} trained on the real node rows (reference)"] = baseline["auc"]
    report_path = write_report(
        folder, np.ascontiguousarray(test_codes), np.ascontiguousarray(synthetic), schema.domain,
        target=TARGET, extra=extra, seed=seed,
    )
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return report_path, metrics


def _record_report_times(report_path: Path, phases: dict[str, float]) -> None:
    """Add the report and total times, known only now, to metrics.json and report.md."""
    metrics_path = report_path.parent / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["phase_seconds"] = {phase: round(seconds, 2) for phase, seconds in phases.items()}
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    timing = ["", "## Time per phase", "", "| phase | seconds |", "|---|---|"]
    timing += [f"| {phase} | {seconds:.1f} |" for phase, seconds in phases.items()]
    with report_path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(timing) + "\n")


# Command line ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psynth demo",
        description="Run a network of real nodes on 127.0.0.1 over the bundled UCI Adult data and "
        "write synthetic rows and a quality report.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --force)")
    parser.add_argument("--nodes", type=int, default=5, help="number of nodes (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=10_000, help="synthetic rows to sample (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sampling (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace the files of an earlier demo run in --out")
    parser.add_argument("--split", choices=SPLITS, default="dirichlet",
                        help="how rows are divided between the nodes (default: %(default)s)")
    parser.add_argument("--split-column", default="age",
                        help="column the dirichlet and sorted splits skew on (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="Dirichlet concentration; smaller is more skewed (default: %(default)s)")
    parser.add_argument("--data-rows", type=int, help="use a random subset of this many node rows (default: all)")
    parser.add_argument("--test-rows", type=int, help="use a random subset of this many held-out rows (default: all)")
    parser.add_argument("--release-epsilon", type=float, default=1.0,
                        help="epsilon of each node's release (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo from the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    previous_handler = _install_sigterm_handler()
    try:
        result = run_demo(
            out_dir=args.out,
            nodes=args.nodes,
            rows=args.rows,
            seed=args.seed,
            force=args.force,
            split=args.split,
            split_column=args.split_column,
            alpha=args.alpha,
            data_rows=args.data_rows,
            test_rows=args.test_rows,
            release_epsilon=args.release_epsilon,
        )
    except P2PSynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        print("interrupted; every node process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    _print_summary(result)
    return 0


def _install_sigterm_handler():
    """Turn SIGTERM into an exception in the main thread; return the previous handler (None elsewhere)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame) -> None:
        raise _Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def _print_summary(result: DemoResult) -> None:
    tvd = result.metrics.get("tvd") or {}
    ml = result.metrics.get("ml_efficacy") or {}
    print()
    print("quality (synthetic vs held-out real rows):")
    for way in ("1-way", "2-way", "3-way"):
        if way in tvd:
            print(f"  {way} TVD: mean {tvd[way]['mean']:.3f}, max {tvd[way]['max']:.3f}")
    if ml:
        print(f"  AUC for {ml['target']}: {ml['auc']:.3f} trained on synthetic rows")
    reference = (result.metrics.get("extra") or {}).get(f"AUC for {TARGET} trained on the real node rows (reference)")
    if reference is not None:
        print(f"  AUC for {TARGET}: {reference:.3f} trained on the real node rows (reference)")
    times = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.phase_seconds.items())
    print(f"time per phase: {times}")
    print("files:")
    print(f"  synthetic rows: {result.synthetic_path}")
    print(f"  report:         {result.report_path} (metrics.json and PNG plots beside it)")
    print(f"  node tables:    {result.out_dir / 'data'}")
    print(f"  node folders:   {result.out_dir / 'nodes'} (node.log, status.json, store.sqlite)")


if __name__ == "__main__":
    sys.exit(main())
