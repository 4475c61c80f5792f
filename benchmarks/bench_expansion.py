"""Benchmark sampling of a model fitted on grouped codes and expanded to full resolution.

Two Adult domains: the 15 columns of node_config/adult.schema.toml over the
raw UCI file in data/adult (largest attribute 42 codes), and the 14 coded
columns of data/adult-coded (several attributes of 85 to 100 codes). For each,
the pooled rows' exact 1-way counts give a model grouping of at most
``--groups`` groups per attribute (the strategy's equal-mass grouping). The
working model is fitted to the exact grouped 1-way marginals and a maximum
spanning tree of grouped pairs, and the expansion is built from the 1-way
counts. The counts carry no noise: noise changes the fitted numbers, not the
sampling time.

Reported per domain: rows/s of the unexpanded working model, of the expanded
model, and of the expanded model under a condition on two expanded
attributes, plus the 1-way TVD of the expanded sample against the real rows.
Times are the best of ``--repeats`` draws of ``--rows`` rows each.

Run:  /work/venv/bin/python benchmarks/bench_expansion.py
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import time
from pathlib import Path

import numpy as np

from p2psynth.domain import Domain, Measurement
from p2psynth.encoding import encode_file
from p2psynth.model import Expansion, fit_model, starts_from_maps
from p2psynth.schema import load_schema
from p2psynth.strategy import equal_mass_grouping, max_spanning_tree, pair_score

REPO = Path(__file__).resolve().parent.parent


def load_schema_adult() -> tuple[Domain, np.ndarray]:
    schema = load_schema(REPO / "node_config" / "adult.schema.toml")
    table = encode_file(REPO / "data" / "adult" / "adult.data.gz", schema, header=False)
    return schema.domain, np.ascontiguousarray(table.codes)


def load_coded_adult() -> tuple[Domain, np.ndarray]:
    folder = REPO / "data" / "adult-coded"
    sizes = json.loads((folder / "adult-domain.json").read_text())
    with gzip.open(folder / "adult.csv.gz", "rt") as handle:
        header = handle.readline().strip().split(",")
        codes = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    codes = codes[:, [header.index(name) for name in sizes]]
    return Domain.from_dict(sizes), codes


def counts_of(codes: np.ndarray, domain: Domain, attributes: tuple[str, ...]) -> np.ndarray:
    shape = domain.shape(attributes)
    flat = np.ravel_multi_index(tuple(codes[:, domain.index(a)] for a in attributes), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)


def build_models(domain: Domain, codes: np.ndarray, *, groups: int):
    """Return (working model, expanded model) fitted to exact grouped counts of ``codes``."""
    one_way = [Measurement((a,), counts_of(codes, domain, (a,)), 1.0) for a in domain.attributes]
    grouping = equal_mass_grouping(domain, one_way, max_groups=groups)
    working = grouping.working
    grouped = grouping.group_codes(codes)

    scores = {
        pair: pair_score(counts_of(grouped, working, pair), 1.0) for pair in itertools.combinations(working.attributes, 2)
    }
    tree = max_spanning_tree(working, scores)
    measurements = [Measurement((a,), counts_of(grouped, working, (a,)), 1.0) for a in working.attributes]
    measurements += [Measurement(pair, counts_of(grouped, working, pair), 1.0) for pair in tree]
    model = fit_model(working, measurements, max_iterations=300)

    expansion = Expansion.from_counts(
        domain, starts_from_maps(domain, grouping.maps), {m.attributes[0]: m.counts for m in one_way}
    )
    return model, model.with_expansion(expansion)


def best_rate(draw, rows: int, repeats: int) -> float:
    draw(1000)  # builds the sampling tables outside the timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        draw(rows)
        best = min(best, time.perf_counter() - started)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per timed draw")
    parser.add_argument("--repeats", type=int, default=3, help="timed draws per figure; the best is reported")
    parser.add_argument("--groups", type=int, default=16, help="max groups per attribute of the model grouping")
    args = parser.parse_args()

    print("| domain | attributes expanded | working rows/s | expanded rows/s | conditioned rows/s | 1-way TVD |")
    print("|---|---|---|---|---|---|")
    for label, loader in [("Adult schema, 15 columns", load_schema_adult), ("coded Adult, 14 columns", load_coded_adult)]:
        domain, codes = loader()
        working_model, model = build_models(domain, codes, groups=args.groups)
        expanded = [a for a, s, g in zip(domain.attributes, domain.sizes, model.working_domain.sizes) if g < s]
        # Condition the two widest expanded attributes on their even codes.
        widest = sorted(expanded, key=domain.size)[-2:]
        conditions = {a: set(range(0, domain.size(a), 2)) for a in widest}

        working_rate = best_rate(lambda n: working_model.sample(n, seed=1), args.rows, args.repeats)
        expanded_rate = best_rate(lambda n: model.sample(n, seed=1), args.rows, args.repeats)
        conditioned_rate = best_rate(lambda n: model.sample(n, seed=1, conditions=conditions), args.rows, args.repeats)

        sample = model.sample(args.rows, seed=2)
        tvd = np.mean(
            [
                0.5 * np.abs(counts_of(sample, domain, (a,)) / len(sample) - counts_of(codes, domain, (a,)) / len(codes)).sum()
                for a in domain.attributes
            ]
        )
        print(
            f"| {label} | {len(expanded)} | {working_rate:,.0f} | {expanded_rate:,.0f} | "
            f"{conditioned_rate:,.0f} | {tvd:.4f} |"
        )


if __name__ == "__main__":
    main()
