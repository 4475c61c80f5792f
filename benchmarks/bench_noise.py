"""Draw rate of the exact discrete Gaussian sampler.

For each sigma, draws ``--draws`` values with discrete_gaussian from a seeded
SecureRandom ``--repeats`` times and prints a table: the best and median
wall time, draws per second from the best time, and the ChaCha20 keystream
consumed per draw. Also times the raw keystream and uniform integer draws,
the two costs under the sampler.

Run: /work/venv/bin/python benchmarks/bench_noise.py --draws 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from p2psynth.noise import SecureRandom, discrete_gaussian


class CountingRandom(SecureRandom):
    """SecureRandom that counts the keystream bytes it hands out."""

    def __init__(self, *, seed: bytes | None = None) -> None:
        super().__init__(seed=seed)
        self.bytes_drawn = 0

    def random_bytes(self, n_bytes: int) -> bytes:
        self.bytes_drawn += n_bytes
        return super().random_bytes(n_bytes)


def time_gaussian(sigma: float, draws: int, repeats: int) -> tuple[list[float], float]:
    """Return the wall times of each repeat and the keystream bytes per draw."""
    seconds = []
    bytes_per_draw = 0.0
    for repeat in range(repeats):
        random = CountingRandom(seed=repeat.to_bytes(32, "little"))
        started = time.perf_counter()
        values = discrete_gaussian(sigma=sigma, size=draws, random=random)
        seconds.append(time.perf_counter() - started)
        assert values.size == draws
        bytes_per_draw = random.bytes_drawn / draws
    return seconds, bytes_per_draw


def time_primitives(draws: int) -> list[tuple[str, float]]:
    """Return (label, seconds) for the keystream and uniform draws of `draws` values."""
    random = SecureRandom(seed=bytes(32))
    rows = []

    started = time.perf_counter()
    random.random_bytes(8 * draws)
    rows.append((f"keystream, {8 * draws / 2**20:.0f} MiB", time.perf_counter() - started))

    started = time.perf_counter()
    random.randbelow(1000, size=draws)
    rows.append(("randbelow(1000)", time.perf_counter() - started))

    started = time.perf_counter()
    random.randbelow((1 << 40) + 7, size=draws)
    rows.append(("randbelow(2**40 + 7)", time.perf_counter() - started))

    bounds = np.arange(1, draws + 1, dtype=np.int64)
    started = time.perf_counter()
    random.randbelow(bounds)
    rows.append(("randbelow(array of bounds)", time.perf_counter() - started))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1_000_000, help="values per call")
    parser.add_argument("--repeats", type=int, default=3, help="calls per sigma")
    parser.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[0.5, 3.0, 10.0, 100.0, 1e4, 1e5, 1e7],
        help="noise scales to time",
    )
    arguments = parser.parse_args()

    print(f"discrete_gaussian, {arguments.draws} draws per call, {arguments.repeats} repeats")
    print(f"{'sigma':>10} {'best s':>8} {'median s':>9} {'draws/s':>12} {'bytes/draw':>11}")
    for sigma in arguments.sigmas:
        seconds, bytes_per_draw = time_gaussian(sigma, arguments.draws, arguments.repeats)
        best = min(seconds)
        print(
            f"{sigma:>10g} {best:>8.3f} {statistics.median(seconds):>9.3f} "
            f"{arguments.draws / best:>12,.0f} {bytes_per_draw:>11.1f}"
        )

    print()
    print(f"primitives, {arguments.draws} values each")
    print(f"{'operation':>28} {'seconds':>8} {'values/s':>12}")
    for label, seconds in time_primitives(arguments.draws):
        print(f"{label:>28} {seconds:>8.3f} {arguments.draws / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
