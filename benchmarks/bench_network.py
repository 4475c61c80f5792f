"""Benchmark: real node processes on loopback, from a publish to one shared model.

Each case starts N daemons (`p2psynth node run`, one process each, real
libp2p hosts and SQLite stores on 127.0.0.1) over an iid split of the raw
Adult training rows, every node dialing 3 others. It records each process's
resident memory once the network is idle, then requests a publish from
every node at once. With the three-round strategy each node publishes 3
releases. The benchmark measures:

- time from the publish requests until every node holds every release;
- time until every node reports the same model id, fitted from all releases;
- bytes each node sent (sync protocol and gossip), from the status snapshots;
- resident memory per process after the fit;
- quality of 10,000 rows sampled through one node's API against the held-out
  Adult test rows (mean 3-way TVD, income AUC of a classifier trained on them).

The whole network shares the machine's cores, so at large N the fits (each
node fits its own model after each round) and not the network set the pace:
bench_gossip.py measures spreading alone.

Usage: python benchmarks/bench_network.py [--nodes 10 25] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchdoc import machine_summary, write_section  # noqa: E402

from p2psynth.client import Client  # noqa: E402
from p2psynth.localnet import LocalNetwork, create_local_network  # noqa: E402

DATA = REPO / "data" / "adult" / "adult.data.gz"
TEST = REPO / "data" / "adult" / "adult.test.gz"
SAMPLE_ROWS = 10_000
SCHEMA = REPO / "node_config" / "adult.schema.toml"
TITLE = "Real node processes: publish to one shared model"
DEGREE = 3
ROUNDS = 3


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _split(root: Path, count: int, seed: int) -> list[Path]:
    with gzip.open(DATA, "rt", encoding="utf-8") as source:
        lines = [line for line in source if line.strip()]
    random.Random(seed).shuffle(lines)
    paths = []
    for index in range(count):
        path = root / f"part-{index + 1}.csv"
        path.write_text("".join(lines[index::count]), encoding="utf-8")
        paths.append(path)
    return paths


def _sparse_bootstrap(nodes, seed: int) -> None:
    """Rewrite each node's bootstrap list to DEGREE random earlier nodes (a connected sparse graph)."""
    rng = random.Random(seed)
    for index, node in enumerate(nodes):
        if index == 0:
            chosen = []
        else:
            chosen = rng.sample(nodes[:index], min(DEGREE, index))
        text = node.config_path.read_text(encoding="utf-8")
        start = text.index("bootstrap = [")
        end = text.index("]", start)
        listed = ", ".join(f'"{other.address}"' for other in chosen)
        node.config_path.write_text(text[:start] + f"bootstrap = [{listed}" + text[end:], encoding="utf-8")


