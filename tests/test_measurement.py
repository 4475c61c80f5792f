"""Measurement: exact marginals, noise calibration and private MST selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2psynth.domain import Domain
from p2psynth.errors import PrivacyError
from p2psynth.measurement import (
    exponential_mechanism,
    marginal_counts,
    measure_marginals,
    measure_mst,
    select_mst_pairs,
)
from p2psynth.noise import SecureRandom


def _random(seed: int = 1) -> SecureRandom:
    return SecureRandom(seed=bytes([seed]) * 32)


def _chain_data(rows: int = 20_000, seed: int = 0) -> tuple[np.ndarray, Domain]:
    """Data where a -> b -> c are strongly dependent and d is independent noise."""
    generator = np.random.default_rng(seed)
    a = generator.integers(0, 4, rows)
    b = np.where(generator.random(rows) < 0.9, a, generator.integers(0, 4, rows))
    c = np.where(generator.random(rows) < 0.9, b % 3, generator.integers(0, 3, rows))
    d = generator.integers(0, 5, rows)
    codes = np.stack([a, b, c, d], axis=1).astype(np.int16)
    return codes, Domain(("a", "b", "c", "d"), (4, 4, 3, 5))


def test_marginal_counts_match_bruteforce():
    codes, domain = _chain_data(rows=500)
    table = marginal_counts(codes, domain, ("c", "a"))
    expected = np.zeros((3, 4), dtype=np.int64)
    for row in codes:
        expected[row[2], row[0]] += 1
    np.testing.assert_array_equal(table, expected)
    assert table.dtype == np.int64


def test_marginal_counts_empty_table():
    domain = Domain(("a",), (3,))
    table = marginal_counts(np.zeros((0, 1), dtype=np.int8), domain, ("a",))
    np.testing.assert_array_equal(table, [0, 0, 0])


def test_measure_marginals_sigma_matches_rho():
    codes, domain = _chain_data(rows=1000)
    sets = [("a",), ("b",), ("a", "b")]
    rho = 0.05
    measurements = measure_marginals(codes, domain, sets, rho=rho, random=_random())

    expected_sigma = math.sqrt(len(sets) / (2 * rho))
    for m in measurements:
        assert m.sigma >= expected_sigma  # rounding may only add noise
        assert m.sigma == pytest.approx(expected_sigma, rel=1e-6)
        assert m.counts.dtype == np.int64
    spent = sum(1 / (2 * m.sigma**2) for m in measurements)
    assert spent <= rho


def test_measure_marginals_noise_has_expected_spread():
    codes, domain = _chain_data(rows=1000)
    rho = 0.5
    measurements = measure_marginals(codes, domain, [("a", "b", "c")], rho=rho, random=_random(2))
    true = marginal_counts(codes, domain, ("a", "b", "c"))
    errors = (measurements[0].counts - true).ravel()
    sigma = measurements[0].sigma
    assert abs(errors.mean()) < 4 * sigma / math.sqrt(errors.size)
    assert 0.6 * sigma < errors.std() < 1.4 * sigma


def test_measure_marginals_rejects_bad_rho():
    codes, domain = _chain_data(rows=10)
    for rho in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PrivacyError, match="rho"):
            measure_marginals(codes, domain, [("a",)], rho=rho, random=_random())
    with pytest.raises(PrivacyError, match="no marginals"):
        measure_marginals(codes, domain, [], rho=1.0, random=_random())


def test_mst_selection_finds_dependent_chain():
    codes, domain = _chain_data()
    one_way = measure_marginals(codes, domain, [(a,) for a in domain.attributes], rho=1.0, random=_random())
    pairs = select_mst_pairs(codes, domain, rho=1.0, random=_random(3), one_way=one_way)

    assert len(pairs) == 3
    chosen = {frozenset(p) for p in pairs}
    assert frozenset(("a", "b")) in chosen
    assert frozenset(("b", "c")) in chosen


def test_mst_selection_respects_cell_cap():
    codes, domain = _chain_data(rows=2000)
    one_way = measure_marginals(codes, domain, [(a,) for a in domain.attributes], rho=1.0, random=_random())
    pairs = select_mst_pairs(codes, domain, rho=1.0, random=_random(), one_way=one_way, max_pair_cells=12)
    for a, b in pairs:
        assert domain.size(a) * domain.size(b) <= 12


def test_measure_mst_spends_its_rho():
    codes, domain = _chain_data(rows=5000)
    result = measure_mst(codes, domain, rho=0.3, random=_random(4))

    one_way = [m for m in result.measurements if len(m.attributes) == 1]
    two_way = [m for m in result.measurements if len(m.attributes) == 2]
    assert len(one_way) == 4
    assert len(two_way) == 3
    assert result.rho == 0.3
    # The noisy counts cost two thirds of rho; selection the remaining third.
    noise_rho = sum(1 / (2 * m.sigma**2) for m in result.measurements)
    assert noise_rho == pytest.approx(0.2, rel=1e-6)
    assert noise_rho <= 0.2


def test_exponential_mechanism_prefers_high_scores():
    random = _random(5)
    picks = [exponential_mechanism([0.0, 0.0, 50.0], epsilon=1.0, sensitivity=1.0, random=random) for _ in range(200)]
    assert picks.count(2) == 200


def test_exponential_mechanism_is_uniform_on_ties():
    random = _random(6)
    picks = [exponential_mechanism([1.0, 1.0], epsilon=1.0, sensitivity=1.0, random=random) for _ in range(2000)]
    share = picks.count(0) / len(picks)
    assert 0.45 < share < 0.55
