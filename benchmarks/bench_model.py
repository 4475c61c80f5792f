"""Benchmark the global-model estimator and sampler on the coded Adult data.

The setup mirrors a small p2psynth network: the rows of Adult (48,842 rows,
14 coded attributes) are shuffled and split evenly over ``--nodes`` nodes.
Each node measures all 1-way marginals and a tree of pairs chosen MST style on
its own rows. A pair's score is the L1 distance between the pair's counts and
the product of its 1-way marginals, perturbed with Gumbel noise as the
exponential mechanism would. So different nodes choose different trees, and
their union has cycles. Noise is numpy's normal distribution rounded to
integers. Its standard deviations are those zCDP would assign at the given
epsilon and delta per node: a third of rho goes to the 1-way marginals, a third
to the pairs, and the rest nominally to the selection. The noise is not the
exact discrete Gaussian, which is fine for timing and accuracy of the
estimator only.

The fit uses ``drop_cliques_over_cap=True`` with the default caps, because the
union of ten trees triangulates to cliques of about 25 million cells.

Reported: fit time and peak traced memory of ``fit_model``, junction tree size,
time to build the sampling tables and steady sampling speed, and the average
total variation distance (TVD) over all 364 3-way marginals between synthetic
rows and the real rows (for a sample of ``--sample-rows`` rows, which is close
to the model's own TVD, and for a sample of the estimated row count). With
``--mbi-python`` (a Python with ``mbi==2.0.0``, kept out of the project venv
because it pulls JAX) the measurements of the cliques the fit kept, rescaled to
one common total exactly as ``fit_model`` does internally, are fitted with
mbi's mirror descent in a subprocess, sampled i.i.d. the same way and compared.

Set up mbi:  python3 -m venv /work/venv-bench && /work/venv-bench/bin/pip install mbi==2.0.0
Run:  /work/venv/bin/python benchmarks/bench_model.py --seeds 0 1 2 --mbi-python /work/venv-bench/bin/python
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

# The coded Adult shipped in the repository; P2PSYNTH_ADULT_DIR points at another copy.
DATA_DIR = Path(os.environ.get("P2PSYNTH_ADULT_DIR", Path(__file__).resolve().parent.parent / "data" / "adult-coded"))


# --- data and simulated measurements ------------------------------------------------------


def load_adult(data_dir: Path) -> tuple[list[str], list[int], np.ndarray]:
    """Return (attribute names, domain sizes, codes of shape (rows, attributes))."""
    sizes = json.loads((data_dir / "adult-domain.json").read_text())
    table = data_dir / "adult.csv.gz" if (data_dir / "adult.csv.gz").exists() else data_dir / "adult.csv"
    with (gzip.open(table, "rt") if table.suffix == ".gz" else open(table)) as handle:
        header = handle.readline().strip().split(",")
        codes = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    names = list(sizes)
    if header != names:
        codes = codes[:, [header.index(n) for n in names]]
    return names, [int(sizes[n]) for n in names], codes


def rho_from_epsilon(epsilon: float, delta: float) -> float:
    """Return a zCDP rho that satisfies (epsilon, delta)-DP by the simple conversion of Bun and Steinke 2016."""
    log_term = math.log(1.0 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def marginal(codes: np.ndarray, sizes: list[int], columns: tuple[int, ...]) -> np.ndarray:
    shape = tuple(sizes[c] for c in columns)
    flat = np.ravel_multi_index(tuple(codes[:, c] for c in columns), shape)
    return np.bincount(flat, minlength=math.prod(shape)).reshape(shape)


def choose_tree(codes: np.ndarray, sizes: list[int], rng: np.random.Generator, *, noise_scale: float) -> list:
    """Return the pairs of a maximum spanning tree over noisy MST-style pair scores."""
    count = len(sizes)
    ones = [marginal(codes, sizes, (c,)) / len(codes) for c in range(count)]
    scores = {}
    for a, b in itertools.combinations(range(count), 2):
        observed = marginal(codes, sizes, (a, b))
        expected = np.outer(ones[a], ones[b]) * len(codes)
        scores[(a, b)] = np.abs(observed - expected).sum() + rng.gumbel(scale=noise_scale)
    group = list(range(count))

    def find(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    tree = []
    for (a, b), _ in sorted(scores.items(), key=lambda item: -item[1]):
        ra, rb = find(a), find(b)
        if ra != rb:
            group[ra] = rb
            tree.append((a, b))
    return tree


def simulate_measurements(codes, names, sizes, *, nodes: int, epsilon: float, delta: float, seed: int):
    """Return a list of (node, attribute names, noisy counts, sigma) for every node's measurements."""
    rng = np.random.default_rng(seed)
    shards = np.array_split(codes[rng.permutation(len(codes))], nodes)
    rho = rho_from_epsilon(epsilon, delta)
    count = len(sizes)
    sigma_one = math.sqrt(count / (2 * rho / 3))
    sigma_pair = math.sqrt((count - 1) / (2 * rho / 3))
    # Exponential mechanism with budget rho/3 over count-1 rounds, sensitivity 2 of the L1 score.
    round_epsilon = math.sqrt(8 * (rho / 3) / (count - 1))
    selection_scale = 2 * 2.0 / round_epsilon

    measured = []
    for node, shard in enumerate(shards):
        for column in range(count):
            true = marginal(shard, sizes, (column,))
            noisy = np.rint(true + rng.normal(scale=sigma_one, size=true.shape)).astype(np.int64)
            measured.append((node, (names[column],), noisy, sigma_one))
        for a, b in choose_tree(shard, sizes, rng, noise_scale=selection_scale):
            true = marginal(shard, sizes, (a, b))
            noisy = np.rint(true + rng.normal(scale=sigma_pair, size=true.shape)).astype(np.int64)
            measured.append((node, (names[a], names[b]), noisy, sigma_pair))
    return measured