def run_case(count: int, *, seed: int, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-network-{count}-") as folder:
        root = Path(folder)
        nodes = create_local_network(
            root / "nodes", data_paths=_split(root, count, seed), schema_path=SCHEMA, round_wait_s=timeout_s,
        )
        _sparse_bootstrap(nodes, seed)
        total = ROUNDS * count
        with LocalNetwork(nodes, anti_entropy_s=(5.0, 10.0), log_level="WARNING") as net:
            started = time.monotonic()
            net.start_all()
            net.wait_started(timeout_s=timeout_s)
            start_s = time.monotonic() - started
            net.wait_until(lambda: all(len((n.status() or {}).get("peers") or []) >= 1 for n in nodes),
                           timeout_s=timeout_s, what="every node to have a peer")
            time.sleep(5.0)  # let dials and gossip meshes settle before the idle reading
            idle = [_rss_mib(n.process.pid) for n in nodes]

            def publish(node) -> None:
                with Client.from_node_config(node.config_path, timeout_s=timeout_s) as client:
                    client.publish()

            published_at = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
                list(pool.map(publish, nodes))
            publish_s = time.monotonic() - published_at
            held_s = net.wait_until(
                lambda: all(((n.status() or {}).get("releases") or {}).get("stored") == total for n in nodes),
                timeout_s=timeout_s, what=f"every node to hold {total} releases", poll_s=0.1,
            ) + publish_s
            model_s = net.wait_until(lambda: net.converged(releases=total), timeout_s=timeout_s,
                                     what="one model id on every node", poll_s=0.1) + held_s
            statuses = [n.status() or {} for n in nodes]
            fitted = [_rss_mib(n.process.pid) for n in nodes]
            with Client.from_node_config(nodes[0].config_path, timeout_s=timeout_s) as client:
                client.sample_to_file(root / "synthetic.csv", rows=SAMPLE_ROWS, seed=seed)
        quality = _quality(root / "synthetic.csv", seed)
        sent = [((s.get("network") or {}).get("total") or {}) for s in statuses]
        sync_kb = [t.get("bytes_sent", 0) / 1024 for t in sent]
        gossip_kb = [t.get("gossip_bytes_sent", 0) / 1024 for t in sent]
        provenance = ((statuses[0].get("model") or {}).get("provenance") or {})
        return {
            "nodes": count,
            "start_s": start_s,
            "publish_s": publish_s,
            "held_s": held_s,
            "model_s": model_s,
            "sync_kb": statistics.mean(sync_kb),
            "sync_kb_max": max(sync_kb),
            "gossip_kb": statistics.mean(gossip_kb),
            "idle_mib": statistics.mean(idle),
            "idle_mib_max": max(idle),
            "fitted_mib": statistics.mean(fitted),
            "fitted_mib_max": max(fitted),
            "releases": total,
            "left_out": len(provenance.get("left_out") or {}),
            **quality,
        }


def _quality(synthetic_path: Path, seed: int) -> dict:
    from p2psynth.encoding import encode_file
    from p2psynth.evaluate import marginal_tvd, ml_efficacy
    from p2psynth.schema import load_schema

    schema = load_schema(SCHEMA)
    test = encode_file(TEST, schema, header=False, skip_rows=1).codes
    synthetic = encode_file(synthetic_path, schema, header=True).codes
    tvd = marginal_tvd(test, synthetic, schema.domain, ways=(3,))
    efficacy = ml_efficacy(synthetic, test, schema.domain, target="income", seed=seed)
    return {"tvd_3way": tvd["3-way"]["mean"], "auc": efficacy["auc"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args()

    results = []
    for count in args.nodes:
        print(f"{count} nodes ...", flush=True)
        result = run_case(count, seed=args.seed, timeout_s=args.timeout_s)
        print(result, flush=True)
        results.append(result)

    header = ("| nodes | releases | start s | publish s | all hold s | one model s | sync KB sent/node (max) "
              "| gossip KB sent/node | idle RSS MiB/process (max) | RSS after fit MiB (max) | 3-way TVD | AUC |")
    lines = [header, "|" + "---|" * 12]
    for r in results:
        lines.append(
            f"| {r['nodes']} | {r['releases']} | {r['start_s']:.1f} | {r['publish_s']:.1f} | {r['held_s']:.1f} "
            f"| {r['model_s']:.1f} | {r['sync_kb']:.0f} ({r['sync_kb_max']:.0f}) | {r['gossip_kb']:.0f} "
            f"| {r['idle_mib']:.0f} ({r['idle_mib_max']:.0f}) | {r['fitted_mib']:.0f} ({r['fitted_mib_max']:.0f}) "
            f"| {r['tvd_3way']:.3f} | {r['auc']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/bench_network.py --nodes " + " ".join(str(n) for n in args.nodes)
    body = f"""Command: `{command}`
Machine: {machine_summary()}.

One **process per node** (`p2psynth node run`, real libp2p over 127.0.0.1, SQLite stores in a temporary
folder), iid split of the raw Adult training rows, each node dialing {DEGREE} earlier nodes. Every node is
asked to publish at the same moment (three-round strategy: {ROUNDS} releases per node). Times count from the
first publish request: "all hold" until every node stores every release, "one model" until every node
reports the same model id fitted from all of them. Bytes are each node's own counters (sync protocol
frames and gossip messages it sent). Memory is VmRSS of each process: idle after start-up, and after the
last fit. Quality: {SAMPLE_ROWS:,} rows sampled through the first node's API, compared with the held-out
Adult test rows (mean TVD over all 3-way marginals; AUC for income of a classifier trained on the
synthetic rows).

{table}

All processes share the machine's cores, so at 25 and 50 nodes the measurements and model fits of every node
(each node refits after each round) set the pace, not the network; `bench_gossip.py` times spreading alone.
Target: at most 150 MB idle memory per node process.
"""
    write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
