"""Time and memory of encoding a large CSV under the Adult schema.

Builds a CSV of ``--rows`` rows drawn with replacement (seeded) from the raw
UCI adult.data. Each repeat encodes it with ``encode_file`` in a fresh child
process, so that each peak RSS belongs to one encoding. That peak includes
the Python interpreter and the imported libraries. Prints a table.

Run: /work/venv/bin/python benchmarks/bench_encoding.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
SCHEMA = REPOSITORY / "node_config" / "adult.schema.toml"
DATA_FOLDERS = [REPOSITORY / "data" / "adult"]

CHILD = """
import json, resource, sys, time
from p2psynth.encoding import encode_file
from p2psynth.schema import load_schema
schema = load_schema(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
table = encode_file(sys.argv[2], schema)
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mib": after.ru_maxrss / 1024,
                  "rows": table.report.rows, "codes_mib": table.codes.nbytes / 2**20}))
"""

BASELINE = """
import resource
import numpy, pandas, pyarrow, pyarrow.csv, pyarrow.parquet
import p2psynth.encoding
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def find_adult_data() -> Path:
    for folder in DATA_FOLDERS:
        for name in ("adult.data.gz", "adult.data"):
            if (folder / name).exists():
                return folder / name
    raise SystemExit(f"adult.data not found in any of: {', '.join(map(str, DATA_FOLDERS))}")


def write_resampled_csv(source: Path, target: Path, *, rows: int, seed: int) -> None:
    """Write ``rows`` lines of ``source`` drawn with replacement."""
    import gzip

    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    picks = np.random.default_rng(seed).integers(0, len(lines), size=rows)
    pool = np.asarray(lines, dtype=object)
    with open(target, "w", encoding="utf-8") as out:
        chunk = 100_000
        for start in range(0, rows, chunk):
            out.write("\n".join(pool[picks[start : start + chunk]]))
            out.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated CSV")
    parser.add_argument("--repeat", type=int, default=3, help="encodings, each in a fresh process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row resampling")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "adult-resampled.csv"
        started = time.perf_counter()
        write_resampled_csv(find_adult_data(), csv_path, rows=args.rows, seed=args.seed)
        print(f"wrote {csv_path.stat().st_size / 2**20:.1f} MiB CSV in {time.perf_counter() - started:.1f} s")

        environment = dict(os.environ)
        baseline = float(subprocess.run([sys.executable, "-c", BASELINE], check=True, capture_output=True,
                                        text=True, env=environment).stdout)
        results = []
        for _ in range(args.repeat):
            output = subprocess.run(
                [sys.executable, "-c", CHILD, str(SCHEMA), str(csv_path)],
                check=True, capture_output=True, text=True, env=environment,
            ).stdout
            results.append(json.loads(output))

    load = os.getloadavg()[0]
    print(f"cpu cores: {os.cpu_count()}, load average: {load:.1f}, peak RSS after imports only: {baseline:.0f} MiB")
    print(f"{'run':>3}  {'rows':>9}  {'wall s':>7}  {'cpu s':>6}  {'peak RSS MiB':>12}  {'codes MiB':>9}")
    for i, result in enumerate(results, start=1):
        print(f"{i:>3}  {result['rows']:>9}  {result['seconds']:>7.2f}  {result['cpu_s']:>6.2f}  "
              f"{result['peak_mib']:>12.0f}  {result['codes_mib']:>9.0f}")


if __name__ == "__main__":
    main()