def pooled_for_mbi(measured):
    """Rescale every node's measurements to one common total, as fit_model does with sources."""
    totals = {}
    for node in sorted({m[0] for m in measured}):
        own = [m for m in measured if m[0] == node]
        weights = [1.0 / (m[2].size * m[3] ** 2) for m in own]
        estimate = sum(w * m[2].sum() for w, m in zip(weights, own)) / sum(weights)
        totals[node] = max(estimate, 1.0)
    total = sum(totals.values())
    pooled = [(attrs, counts * (total / totals[node]), sigma * (total / totals[node])) for node, attrs, counts, sigma in measured]
    return total, pooled


def three_way_tvd(project, codes: np.ndarray, names: list[str], sizes: list[int]) -> float:
    """Return the mean TVD over all 3-way marginals between ``project(attrs)`` and the rows in ``codes``."""
    distances = []
    for triple in itertools.combinations(range(len(names)), 3):
        real = marginal(codes, sizes, triple) / len(codes)
        distances.append(0.5 * np.abs(project(tuple(names[c] for c in triple)) - real).sum())
    return float(np.mean(distances))


# --- the mbi side (runs under the benchmark venv, never imports p2psynth) -------------------


def run_mbi_worker(input_path: str, output_path: str) -> None:
    """Fit the pooled measurements in ``input_path`` with mbi and write timings and TVD."""
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_enable_compilation_cache", False)
    import mbi

    data = np.load(input_path, allow_pickle=False)
    names = [str(n) for n in data["names"]]
    sizes = [int(s) for s in data["sizes"]]
    codes = data["codes"]
    iterations = int(data["iterations"])
    domain = mbi.Domain(names, sizes)
    measurements = []
    for index in range(int(data["count"])):
        attrs = tuple(str(a) for a in data[f"attrs_{index}"])
        measurements.append(
            mbi.LinearMeasurement(
                data[f"counts_{index}"].ravel(), attrs, stddev=float(data[f"sigma_{index}"])
            )
        )

    started = time.perf_counter()
    model = mbi.estimation.MirrorDescent().estimate(
        domain, measurements, known_total=float(data["total"]), iters=iterations
    )
    jax.block_until_ready(jax.tree_util.tree_leaves(model))
    seconds = time.perf_counter() - started

    sample_rows = int(data["sample_rows"])
    started = time.perf_counter()
    synthetic = model.synthetic_data(rows=sample_rows, method="sample").to_dict()
    sample_seconds = time.perf_counter() - started
    columns = np.column_stack([np.asarray(synthetic[n]) for n in names])
    tvd = three_way_tvd(
        lambda attrs: marginal(columns, sizes, tuple(names.index(a) for a in attrs)) / len(columns), codes, names, sizes
    )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(output_path).write_text(json.dumps({"seconds": seconds, "tvd": tvd, "peak_rss_kib": peak_kib, "sample_seconds": sample_seconds}))


