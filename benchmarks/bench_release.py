"""Benchmark: a 1,000,000-row CSV to a signed release.

Builds a CSV of N rows resampled (with replacement, seeded) from the raw UCI
Adult file shipped in data/adult/, creates a node, and times
``p2psynth measure`` as a separate process: wall time and peak resident
memory (ru_maxrss of the child) of the whole command, start-up included, plus
an in-process breakdown (read and encode, measure, sign and debit).

    python benchmarks/bench_release.py [--rows 1000000] [--repeats 3]

Prints a table and writes the "CSV to release" section of docs/benchmarks.md.
Target on a 2-core machine: at most 3 s and 1 GB peak memory.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from benchdoc import machine_summary, write_section  # noqa: E402


def build_csv(path: Path, rows: int, seed: int) -> None:
    with gzip.open(REPO / "data" / "adult" / "adult.data.gz", "rt", encoding="utf-8") as source:
        lines = [line for line in source if line.strip()]
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(lines), rows)
    with open(path, "w", encoding="utf-8") as out:
        block = 100_000
        for start in range(0, rows, block):
            out.write("".join(lines[i] for i in picks[start : start + block]))


def time_cli(config: Path) -> tuple[float, float]:
    """Run 'p2psynth measure' once; return (seconds, peak MiB of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "p2psynth", "measure", "--config", str(config)],
        check=True, stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the maximum over all children so far.
    return seconds, max(peak_kib, before) / 1024


def breakdown(config: Path) -> dict[str, float]:
    from p2psynth.accounting import rho_from_epsilon
    from p2psynth.encoding import encode_file
    from p2psynth.measurement import measure_mst
    from p2psynth.noise import SecureRandom
    from p2psynth.nodefolder import open_node
    from p2psynth.schema import load_schema

    with open_node(config) as node:
        schema = load_schema(node.config.data.schema)
        started = time.perf_counter()
        encoded = encode_file(node.config.data.path, schema, header=node.config.data.header)
        encoded_at = time.perf_counter()
        rho = rho_from_epsilon(node.config.privacy.release_epsilon, node.config.privacy.delta)
        result = measure_mst(encoded.codes, schema.domain, rho=rho, random=SecureRandom())
        measured_at = time.perf_counter()
        node.ledger.publish(
            schema_fingerprint=schema.fingerprint, measurements=list(result.measurements), rho=rho, epoch=99
        )
        published_at = time.perf_counter()
    return {
        "read and encode": encoded_at - started,
        "measure (MST)": measured_at - encoded_at,
        "sign, debit, store": published_at - measured_at,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    from p2psynth.nodefolder import init_node

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        csv = folder / "adult-resampled.csv"
        build_csv(csv, args.rows, args.seed)
        size_mb = csv.stat().st_size / 1e6
        config = init_node(
            folder / "node", data_path=str(csv), schema_path=str(REPO / "node_config" / "adult.schema.toml"),
            lifetime_epsilon=1000.0, release_epsilon=1.0,
        ).path

        runs = [time_cli(config) for _ in range(args.repeats)]
        parts = breakdown(config)

    seconds = sorted(r[0] for r in runs)
    peak = max(r[1] for r in runs)
    median = seconds[len(seconds) // 2]
    rows = [
        ("rows", f"{args.rows:,}"),
        ("CSV size", f"{size_mb:.0f} MB"),
        ("p2psynth measure, wall time (median of %d)" % args.repeats, f"{median:.2f} s"),
        ("p2psynth measure, wall time (all runs)", ", ".join(f"{s:.2f}" for s in seconds) + " s"),
        ("peak resident memory", f"{peak:.0f} MiB"),
    ] + [(f"in-process: {name}", f"{value:.2f} s") for name, value in parts.items()]
    verdict = "met" if median <= 3.0 and peak <= 1024 else "NOT met"

    table = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    print("\n".join(table))
    print(f"target (at most 3 s and 1 GiB): {verdict}")

    if not args.no_write:
        body = "\n".join(
            [
                f"Command: `python benchmarks/bench_release.py --rows {args.rows} --repeats {args.repeats}`",
                f"Machine: {machine_summary()}",
                "",
                "A CSV of rows resampled from raw UCI Adult goes through the whole `p2psynth measure` "
                "command (Python start-up included): read, encode with node_config/adult.schema.toml, "
                "MST measurement at epsilon 1, ledger debit, signed release file.",
                "",
                *table,
                "",
                f"Target (at most 3 s and 1 GiB peak memory): **{verdict}**.",
            ]
        )
        write_section("CSV to signed release", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
