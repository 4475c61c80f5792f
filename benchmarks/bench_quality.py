"""Quality benchmark: decentralized strategy vs central MST on coded Adult.

Run: ``python benchmarks/bench_quality.py [--seeds 3] [--quick]`` with the
project's venv. Per seed, 20% of the rows are held out. The rest is split over
10 members twice: at random (iid), and sorted by age in contiguous chunks
(skewed). Every member has epsilon 1 at delta 1e-9. Rows of the table:

- ``p2psynth``: the three-round strategy of ``p2psynth.strategy`` with the
  project's discrete Gaussian noise (``p2psynth.measurement``) and estimator
  (``p2psynth.model``), fitted from the per-member measurements.
- ``p2psynth, focus``: the same with ``focus_attributes=("income>50K",)``,
  which adds every pair of the target with another attribute to round 3.
- ``mbi on same``: Private-PGM's estimator (``mbi`` 2.0) on the very same
  measurements as the ``p2psynth`` row, summed over members.
- ``central MST``: MST (McKenna, Miklau and Sheldon 2021) on the pooled rows at
  the same epsilon, written here because ``mbi`` 2.0 ships no mechanisms. A
  third of rho goes to the 1-way marginals (codes below 3 sigma are merged),
  a third to exponential-mechanism selection of a spanning tree by L1 score,
  and a third to the tree. The noise is continuous Gaussian from numpy (a
  baseline, not a release), and ``mbi`` fits the model.

``mbi`` needs JAX, which the product must not depend on, so the two mbi rows
run in a subprocess under a separate interpreter (``--mbi-python``, default
/work/venv-bench/bin/python: a plain venv with mbi==2.0.0, numpy, pandas,
scipy, scikit-learn and this package installed with --no-deps). Every fit runs
in its own subprocess, which reports its wall time and peak resident memory.
TVD is measured against the 80% training rows, AUC for income>50K on the
held-out rows (train on synthetic, test on real).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MEMBERS = 10
EPSILON = 1.0
DELTA = 1e-9
TARGET = "income>50K"


# ---------------------------------------------------------------- data

def load_adult():
    import pandas as pd

    from p2psynth.domain import Domain

    for folder in (REPO / "data" / "adult-coded",):
        table = next((folder / name for name in ("adult.csv.gz", "adult.csv") if (folder / name).exists()), None)
        if table is not None and (folder / "adult-domain.json").exists():
            domain = Domain.from_dict(json.loads((folder / "adult-domain.json").read_text()))
            frame = pd.read_csv(table)
            return frame[list(domain.attributes)].to_numpy().astype(np.int64), domain
    sys.exit("coded Adult not found: expected data/adult-coded/adult.csv.gz and adult-domain.json")


def split_members(train: np.ndarray, domain, kind: str, seed: int) -> list[np.ndarray]:
    if kind == "iid":
        order = np.random.default_rng(seed).permutation(train.shape[0])
    else:
        order = np.argsort(train[:, domain.index("age")], kind="stable")
    return [train[chunk] for chunk in np.array_split(order, MEMBERS)]


# ---------------------------------------------------------------- p2psynth strategy

def run_strategy(members, domain, rho, seed, config, label):
    """Run the three rounds for every member; return the per-member measurements."""
    from p2psynth.measurement import measure_marginals
    from p2psynth.noise import SecureRandom
    from p2psynth.strategy import round_one_plan, round_three_plan, round_two_plan, sum_measurements

    randoms = [SecureRandom(seed=hashlib.sha256(f"bench-{label}-{seed}-{i}".encode()).digest()) for i in range(len(members))]

    def measure(plan):
        releases = []
        for codes, random in zip(members, randoms):
            if plan.grouping is None:
                releases.append(measure_marginals(codes, domain, plan.attribute_sets, rho=plan.rho, random=random))
            else:
                grouped = plan.grouping.group_codes(codes)
                releases.append(
                    measure_marginals(grouped, plan.grouping.working, plan.attribute_sets, rho=plan.rho, random=random)
                )
        return releases

    plan_one = round_one_plan(domain, rho=rho, config=config)
    round_one = measure(plan_one)
    plan_two = round_two_plan(domain, sum_measurements(round_one), rho=rho, config=config)
    round_two = measure(plan_two)
    plan_three = round_three_plan(
        domain, sum_measurements(round_one), sum_measurements(round_two), rho=rho, config=config
    )
    round_three = measure(plan_three)
    spent = plan_one.rho + plan_two.rho + plan_three.rho
    assert math.isclose(spent, rho, rel_tol=1e-12), (spent, rho)
    return round_one, round_three, plan_three


# ---------------------------------------------------------------- subprocess workers

def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_fit_p2psynth(job):
    from p2psynth.model import fit_model

    started = time.perf_counter()
    model = fit_model(job["domain"], job["measurements"], sources=job["sources"], max_iterations=job["iters"])
    codes = model.sample(job["rows"], seed=job["seed"])
    return {"codes": codes, "seconds": time.perf_counter() - started, "peak_mib": _peak_mib()}


def _mbi_fit_sample(domain, measurements, rows, seed, iters, mapping=None, fine_measurements=()):
    import jax

    jax.config.update("jax_enable_x64", True)
    import mbi
    from mbi import LinearMeasurement, estimation

    np.random.seed(seed)
    model_domain = mbi.Domain(domain.attributes, domain.sizes)
    linear = [LinearMeasurement(np.asarray(m.counts, float).ravel(), tuple(m.attributes), float(m.sigma)) for m in measurements]
    if fine_measurements:
        # Full-resolution measurements enter as group sums with their exact per-group weights.
        fine_domain = mbi.Domain(domain.attributes, [len(mapping[a]) if a in mapping else domain.size(a) for a in domain.attributes])
        for m in fine_measurements:
            fine = LinearMeasurement(np.asarray(m.counts, float).ravel(), tuple(m.attributes), float(m.sigma))
            linear.append(fine.compress(mapping, fine_domain))
    model = estimation.MirrorDescent().estimate(model_domain, linear, iters=iters)
    data = model.synthetic_data(rows)
    if mapping:
        data = data.decompress(mapping)
    return np.stack([np.asarray(data.data[a]) for a in domain.attributes], axis=1).astype(np.int64)


def worker_fit_mbi(job):
    started = time.perf_counter()
    codes = _mbi_fit_sample(job["domain"], job["measurements"], job["rows"], job["seed"], job["iters"])
    return {"codes": codes, "seconds": time.perf_counter() - started, "peak_mib": _peak_mib()}


def worker_central_mst(job):
    """Run MST on the pooled rows with continuous Gaussian noise and fit with mbi."""
    from p2psynth.domain import Domain, Measurement

    started = time.perf_counter()
    train, domain, rho, rng = job["train"], job["domain"], job["rho"], np.random.default_rng(job["seed"])
    attributes = domain.attributes

    def marginal(codes, dom, attrs):
        shape = dom.shape(attrs)
        index = np.ravel_multi_index(tuple(codes[:, dom.index(a)] for a in attrs), shape)
        return np.bincount(index, minlength=math.prod(shape)).reshape(shape).astype(float)

    # 1-ways with a third of rho, then merge codes whose noisy count is below 3 sigma.
    sigma_one = math.sqrt(len(attributes) / (2 * rho / 3))
    noisy_one = {a: marginal(train, domain, (a,)) + rng.normal(0, sigma_one, domain.size(a)) for a in attributes}
    mapping, sizes = {}, []
    for a in attributes:
        keep = noisy_one[a] >= 3 * sigma_one
        if keep.all():
            sizes.append(domain.size(a))
            continue
        codes_map = np.empty(domain.size(a), dtype=np.int64)
        codes_map[keep] = np.arange(keep.sum())
        codes_map[~keep] = keep.sum()
        mapping[a] = codes_map
        sizes.append(int(keep.sum()) + 1)
    compressed_domain = Domain(attributes, tuple(sizes))
    compressed = train.copy()
    for a, codes_map in mapping.items():
        compressed[:, domain.index(a)] = codes_map[train[:, domain.index(a)]]

    def compress_one(a):
        counts = noisy_one[a]
        return np.bincount(mapping[a], weights=counts) if a in mapping else counts

    # Selection with a third of rho: one exponential-mechanism draw per tree edge.
    estimate = {a: np.clip(compress_one(a), 0, None) for a in attributes}
    estimate = {a: p / p.sum() for a, p in estimate.items()}
    rows = train.shape[0]
    scores = {
        (a, b): np.abs(marginal(compressed, compressed_domain, (a, b)) - rows * np.outer(estimate[a], estimate[b])).sum()
        for a, b in itertools.combinations(attributes, 2)
    }
    epsilon_draw = math.sqrt(8 * (rho / 3) / (len(attributes) - 1))
    parent = {a: a for a in attributes}

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    tree = []
    for _ in range(len(attributes) - 1):
        candidates = [pair for pair in scores if root(pair[0]) != root(pair[1])]
        quality = np.array([scores[pair] for pair in candidates])
        weights = np.exp(epsilon_draw * (quality - quality.max()) / 2.0)
        chosen = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
        tree.append(chosen)
        parent[root(chosen[0])] = root(chosen[1])

    # The tree with the last third; the 1-ways enter the fit at full resolution.
    sigma_two = math.sqrt(len(tree) / (2 * rho / 3))
    fine = [Measurement((a,), noisy_one[a], sigma_one) for a in attributes]
    measurements = []
    for pair in tree:
        counts = marginal(compressed, compressed_domain, pair) + rng.normal(0, sigma_two, compressed_domain.shape(pair))
        measurements.append(Measurement(pair, counts, sigma_two))
    codes = _mbi_fit_sample(compressed_domain, measurements, rows, job["seed"], job["iters"], mapping, fine)
    return {"codes": codes, "seconds": time.perf_counter() - started, "peak_mib": _peak_mib(), "tree": tree}


WORKERS = {"fit-p2psynth": worker_fit_p2psynth, "fit-mbi": worker_fit_mbi, "central-mst": worker_central_mst}


def run_worker(python: str, name: str, job: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        job_path, result_path = Path(folder) / "job.pkl", Path(folder) / "result.pkl"
        job_path.write_bytes(pickle.dumps(job))
        env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
        subprocess.run(
            [python, __file__, "--worker", name, str(job_path), str(result_path)],
            check=True,
            env=env,
            timeout=1800,
        )
        return pickle.loads(result_path.read_bytes())


# ---------------------------------------------------------------- main

def evaluate_row(train, test, synthetic, domain, seed):
    from p2psynth.evaluate import marginal_tvd, ml_efficacy

    distances = marginal_tvd(train, synthetic, domain)
    efficacy = ml_efficacy(synthetic, test, domain, target=TARGET, seed=seed)
    return {
        "tvd1": distances["1-way"]["mean"],
        "tvd2": distances["2-way"]["mean"],
        "tvd3": distances["3-way"]["mean"],
        "auc": efficacy["auc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 seed and 500 estimator iterations")
    parser.add_argument("--iterations", type=int, default=1000, help="estimator iterations (default 1000)")
    parser.add_argument("--mbi-python", default="/work/venv-bench/bin/python", help="interpreter with mbi 2.0")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown file to write (default: a section of docs/benchmarks.md)")
    parser.add_argument("--worker", nargs=3, metavar=("NAME", "JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        name, job_path, result_path = args.worker
        result = WORKERS[name](pickle.loads(Path(job_path).read_bytes()))
        Path(result_path).write_bytes(pickle.dumps(result))
        return

    from p2psynth.accounting import rho_from_epsilon
    from p2psynth.evaluate import marginal_tvd
    from p2psynth.strategy import StrategyConfig, expand_codes, model_grouping, sum_measurements, working_measurements

    seeds = 1 if args.quick else args.seeds
    iterations = 500 if args.quick else args.iterations
    codes, domain = load_adult()
    rho = rho_from_epsilon(EPSILON, DELTA)
    strategies = [
        ("p2psynth", StrategyConfig(), True),
        ("p2psynth, focus", StrategyConfig(focus_attributes=(TARGET,)), False),
    ]
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.time()

    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(codes.shape[0])
        cut = int(0.8 * codes.shape[0])
        train, test = codes[order[:cut]], codes[order[cut:]]

        central = run_worker(args.mbi_python, "central-mst", {"train": train, "domain": domain, "rho": rho, "seed": seed, "iters": iterations})
        row = evaluate_row(train, test, central["codes"], domain, seed)
        results.setdefault(("central MST (mbi)", "pooled"), []).append({**row, "seconds": central["seconds"], "peak_mib": central["peak_mib"]})
        print(f"seed {seed} central MST: {row}", flush=True)

        for split in ("iid", "age-sorted"):
            members = split_members(train, domain, split, seed + 100)
            for name, config, with_mbi in strategies:
                round_one, round_three, plan = run_strategy(members, domain, rho, seed, config, split)
                summed_one = sum_measurements(round_one)
                grouping = model_grouping(domain, summed_one, config=config)
                per_member = [working_measurements(grouping, one, three) for one, three in zip(round_one, round_three)]
                measurements = [m for member in per_member for m in member]
                sources = [i for i, member in enumerate(per_member) for _ in member]
                summed = working_measurements(grouping, summed_one, sum_measurements(round_three))

                jobs = [(name, sys.executable, "fit-p2psynth", {"measurements": measurements, "sources": sources})]
                if with_mbi:
                    jobs.append(("mbi on same", args.mbi_python, "fit-mbi", {"measurements": summed}))
                for label, python, worker, extra in jobs:
                    job = {"domain": grouping.working, "rows": train.shape[0], "seed": seed, "iters": iterations, **extra}
                    fitted = run_worker(python, worker, job)
                    synthetic = expand_codes(fitted["codes"], grouping, summed_one, seed=seed)
                    row = evaluate_row(train, test, synthetic, domain, seed)
                    results.setdefault((label, split), []).append(
                        {**row, "seconds": fitted["seconds"], "peak_mib": fitted["peak_mib"]}
                    )
                    print(f"seed {seed} {label} {split}: {row} fit {fitted['seconds']:.1f}s", flush=True)
                print(f"  pairs: {list(plan.attribute_sets)}", flush=True)

    write_table(args, results, seeds, iterations, time.time() - started)


def write_table(args, results, seeds, iterations, elapsed):
    header = (
        "| synthesizer | split | 1-way TVD | 2-way TVD | 3-way TVD (min-max) | AUC (min-max) "
        "| 3-way vs central | fit s | peak MiB |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    central = np.mean([r["tvd3"] for r in results[("central MST (mbi)", "pooled")]])
    for (label, split), rows in results.items():
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        low = {key: min(r[key] for r in rows) for key in ("tvd3", "auc")}
        high = {key: max(r[key] for r in rows) for key in ("tvd3", "auc")}
        lines.append(
            f"| {label} | {split} | {mean['tvd1']:.4f} | {mean['tvd2']:.4f} "
            f"| {mean['tvd3']:.4f} ({low['tvd3']:.3f}-{high['tvd3']:.3f}) "
            f"| {mean['auc']:.3f} ({low['auc']:.3f}-{high['auc']:.3f}) "
            f"| {mean['tvd3'] / central:.2f}x | {mean['seconds']:.1f} | {mean['peak_mib']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)

    command = "python benchmarks/bench_quality.py" + (" --quick" if args.quick else f" --seeds {seeds}")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "shared with other jobs (so times are upper bounds)"
    )
    text = "\n".join(
        [
            "# Quality benchmark: decentralized strategy vs central MST",
            "",
            f"Command: `{command}` ({iterations} estimator iterations, {seeds} seed(s), mean shown; "
            f"whole run {elapsed / 60:.1f} min).",
            f"Machine: {machine}.",
            "",
            f"Coded Adult, 20% of rows held out, the rest over {MEMBERS} members; every member at "
            f"epsilon {EPSILON:g}, delta {DELTA:g}. TVD against the training rows, mean over all 1-, 2- and "
            f"3-way marginals; AUC for {TARGET} trained on synthetic rows, tested on held-out real rows. "
            "Fit time and peak memory are those of the fitting subprocess: estimator and sampling, "
            "plus selection and measuring for central MST. The p2psynth rows fit on the working domain "
            "of grouped codes (at most 16 per attribute), which is why they are fast.",
            "",
            table,
            "",
        ]
    )
    if args.out is None:
        from benchdoc import write_section

        body = text.split("\n", 2)[2]  # the section supplies its own title
        print(f"wrote {write_section('Global model quality: decentralized strategy vs central MST', body)}")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
