"""Tests of fit_model: recovery of known distributions, determinism and input validation.

Known distributions are pairwise log-linear models. For such a model the
maximum-entropy distribution with its pair marginals is the model itself, so a
fit to its exact pair marginals (tiny sigma) must recover every marginal,
including 3-way marginals that were never measured.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError
from p2psynth.model import GraphicalModel, fit_model

ROWS = 10**9


def pairwise_distribution(domain: Domain, pairs: list[tuple[str, str]], seed: int) -> np.ndarray:
    """Return the joint table (axes in domain order) of a random pairwise log-linear model."""
    rng = np.random.default_rng(seed)
    log_joint = np.zeros(domain.sizes)
    for pair in pairs:
        axes = [domain.index(a) for a in pair]
        shape = [domain.sizes[i] if i in axes else 1 for i in range(len(domain))]
        log_joint = log_joint + rng.normal(scale=1.0, size=shape)
    joint = np.exp(log_joint)
    return joint / joint.sum()


def true_marginal(joint: np.ndarray, domain: Domain, attributes: tuple[str, ...]) -> np.ndarray:
    axes = [domain.index(a) for a in attributes]
    summed = tuple(i for i in range(len(domain)) if i not in axes)
    result = joint.sum(axis=summed)
    kept = sorted(axes)
    return np.transpose(result, [kept.index(i) for i in axes])


def exact_measurements(joint, domain, cliques, *, sigma=1e-3) -> list[Measurement]:
    return [
        Measurement(clique, np.rint(true_marginal(joint, domain, clique) * ROWS).astype(np.int64), sigma)
        for clique in cliques
    ]


def assert_recovers(model: GraphicalModel, joint: np.ndarray, domain: Domain, *, tolerance: float) -> None:
    for size in (1, 2, 3):
        for attributes in itertools.combinations(domain.attributes, size):
            fitted = model.project(attributes)
            truth = true_marginal(joint, domain, attributes)
            assert fitted.shape == truth.shape, attributes
            assert np.abs(fitted - truth).max() < tolerance, attributes


def test_fit_recovers_tree_distribution():
    domain = Domain(("a", "b", "c", "d", "e"), (3, 4, 2, 3, 5))
    pairs = [("a", "b"), ("b", "c"), ("b", "d"), ("d", "e")]
    joint = pairwise_distribution(domain, pairs, seed=1)
    cliques = [(a,) for a in domain.attributes] + pairs

    model = fit_model(domain, exact_measurements(joint, domain, cliques), max_iterations=3000, tolerance=1e-12)

    assert_recovers(model, joint, domain, tolerance=1e-4)
    assert math.isclose(model.total, ROWS, rel_tol=1e-6)


def test_fit_recovers_cyclic_distribution():
    # A 4-cycle plus a chord-free pendant: triangulation adds a fill edge, and
    # queries such as (b, d) span two cliques.
    domain = Domain(("a", "b", "c", "d", "e"), (3, 2, 4, 3, 2))
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e")]
    joint = pairwise_distribution(domain, pairs, seed=2)
    cliques = [(a,) for a in domain.attributes] + pairs

    model = fit_model(domain, exact_measurements(joint, domain, cliques), max_iterations=3000, tolerance=1e-12)

    assert len(model.tree.cliques) >= 3
    assert model.tree.containing(("b", "d")) is None or model.tree.containing(("a", "c")) is None
    assert_recovers(model, joint, domain, tolerance=1e-4)


def test_fit_combines_authors_of_different_sizes():
    domain = Domain(("a", "b"), (3, 4))
    joint = pairwise_distribution(domain, [("a", "b")], seed=3)
    small = [Measurement(m.attributes, m.counts // 1000, 1e-3) for m in exact_measurements(joint, domain, [("a",), ("a", "b")])]
    large = exact_measurements(joint, domain, [("b",), ("a", "b")])

    model = fit_model(
        domain, small + large, sources=["small"] * len(small) + ["large"] * len(large), max_iterations=2000
    )

    assert math.isclose(model.total, ROWS + ROWS // 1000, rel_tol=1e-4)
    assert np.abs(model.project(("a", "b")) - joint).max() < 1e-4


def test_fit_ignores_measurement_order():
    domain = Domain(("a", "b", "c", "d"), (3, 4, 2, 3))
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")]
    joint = pairwise_distribution(domain, pairs, seed=4)
    rng = np.random.default_rng(5)
    measurements = []
    sources = []
    for author in range(3):
        for clique in [(a,) for a in domain.attributes] + pairs[author:]:
            exact = np.rint(true_marginal(joint, domain, clique) * 5000).astype(np.int64)
            noisy = exact + np.rint(rng.normal(scale=5.0 + author, size=exact.shape)).astype(np.int64)
            measurements.append(Measurement(clique, noisy, 5.0 + author))
            sources.append(f"author-{author}")
    # The same pair measured with its axes the other way round must be equivalent.
    reversed_pair = np.rint(true_marginal(joint, domain, ("b", "a")) * 5000).astype(np.int64)
    measurements.append(Measurement(("b", "a"), reversed_pair, 30.0))
    sources.append("author-0")

    reference = fit_model(domain, measurements, sources=sources, max_iterations=50).to_bytes()
    for shuffle_seed in range(3):
        order = np.random.default_rng(shuffle_seed).permutation(len(measurements))
        shuffled = fit_model(
            domain,
            [measurements[i] for i in order],
            sources=[sources[i] for i in order],
            max_iterations=50,
        )
        assert shuffled.to_bytes() == reference


def test_fit_estimates_total_from_noisy_counts():
    domain = Domain(("a", "b"), (2, 50))
    rng = np.random.default_rng(6)
    measurements = [
        Measurement(("a",), np.array([600, 400]) + np.rint(rng.normal(scale=2, size=2)).astype(np.int64), 2.0),
        Measurement(("b",), np.full(50, 20) + np.rint(rng.normal(scale=2, size=50)).astype(np.int64), 2.0),
    ]
    model = fit_model(domain, measurements, max_iterations=20)
    # Inverse-variance weights favour the 2-cell total: its noise std is 2 * sqrt(2), the other's 2 * sqrt(50).
    assert abs(model.total - 1000) < 10


def test_fit_rejects_no_measurements():
    domain = Domain(("a",), (2,))
    with pytest.raises(ModelError, match="no measurements"):
        fit_model(domain, [])


def test_fit_rejects_unknown_attribute():
    domain = Domain(("a", "b"), (2, 3))
    measurement = Measurement(("a", "zip"), np.zeros((2, 4), dtype=np.int64), 1.0)
    with pytest.raises(ModelError, match="'zip'.*not in the domain"):
        fit_model(domain, [measurement])


def test_fit_rejects_wrong_shape():
    domain = Domain(("a", "b"), (2, 3))
    measurement = Measurement(("a", "b"), np.zeros((2, 4), dtype=np.int64), 1.0)
    with pytest.raises(ModelError, match=r"shape \(2, 4\).*\(2, 3\)"):
        fit_model(domain, [measurement])


def test_fit_rejects_float_counts():
    domain = Domain(("a",), (2,))
    measurement = Measurement(("a",), np.array([1.5, 2.0]), 1.0)
    with pytest.raises(ModelError, match="integer numpy array"):
        fit_model(domain, [measurement])


def test_fit_rejects_repeated_attribute():
    domain = Domain(("a",), (2,))
    measurement = Measurement(("a", "a"), np.zeros((2, 2), dtype=np.int64), 1.0)
    with pytest.raises(ModelError, match="repeats an attribute"):
        fit_model(domain, [measurement])


def test_fit_rejects_sources_of_wrong_length():
    domain = Domain(("a",), (2,))
    measurement = Measurement(("a",), np.array([1, 2]), 1.0)
    with pytest.raises(ModelError, match="2 sources for 1 measurements"):
        fit_model(domain, [measurement], sources=["x", "y"])


def test_fit_names_cliques_over_cap():
    domain = Domain(("a", "b", "c", "d"), (30, 30, 30, 30))
    cycle = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")]
    measurements = [Measurement(p, np.full((30, 30), 5, dtype=np.int64), 1.0) for p in cycle]
    with pytest.raises(ModelError) as raised:
        fit_model(domain, measurements, max_clique_cells=10_000)
    message = str(raised.value)
    assert "max_clique_cells=10,000" in message
    assert "27,000 cells" in message
    assert " x " in message
    assert "drop_cliques_over_cap=True" in message


def test_fit_drops_cliques_over_cap_on_request():
    domain = Domain(("a", "b", "c", "d"), (30, 30, 30, 30))
    cycle = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")]
    measurements = [
        Measurement(p, np.full((30, 30), 5 + i, dtype=np.int64), 1.0 + i) for i, p in enumerate(cycle)
    ]
    model = fit_model(domain, measurements, max_clique_cells=10_000, drop_cliques_over_cap=True, max_iterations=20)
    # The noisiest pair (largest sigma, least weight) closes the cycle and is the one dropped.
    assert model.fit_summary.dropped_cliques == (("a", "d"),)
    assert max(model.tree.cells(c) for c in range(len(model.tree.cliques))) <= 10_000