def compare_with_mbi(python: str, names, sizes, codes, measured, *, iterations: int, sample_rows: int) -> dict:
    total, pooled = pooled_for_mbi(measured)
    with tempfile.TemporaryDirectory() as folder:
        arrays = {
            "names": np.array(names),
            "sizes": np.array(sizes),
            "codes": codes,
            "count": np.array(len(pooled)),
            "total": np.array(total),
            "iterations": np.array(iterations),
            "sample_rows": np.array(sample_rows),
        }
        for index, (attrs, counts, sigma) in enumerate(pooled):
            arrays[f"attrs_{index}"] = np.array(attrs)
            arrays[f"counts_{index}"] = counts
            arrays[f"sigma_{index}"] = np.array(sigma)
        input_path = os.path.join(folder, "in.npz")
        output_path = os.path.join(folder, "out.json")
        np.savez(input_path, **arrays)
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
        subprocess.run(
            [python, __file__, "--mbi-worker", input_path, output_path], check=True, env=env, timeout=3600
        )
        return json.loads(Path(output_path).read_text())


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="number of simulated nodes")
    parser.add_argument("--epsilon", type=float, default=1.0, help="epsilon per node")
    parser.add_argument("--delta", type=float, default=1e-9, help="delta per node")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the split and the noise")
    parser.add_argument("--sample-rows", type=int, default=1_000_000, help="rows drawn to time sampling and measure TVD")
    parser.add_argument("--max-clique-cells", type=int, help="max_clique_cells of fit_model (default: its default)")
    parser.add_argument("--max-iterations", type=int, help="max_iterations of fit_model (default: its default)")
    parser.add_argument("--mbi-python", help="Python interpreter with mbi==2.0.0 installed; omit to skip mbi")
    parser.add_argument("--mbi-iterations", type=int, default=1000, help="mbi mirror-descent iterations")
    parser.add_argument("--mbi-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.mbi_worker:
        run_mbi_worker(*args.mbi_worker)
        return

    from p2psynth.domain import Domain, Measurement
    from p2psynth.model import fit_model

    names, sizes, codes = load_adult(DATA_DIR)
    domain = Domain(tuple(names), tuple(sizes))
    options = {"drop_cliques_over_cap": True}
    if args.max_clique_cells:
        options["max_clique_cells"] = args.max_clique_cells
    if args.max_iterations:
        options["max_iterations"] = args.max_iterations
    rows = []
    for seed in args.seeds:
        measured = simulate_measurements(
            codes, names, sizes, nodes=args.nodes, epsilon=args.epsilon, delta=args.delta, seed=seed
        )
        measurements = [Measurement(attrs, counts, sigma) for _, attrs, counts, sigma in measured]
        sources = [node for node, *_ in measured]

        tracemalloc.start()
        started = time.perf_counter()
        model = fit_model(domain, measurements, sources=sources, **options)
        fit_seconds = time.perf_counter() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        # The first call builds the sampling tables; time it apart from steady-state sampling.
        started = time.perf_counter()
        model.sample(1, seed=seed)
        table_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sample = model.sample(args.sample_rows, seed=seed)
        sample_seconds = time.perf_counter() - started
        synthetic = model.sample(int(round(model.total)), seed=seed + 1)

        def sample_tvd(rows_of_codes):
            return three_way_tvd(
                lambda attrs: marginal(rows_of_codes, sizes, tuple(names.index(a) for a in attrs)) / len(rows_of_codes),
                codes,
                names,
                sizes,
            )

        tree = model.tree
        summary = model.fit_summary
        row = {
            "seed": seed,
            "measurements": len(measurements),
            "distinct cliques": len({tuple(sorted(m.attributes)) for m in measurements}),
            "dropped cliques": len(summary.dropped_cliques),
            "tree cliques": len(tree.cliques),
            "largest clique cells": max(tree.cells(c) for c in range(len(tree.cliques))),
            "total cells": tree.total_cells(),
            "iterations": summary.iterations,
            "calibrations": summary.calibrations,
            "fit s": fit_seconds,
            "fit peak traced MB": peak_bytes / 1e6,
            "sampling tables s": table_seconds,
            "sample rows/s": args.sample_rows / sample_seconds,
            f"3-way TVD, {args.sample_rows:,}-row sample": sample_tvd(sample),
            "3-way TVD, sample of estimated rows": sample_tvd(synthetic),
            "estimated rows": model.total,
        }
        if args.mbi_python:
            dropped = {tuple(sorted(c)) for c in summary.dropped_cliques}
            kept = [m for m in measured if tuple(sorted(m[1])) not in dropped]
            result = compare_with_mbi(
                args.mbi_python, names, sizes, codes, kept, iterations=args.mbi_iterations, sample_rows=args.sample_rows
            )
            row["mbi fit s"] = result["seconds"]
            row["mbi peak RSS MB"] = result["peak_rss_kib"] / 1024
            row[f"mbi 3-way TVD, {args.sample_rows:,}-row sample"] = result["tvd"]
            row["TVD ratio ours/mbi"] = row[f"3-way TVD, {args.sample_rows:,}-row sample"] / result["tvd"]
            row["fit time ratio mbi/ours"] = result["seconds"] / fit_seconds
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    heading = (f"Adult, {args.nodes} nodes, epsilon {args.epsilon} and delta {args.delta} per node, "
               f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    keys = list(rows[0])
    lines = ["| metric | " + " | ".join(f"seed {r['seed']}" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for key in keys[1:]:
        cells = [f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key]) for r in rows]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    print(heading)
    print("\n".join(lines))

    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchdoc import machine_summary, write_section

        command = "python benchmarks/bench_model.py " + " ".join(sys.argv[1:])
        body = "\n".join([f"Command: `{command}`", f"Machine: {machine_summary()}", "", heading + ".", "",
                          *lines])
        write_section("Estimator and sampler on 10-node Adult measurements", body)


if __name__ == "__main__":
    main()
