"""Tests of GraphicalModel sampling, conditioning, projection and serialization.

The model under test is fitted to exact marginals of a known cyclic pairwise
distribution, so its projections are known to within 1e-4 and sampled
frequencies can be checked against them with binomial tolerances.
"""

from __future__ import annotations

import hashlib
import itertools

import msgpack
import numpy as np
import pytest

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError
from p2psynth.model import GraphicalModel, JunctionTree, fit_model

DOMAIN = Domain(("a", "b", "c", "d", "e"), (3, 2, 4, 3, 5))
PAIRS = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e")]
ROWS = 200_000


def frequencies(codes: np.ndarray, attributes: tuple[str, ...]) -> np.ndarray:
    columns = [DOMAIN.index(a) for a in attributes]
    shape = DOMAIN.shape(attributes)
    flat = np.ravel_multi_index(tuple(codes[:, c] for c in columns), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape) / len(codes)


def binomial_tolerance(probabilities: np.ndarray, rows: int) -> np.ndarray:
    """Return 5 standard deviations of an empirical frequency, plus a small floor."""
    return 5 * np.sqrt(probabilities * (1 - probabilities) / rows) + 1e-4


@pytest.fixture(scope="module")
def model() -> GraphicalModel:
    rng = np.random.default_rng(11)
    log_joint = np.zeros(DOMAIN.sizes)
    for pair in PAIRS:
        axes = [DOMAIN.index(a) for a in pair]
        shape = [DOMAIN.sizes[i] if i in axes else 1 for i in range(len(DOMAIN))]
        log_joint = log_joint + rng.normal(size=shape)
    joint = np.exp(log_joint) / np.exp(log_joint).sum()
    measurements = []
    for clique in [(a,) for a in DOMAIN.attributes] + PAIRS:
        summed = tuple(i for i in range(len(DOMAIN)) if DOMAIN.attributes[i] not in clique)
        counts = np.rint(joint.sum(axis=summed) * 10**8).astype(np.int64)
        measurements.append(Measurement(clique, counts, 1e-3))
    return fit_model(DOMAIN, measurements, max_iterations=2000, tolerance=1e-12)


def test_sample_shape_and_determinism(model):
    first = model.sample(1000, seed=3)
    assert first.shape == (1000, len(DOMAIN))
    assert first.dtype == np.int64
    assert np.array_equal(first, model.sample(1000, seed=3))
    assert not np.array_equal(first, model.sample(1000, seed=4))
    for column, size in enumerate(DOMAIN.sizes):
        assert first[:, column].min() >= 0
        assert first[:, column].max() < size


def test_sample_frequencies_match_projection(model):
    codes = model.sample(ROWS, seed=5)
    # One query inside a clique, one across cliques, one over three attributes.
    for attributes in [("a", "b"), ("b", "d"), ("a", "c", "e")]:
        expected = model.project(attributes)
        observed = frequencies(codes, attributes)
        assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, ROWS)), attributes


def test_project_orders_axes_as_requested(model):
    forward = model.project(("a", "c"))
    backward = model.project(("c", "a"))
    assert np.allclose(forward, backward.T)
    assert np.isclose(model.project(("e",)).sum(), 1.0)
    assert model.project(()).shape == ()


def test_project_rejects_bad_attributes(model):
    with pytest.raises(ModelError, match="'zip'"):
        model.project(("a", "zip"))
    with pytest.raises(ModelError, match="repeats an attribute"):
        model.project(("a", "a"))


def test_conditional_samples_satisfy_conditions(model):
    conditions = {"a": {0, 2}, "e": 4}
    codes = model.sample(ROWS, seed=6, conditions=conditions)
    assert set(np.unique(codes[:, DOMAIN.index("a")])) <= {0, 2}
    assert set(np.unique(codes[:, DOMAIN.index("e")])) == {4}


