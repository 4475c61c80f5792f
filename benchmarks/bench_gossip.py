"""Time for one release to reach every node: gossip announcement, then sync pull.

Starts N NetworkService hosts in this process, all on 127.0.0.1, connected
as a random sparse graph (each new node dials ``--degree`` random earlier
nodes, so the graph is connected) or as a full mesh. Each node keeps its
releases in memory (``MemoryReleases``, with the real strict decoder). Each
run, a randomly chosen node stores a new signed release of about
``--size-kb`` kilobytes and announces it. The run ends when every other node
has accepted the body. Reported per N and size, over ``--runs`` runs:

- the median (p50), 95th percentile and maximum of that time;
- sync bytes sent per host per run (release bodies and sync requests), and
  gossip bytes sent per host per run (announcements and Gossipsub control
  RPCs), both without Noise and Yamux framing;
- the share of bodies that arrived by the pull that an announcement
  triggers (the rest came by anti-entropy);
- the RSS of the process.

Each case runs in a child process of its own, so that its RSS is its own.
All hosts of a case share that one Python process and so one core: the times
include every host's CPU work done one after another, so they overstate
what N machines would see on a network but understate network latency.
"CPU busy" is the process CPU time over the wall time of the runs. Below
100 %, the process was waiting for I/O, for timers or for a core that other
processes had. The load average printed with the table shows how busy the
machine was.

Run: /work/venv/bin/python benchmarks/bench_gossip.py --nodes 10 25 50 --runs 7 --size-kb 1 300 --record
Add ``--compare-with DIR`` to run every case also with the code checked out
in DIR, interleaved, for before/after tables measured under the same load.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from p2psynth.domain import Measurement  # noqa: E402
from p2psynth.network import NetworkConfig, NetworkService, ReleaseVerdict  # noqa: E402
from p2psynth.network.memory import MemoryReleases  # noqa: E402
from p2psynth.release import Release, encode_release, release_id  # noqa: E402

FINGERPRINT = "ab" * 32
# Per node: startup and mesh formation, then each run. Generous for one shared core.
SETUP_DEADLINE_S = 120
RUN_DEADLINE_S = 120


@dataclass
class BenchNode:
    """One host of the benchmark, recording when each release arrived."""

    key: Ed25519PrivateKey
    releases: MemoryReleases
    service: NetworkService | None = None
    arrivals: dict[bytes, float] = field(default_factory=dict)
    sequence: int = 0

    def accept(self, data: bytes, *, from_peer: str) -> ReleaseVerdict:
        verdict = self.releases.accept(data, from_peer=from_peer)
        if verdict is ReleaseVerdict.ACCEPTED:
            self.arrivals[release_id(data)] = trio.current_time()
        return verdict


def make_release_bytes(key: Ed25519PrivateKey, *, sequence: int, size_kb: int, rng: np.random.Generator) -> bytes:
    """Return a signed release whose one measurement holds about ``size_kb`` KB of int64 counts."""
    cells = max(1, size_kb * 1024 // 8)
    counts = rng.integers(-5, 1000, size=(cells,), dtype=np.int64)
    measurement = Measurement(("x",), counts, 10.0)
    release = Release(
        schema_fingerprint=FINGERPRINT,
        author=key.public_key().public_bytes_raw(),
        sequence=sequence,
        epoch=1,
        created_at_ms=1_700_000_000_000 + sequence,
        rho=1.0 / (2 * 10.0**2),
        measurements=(measurement,),
    )
    return encode_release(release, key)


def choose_bootstrap(index: int, *, topology: str, degree: int, rng: random.Random) -> list[int]:
    """Return the earlier nodes that node ``index`` dials."""
    earlier = list(range(index))
    if topology == "full":
        return earlier
    return rng.sample(earlier, min(degree, len(earlier)))


def sent_bytes(bench_nodes: list[BenchNode]) -> tuple[int, int]:
    """Return the sync and the gossip bytes sent by all hosts so far."""
    totals = [node.service.statistics()["total"] for node in bench_nodes]
    return sum(t["bytes_sent"] for t in totals), sum(t["gossip_bytes_sent"] for t in totals)


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_case(
    *,
    nodes: int,
    size_kb: int,
    runs: int,
    topology: str,
    degree: int,
    seed: int,
    anti_entropy_s: tuple[float, float],
    profile_path: str | None = None,
) -> dict:
    rng = random.Random(seed)
    data_rng = np.random.default_rng(seed)
    bench_nodes = [
        BenchNode(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)), MemoryReleases()) for _ in range(nodes)
    ]
    rss_before = current_rss_mib()

    async with trio.open_nursery() as nursery:
        # Start the nodes one by one, each dialing earlier ones.
        with trio.fail_after(SETUP_DEADLINE_S):
            for index, node in enumerate(bench_nodes):
                bootstrap = choose_bootstrap(index, topology=topology, degree=degree, rng=rng)
                config = NetworkConfig(
                    network_id="bench",
                    schema_fingerprint=FINGERPRINT,
                    bootstrap_addrs=tuple(bench_nodes[i].service.addresses()[0] for i in bootstrap),
                    dial_initial_delay_s=0.1,
                    anti_entropy_min_interval_s=anti_entropy_s[0],
                    anti_entropy_max_interval_s=anti_entropy_s[1],
                    seed=seed + index,
                )
                node.service = NetworkService(
                    private_key=node.key, config=config, releases=node.releases, accept_release=node.accept
                )
                await nursery.start(node.service.run)
            while not all(node.service.gossip.mesh_peers() for node in bench_nodes):
                await trio.sleep(0.05)
        rss_ready = current_rss_mib()

        durations_s: list[float] = []
        bytes_per_host: list[float] = []
        gossip_bytes_per_host: list[float] = []
        cpu_s = wall_s = 0.0
        profiler = cProfile.Profile() if profile_path else None
        for _ in range(runs):
            # Let the previous run's traffic settle and the publisher's rate limit
            # (one announcement per publish_interval_s) expire, so runs are independent.
            await trio.sleep(1.0)
            publisher = rng.choice(bench_nodes)
            publisher.sequence += 1
            data = make_release_bytes(publisher.key, sequence=publisher.sequence, size_kb=size_kb, rng=data_rng)
            rid = release_id(data)
            sent_before = sent_bytes(bench_nodes)

            publisher.releases.accept(data)
            if profiler is not None:
                profiler.enable()
            cpu_started_s, wall_started_s = time.process_time(), time.perf_counter()
            started = trio.current_time()
            publisher.service.announce_release(release_id=rid, sequence=publisher.sequence, size_bytes=len(data))
            others = [n for n in bench_nodes if n is not publisher]
            with trio.fail_after(RUN_DEADLINE_S):
                while not all(rid in n.arrivals for n in others):
                    await trio.sleep(0.002)
            durations_s.append(max(n.arrivals[rid] for n in others) - started)
            cpu_s += time.process_time() - cpu_started_s
            wall_s += time.perf_counter() - wall_started_s
            if profiler is not None:
                profiler.disable()

            sent_after = sent_bytes(bench_nodes)
            bytes_per_host.append((sent_after[0] - sent_before[0]) / nodes)
            gossip_bytes_per_host.append((sent_after[1] - sent_before[1]) / nodes)

        cpu_share = cpu_s / wall_s
        if profiler is not None:
            profiler.dump_stats(profile_path)
        pulled = sum(n.service.statistics()["gossip"].get("pulled", 0) for n in bench_nodes)
        for node in bench_nodes:
            node.service.stop()

    return {
        "nodes": nodes,
        "topology": topology if topology == "full" else f"sparse d={degree}",
        "size_kb": len(data) / 1024,
        "runs": runs,
        "p50_s": statistics.median(durations_s),
        "p95_s": float(np.percentile(durations_s, 95)),
        "max_s": max(durations_s),
        "sent_per_host_kb": statistics.mean(bytes_per_host) / 1024,
        "gossip_sent_per_host_kb": statistics.mean(gossip_bytes_per_host) / 1024,
        "pulled_share": pulled / (runs * (nodes - 1)),
        "cpu_share": cpu_share,
        "rss_ready_mib": rss_ready,
        "rss_per_host_mib": (rss_ready - rss_before) / nodes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def format_table(rows: list[dict]) -> list[str]:
    """Return the result rows as Markdown table lines; a baseline without gossip counters shows "-"."""
    lines = [
        "| code | hosts | topology | release KB | runs | p50 s | p95 s | max s | sync KB sent/host/run "
        "| gossip KB sent/host/run | by pull | CPU busy | RSS MiB | RSS MiB/host | peak RSS MiB |",
        "|---" * 15 + "|",
    ]
    for row in rows:
        gossip_kb = row.get("gossip_sent_per_host_kb")
        lines.append(
            f"| {row.get('code', 'this tree')} | {row['nodes']} | {row['topology']} | {row['size_kb']:.0f} | {row['runs']} "
            f"| {row['p50_s']:.3f} | {row['p95_s']:.3f} | {row['max_s']:.3f} | {row['sent_per_host_kb']:.0f} "
            f"| {'-' if gossip_kb is None else f'{gossip_kb:.1f}'} "
            f"| {row['pulled_share']:.0%} | {row['cpu_share']:.0%} | {row['rss_ready_mib']:.0f} "
            f"| {row['rss_per_host_mib']:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    return lines


def run_child(script: Path, case: dict) -> dict:
    """Run one case in a child process of ``script`` (this file or a baseline's copy); return its row."""
    completed = subprocess.run(
        [sys.executable, str(script), "--case-json", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        print(completed.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"case {case} of {script} failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def record(
    rows: list[dict], *, load_average: float, compare_with: str | None, commit_label: str | None, note: str | None
) -> None:
    """Rewrite the gossip section of docs/benchmarks.md with ``rows``."""
    from benchdoc import machine_summary, write_section

    # A local checkout path means nothing to a reader: name the commit instead.
    arguments = [
        f"<checkout of {commit_label}>" if compare_with and commit_label and argument == compare_with else argument
        for argument in sys.argv[1:]
    ]
    command = "python benchmarks/bench_gossip.py " + " ".join(arguments)
    current = [row for row in rows if row.get("code", "this tree") == "this tree"]
    largest = max(row["nodes"] for row in current)
    verdicts = ", ".join(
        f"{row['size_kb']:.0f} KB p95 {row['p95_s']:.2f} s" for row in current if row["nodes"] == largest
    )
    lines = [
        f"Command: `{command}`",
        f"Machine: {machine_summary()}; load average {load_average:.1f} before the last case.",
        "",
        "All hosts of a case run in **one Python process, so on one core** (in-process hosts). They are real",
        "py-libp2p hosts with Noise and Yamux on 127.0.0.1, in a random sparse graph where each new host dials",
        "3 earlier ones, and they keep releases in memory with the real strict decoder.",
        "A run publishes one release: the author",
        "stores it and gossips a signed announcement, every other host pulls the body over the sync protocol",
        "from the peer that forwarded the announcement and forwards the announcement once the body is stored.",
        "Time: from the publish until every host holds the body (p50 / p95 / max over the runs). \"by pull\" is",
        "the share of bodies that arrived through the announcement pull rather than anti-entropy. Sync and",
        "gossip KB exclude Noise and Yamux framing. \"CPU busy\" is process CPU time over wall time: at 100 %",
        "the one core, not the network, sets the pace, because every host's work runs one after another.",
    ]
    if compare_with:
        lines += [
            "",
            "Each case ran twice, interleaved so that both saw the same machine load: \"baseline\" is the code",
            f"at {commit_label or compare_with}, \"this tree\" the current code. A checkout of an older commit",
            "can be made with `git worktree add ../baseline <commit>`.",
        ]
    lines += ["", *format_table(rows), "", f"Target: at most 1 s (p95) until all {largest} hosts hold a release. "
              f"This tree: {verdicts}. No release was missing at the end of any run."]
    if note:
        lines += ["", note]
    write_section("Gossip: time until every node holds a release", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 25, 50], help="numbers of hosts, one case each")
    parser.add_argument("--size-kb", type=int, nargs="+", default=[300], help="release sizes in KB, one case each")
    parser.add_argument("--runs", type=int, default=5, help="publishes per case (default %(default)s)")
    parser.add_argument("--topology", choices=["sparse", "full"], default="sparse")
    parser.add_argument("--degree", type=int, default=3, help="dials per new node in the sparse graph")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--anti-entropy-s", type=float, nargs=2, default=[5.0, 10.0], metavar=("MIN", "MAX"),
        help="anti-entropy interval range in seconds (default: the service default, 5 10)",
    )
    parser.add_argument(
        "--profile", metavar="PATH",
        help="write a cProfile of the publish runs (not the start-up) of a single case to PATH",
    )
    parser.add_argument(
        "--compare-with", metavar="DIR",
        help="also run every case with the code of another checkout in DIR (e.g. made by git worktree add), "
        "interleaved with this tree's runs",
    )
    parser.add_argument("--commit-label", help="name of the --compare-with code in the recorded text, e.g. a commit id")
    parser.add_argument("--record", action="store_true", help="rewrite the gossip section of docs/benchmarks.md")
    parser.add_argument("--note", help="a paragraph added to the recorded section, e.g. what changed since the baseline")
    parser.add_argument("--case-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    if args.case_json:
        # Child mode: run one case and print its row, so that RSS belongs to this case alone.
        case = json.loads(args.case_json)
        row = trio.run(lambda: run_case(**case))
        print(json.dumps(row))
        return

    cases = len(args.size_kb) * len(args.nodes)
    if args.profile and cases != 1:
        parser.error(f"--profile needs exactly one case (one --nodes and one --size-kb value), got {cases}")
    baseline_script = None
    if args.compare_with:
        baseline_script = Path(args.compare_with).resolve() / "benchmarks" / "bench_gossip.py"
        if not baseline_script.is_file():
            parser.error(f"--compare-with {args.compare_with}: no benchmarks/bench_gossip.py there; give a checkout")

    rows = []
    for size_kb in args.size_kb:
        for nodes in args.nodes:
            case = dict(
                nodes=nodes, size_kb=size_kb, runs=args.runs, topology=args.topology,
                degree=args.degree, seed=args.seed, anti_entropy_s=tuple(args.anti_entropy_s),
            )
            started = time.perf_counter()
            if baseline_script is not None:
                rows.append({**run_child(baseline_script, case), "code": "baseline"})
            rows.append({**run_child(Path(__file__), {**case, "profile_path": args.profile}), "code": "this tree"})
            print(f"# {nodes} hosts, {size_kb} KB: {time.perf_counter() - started:.1f} s wall", file=sys.stderr)

    load_average = os.getloadavg()[0]
    print(f"load average before the last case: {load_average:.1f} on {os.cpu_count()} CPUs")
    print("\n".join(format_table(rows)))
    if args.record:
        record(
            rows, load_average=load_average, compare_with=args.compare_with, commit_label=args.commit_label,
            note=args.note,
        )


if __name__ == "__main__":
    main()
