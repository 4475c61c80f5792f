"""Measurement: which noisy marginals a node computes from its private codes.

The default first round follows MST (McKenna, Miklau and Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private
synthetic data", 2021). The node's rho is split in three equal parts:

1. all 1-way marginals, noised together;
2. private selection of a maximum spanning tree over attribute pairs, with
   one exponential-mechanism draw per tree edge (Kruskal order); a pair's
   score is the L1 distance between its true 2-way marginal and the
   independence estimate from step 1's noisy 1-ways;
3. the chosen tree's 2-way marginals, noised together.

Privacy: adding or removing one row changes every marginal in exactly one
cell by one, so k marginals measured together have L2 sensitivity sqrt(k),
and Gaussian noise of standard deviation sigma on each costs
rho = k / (2 sigma^2). The L1 score has sensitivity 1 because the estimate
it compares against is already public. An epsilon-DP exponential mechanism
is epsilon^2 / 8 zCDP (Cesar and Rogers 2021, bounded range), so r - 1 draws
with a selection budget rho_s each use epsilon = sqrt(8 rho_s / (r - 1)).

The discrete Gaussian sampler may use a slightly larger sigma than requested
(its variance is rounded up to an exact rational), which only lowers the true
cost; releases record the sigma actually used and claim the planned rho.

Later rounds measure attribute sets chosen from public information (other
members' releases, the global model) with ``measure_marginals``; that choice
is post-processing and costs nothing beyond the new measurements.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import PrivacyError
from p2psynth.noise import SecureRandom, discrete_gaussian, exact_sigma

log = logging.getLogger(__name__)

# Pairs with more cells than this are not candidates for the tree: their
# counts would be mostly noise at the budgets a node has.
DEFAULT_MAX_PAIR_CELLS = 100_000


@dataclass(frozen=True)
class MeasurementResult:
    """Measurements of one step with their privacy cost."""

    measurements: tuple[Measurement, ...]
    rho: float
    selected_pairs: tuple[tuple[str, str], ...] = ()


def marginal_counts(codes: np.ndarray, domain: Domain, attributes: Sequence[str]) -> np.ndarray:
    """Return the exact int64 contingency table of ``codes`` over ``attributes``."""
    return ColumnCache(codes, domain).counts(attributes)


class ColumnCache:
    """Contiguous int32 copies of code columns, made once for many marginals.

    Counting a marginal is one multiply-add per attribute and one
    ``np.bincount`` over the raveled cell index; contiguous int32 columns make
    that about twice as fast as indexing a column-major int64 table each time.
    """

    def __init__(self, codes: np.ndarray, domain: Domain) -> None:
        if codes.ndim != 2 or codes.shape[1] != len(domain):
            raise PrivacyError(
                f"codes have shape {codes.shape}; expected (rows, {len(domain)}) for the schema's columns"
            )
        self._codes = codes
        self._domain = domain
        # Filled on first use: attribute name -> contiguous int32 column.
        self._columns: dict[str, np.ndarray] = {}

    def column(self, attribute: str) -> np.ndarray:
        if attribute not in self._columns:
            index = self._domain.index(attribute)
            self._columns[attribute] = np.ascontiguousarray(self._codes[:, index], dtype=np.int32)
        return self._columns[attribute]

    def counts(self, attributes: Sequence[str]) -> np.ndarray:
        shape = self._domain.shape(attributes)
        cells = math.prod(shape)
        if len(self._codes) == 0:
            return np.zeros(shape, dtype=np.int64)

        # Raveled cell index in C order; int64 when the cell count needs it.
        dtype = np.int32 if cells < 2**31 else np.int64
        flat = self.column(attributes[0]).astype(dtype, copy=True)
        for attribute, size in zip(attributes[1:], shape[1:]):
            flat *= dtype(size)
            flat += self.column(attribute)
        return np.bincount(flat, minlength=cells).astype(np.int64).reshape(shape)


def measure_marginals(
    codes: "np.ndarray | ColumnCache",
    domain: Domain,
    attribute_sets: Sequence[tuple[str, ...]],
    *,
    rho: float,
    random: SecureRandom,
) -> list[Measurement]:
    """Measure the marginals on ``attribute_sets`` together, spending exactly ``rho``.

    Every marginal gets the same sigma = sqrt(k / (2 rho)) for k marginals.
    """
    if not attribute_sets:
        raise PrivacyError("no marginals to measure; pass at least one attribute set")
    if not (math.isfinite(rho) and rho > 0):
        raise PrivacyError(f"rho = {rho!r} is invalid; it must be a positive finite number")

    sigma = math.sqrt(len(attribute_sets) / (2.0 * rho))
    cache = codes if isinstance(codes, ColumnCache) else ColumnCache(codes, domain)
    measurements = []
    for attributes in attribute_sets:
        counts = cache.counts(attributes)
        noise, used_sigma = discrete_gaussian_with_sigma(sigma, counts.shape, random)
        measurements.append(Measurement(attributes=tuple(attributes), counts=counts + noise, sigma=used_sigma))
    return measurements


def select_mst_pairs(
    codes: "np.ndarray | ColumnCache",
    domain: Domain,
    *,
    rho: float,
    random: SecureRandom,
    one_way: Sequence[Measurement],
    max_pair_cells: int = DEFAULT_MAX_PAIR_CELLS,
) -> list[tuple[str, str]]:
    """Choose a spanning tree of attribute pairs privately, spending ``rho``.

    ``one_way`` are the already noised 1-way marginals; they give the
    independence estimate each pair's score is measured against.
    """
    attributes = list(domain.attributes)
    if len(attributes) < 2:
        return []
    if not (math.isfinite(rho) and rho > 0):
        raise PrivacyError(f"rho = {rho!r} is invalid; it must be a positive finite number")

    # Independence estimate from public (noised) 1-ways: non-negative, normalized.
    by_attribute = {m.attributes[0]: m.counts for m in one_way if len(m.attributes) == 1}
    missing = [a for a in attributes if a not in by_attribute]
    if missing:
        raise PrivacyError(f"MST selection needs noisy 1-way marginals of every attribute; missing {missing}")
    total = max(1.0, float(np.mean([np.clip(c, 0, None).sum() for c in by_attribute.values()])))
    probabilities = {a: _normalized(by_attribute[a]) for a in attributes}

    candidates = [
        (a, b) for a, b in combinations(attributes, 2) if domain.size(a) * domain.size(b) <= max_pair_cells
    ]
    cache = codes if isinstance(codes, ColumnCache) else ColumnCache(codes, domain)
    scores = {}
    for a, b in candidates:
        true = cache.counts((a, b)).astype(np.float64)
        estimate = total * np.outer(probabilities[a], probabilities[b])
        scores[(a, b)] = float(np.abs(true - estimate).sum())

    # Kruskal: each round picks one edge among those joining two components.
    rounds = len(attributes) - 1
    epsilon = math.sqrt(8.0 * rho / rounds)
    component = {a: a for a in attributes}

    def find(a: str) -> str:
        while component[a] != a:
            component[a] = component[component[a]]
            a = component[a]
        return a

    chosen: list[tuple[str, str]] = []
    for _ in range(rounds):
        options = [pair for pair in candidates if find(pair[0]) != find(pair[1])]
        if not options:
            break  # every remaining pair is over the cell cap: the tree stays a forest
        index = exponential_mechanism([scores[p] for p in options], epsilon=epsilon, sensitivity=1.0, random=random)
        a, b = options[index]
        chosen.append((a, b))
        component[find(a)] = find(b)
    return chosen


def measure_mst(
    codes: np.ndarray,
    domain: Domain,
    *,
    rho: float,
    random: SecureRandom,
    max_pair_cells: int = DEFAULT_MAX_PAIR_CELLS,
) -> MeasurementResult:
    """Run the three MST steps, each with a third of ``rho``."""
    share = rho / 3.0
    codes = ColumnCache(codes, domain)
    one_way = measure_marginals(codes, domain, [(a,) for a in domain.attributes], rho=share, random=random)
    if len(domain) < 2:
        return MeasurementResult(tuple(one_way), rho)

    pairs = select_mst_pairs(
        codes, domain, rho=share, random=random, one_way=one_way, max_pair_cells=max_pair_cells
    )
    if not pairs:
        return MeasurementResult(tuple(one_way), rho)
    two_way = measure_marginals(codes, domain, pairs, rho=share, random=random)
    return MeasurementResult(tuple(one_way + two_way), rho, tuple(pairs))


def exponential_mechanism(
    scores: Sequence[float], *, epsilon: float, sensitivity: float, random: SecureRandom
) -> int:
    """Return an index drawn with probability proportional to exp(epsilon * score / (2 sensitivity)).

    Uses the Gumbel-max trick with uniforms from the secure source.
    """
    # NOTE: the Gumbel perturbation is computed in floating point. Only the
    # chosen index is released, not a noisy value, so the floating-point
    # attack on released Laplace values does not apply directly, but the
    # selection probabilities are approximate in their last bits.
    values = np.asarray(scores, dtype=np.float64) * (epsilon / (2.0 * sensitivity))
    uniforms = _uniforms(len(values), random)
    gumbel = -np.log(-np.log(uniforms))
    return int(np.argmax(values + gumbel))


def discrete_gaussian_with_sigma(
    sigma: float, shape: tuple[int, ...], random: SecureRandom
) -> tuple[np.ndarray, float]:
    """Draw discrete Gaussian noise of ``shape``; return it with the sigma actually used."""
    noise = discrete_gaussian(sigma=sigma, size=shape, random=random)
    return noise.astype(np.int64, copy=False), float(exact_sigma(sigma))


def _uniforms(count: int, random: SecureRandom) -> np.ndarray:
    """Return ``count`` uniforms in the open interval (0, 1) with 53 random bits each."""
    raw = np.frombuffer(random.random_bytes(8 * count), dtype="<u8") >> np.uint64(11)
    return (raw.astype(np.float64) + 0.5) / float(1 << 53)


def _normalized(counts: np.ndarray) -> np.ndarray:
    clipped = np.clip(counts.astype(np.float64), 0, None)
    total = clipped.sum()
    if total <= 0:
        return np.full(counts.shape, 1.0 / counts.size)
    return clipped / total