def test_conditional_frequencies_match_model(model):
    conditions = {"b": {1}, "e": {0, 3}}
    codes = model.sample(ROWS, seed=7, conditions=conditions)

    # The conditional distribution from the joint: P(c, d | b = 1, e in {0, 3}).
    joint = model.project(("b", "c", "d", "e"))
    restricted = joint[1][:, :, [0, 3]].sum(axis=2)
    expected = restricted / restricted.sum()
    observed = frequencies(codes, ("c", "d"))
    assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, ROWS))


def test_condition_rejects_unknown_code(model):
    with pytest.raises(ModelError, match=r"codes 7 outside 0\.\.2"):
        model.sample(10, seed=0, conditions={"a": {7}})
    with pytest.raises(ModelError, match="'zip'"):
        model.sample(10, seed=0, conditions={"zip": {0}})
    with pytest.raises(ModelError, match="allows no code"):
        model.sample(10, seed=0, conditions={"a": set()})


def test_condition_of_probability_zero_is_an_error():
    domain = Domain(("x", "y"), (2, 3))
    tree = JunctionTree(domain=domain, cliques=(("x", "y"),), parents=(-1,), order=(0,))
    joint = np.array([[0.5, 0.0, 0.25], [0.25, 0.0, 0.0]])
    model = GraphicalModel(tree=tree, marginals=[joint], total=100.0)

    with pytest.raises(ModelError, match="probability 0"):
        model.sample(10, seed=0, conditions={"y": {1}})
    codes = model.sample(5000, seed=0, conditions={"x": {1}})
    assert set(np.unique(codes[:, 1])) == {0}
    codes = model.sample(5000, seed=0)
    assert not np.any(codes[:, 1] == 1)


def test_bytes_round_trip(model):
    provenance = {"releases": [b"\x01" * 32, b"\x02" * 32], "epsilon": {"node-b": 1.0, "node-a": 0.5}}
    original = GraphicalModel(tree=model.tree, marginals=model.marginals, total=model.total, provenance=provenance)
    data = original.to_bytes()

    loaded = GraphicalModel.from_bytes(data)
    assert loaded.to_bytes() == data
    assert loaded.model_id == original.model_id == hashlib.sha256(data).hexdigest()
    assert loaded.provenance == {"epsilon": {"node-a": 0.5, "node-b": 1.0}, "releases": provenance["releases"]}
    assert list(loaded.provenance["epsilon"]) == ["node-a", "node-b"]
    for attributes in itertools.combinations(DOMAIN.attributes, 2):
        assert np.array_equal(loaded.project(attributes), original.project(attributes))


def test_bytes_rejects_corrupt_input(model):
    data = model.to_bytes()
    with pytest.raises(ModelError, match="not valid msgpack|malformed"):
        GraphicalModel.from_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="keys"):
        GraphicalModel.from_bytes(msgpack.packb({"format": "something else"}))

    document = msgpack.unpackb(data)
    document["marginals"][0] = np.full(len(document["marginals"][0]) // 8, 0.5).tobytes()
    with pytest.raises(ModelError, match="sums to"):
        GraphicalModel.from_bytes(msgpack.packb(document, use_bin_type=True))

    with pytest.raises(ModelError, match="max_bytes"):
        GraphicalModel.from_bytes(data, max_bytes=10)


def test_provenance_rejects_unsupported_values(model):
    with pytest.raises(ModelError, match="provenance\\['when'\\] is a set"):
        GraphicalModel(tree=model.tree, marginals=model.marginals, total=model.total, provenance={"when": {1}})


def test_conditioned_chunks_match_one_draw(model):
    conditions = {"c": {1, 3}}
    first = model.sample(500, seed=8, conditions=conditions)
    # A second condition set in between must not disturb the cached tables of the first.
    model.sample(10, seed=8, conditions={"a": {0}})
    again = model.sample(500, seed=8, conditions={"c": [3, 1]})
    assert np.array_equal(first, again)
    assert set(np.unique(again[:, DOMAIN.index("c")])) <= {1, 3}
