"""Tests of Expansion and of GraphicalModel fitted on group codes and sampled at full resolution.

The main model is fitted to exact grouped marginals of a known distribution
over the full domain, and expanded by the shares of its exact 1-way counts, so
its full-resolution 1-way marginals must equal the true ones. Sampled
frequencies are checked with binomial tolerances of 5 standard deviations,
which a wrong share, a wrong group weight or a draw outside the allowed codes
exceeds by far.
"""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError
from p2psynth.model import Expansion, GraphicalModel, JunctionTree, fit_model, starts_from_maps
from p2psynth.strategy import equal_mass_grouping

FULL = Domain(("a", "b", "c", "d"), (7, 4, 10, 5))
STARTS = ((0, 3, 5), (0, 1, 2, 3), (0, 2, 6, 9), (0,))
WORKING = Domain(("a", "b", "c", "d"), (3, 4, 4, 1))
PAIRS = [("a", "b"), ("b", "c"), ("a", "c")]
ROWS = 200_000


def frequencies(codes: np.ndarray, domain: Domain, attributes: tuple[str, ...]) -> np.ndarray:
    columns = [domain.index(a) for a in attributes]
    shape = domain.shape(attributes)
    flat = np.ravel_multi_index(tuple(codes[:, c] for c in columns), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape) / len(codes)


def binomial_tolerance(probabilities: np.ndarray, rows: int) -> np.ndarray:
    """Return 5 standard deviations of an empirical frequency, plus a small floor."""
    return 5 * np.sqrt(probabilities * (1 - probabilities) / rows) + 1e-4


def group_axis(values: np.ndarray, axis: int, starts: tuple[int, ...]) -> np.ndarray:
    return np.add.reduceat(values, list(starts), axis=axis)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """A distribution over FULL with pair interactions and no mass at c = 7."""
    rng = np.random.default_rng(21)
    log_joint = np.zeros(FULL.sizes)
    for pair in PAIRS + [("d",)]:
        axes = [FULL.index(a) for a in pair]
        shape = [FULL.sizes[i] if i in axes else 1 for i in range(len(FULL))]
        log_joint = log_joint + 1.5 * rng.normal(size=shape)
    joint = np.exp(log_joint)
    joint[:, :, 7, :] = 0.0
    return joint / joint.sum()


@pytest.fixture(scope="module")
def one_way_counts(truth) -> dict[str, np.ndarray]:
    counts = {}
    for index, name in enumerate(FULL.attributes):
        others = tuple(i for i in range(len(FULL)) if i != index)
        counts[name] = np.rint(truth.sum(axis=others) * 10**8).astype(np.int64)
    # Noise can push an empty cell below 0; the shares must treat it as 0.
    counts["c"][7] = -3
    return counts


@pytest.fixture(scope="module")
def working_model(truth) -> GraphicalModel:
    grouped = truth
    for axis, starts in enumerate(STARTS):
        grouped = group_axis(grouped, axis, starts)
    measurements = []
    for clique in [(a,) for a in WORKING.attributes] + PAIRS:
        summed = tuple(i for i in range(len(WORKING)) if WORKING.attributes[i] not in clique)
        counts = np.rint(grouped.sum(axis=summed) * 10**8).astype(np.int64)
        measurements.append(Measurement(clique, counts, 1e-3))
    return fit_model(WORKING, measurements, max_iterations=2000, tolerance=1e-12)


@pytest.fixture(scope="module")
def expansion(one_way_counts) -> Expansion:
    return Expansion.from_counts(FULL, STARTS, one_way_counts)


@pytest.fixture(scope="module")
def model(working_model, expansion) -> GraphicalModel:
    return working_model.with_expansion(expansion)


# --- Expansion on its own -------------------------------------------------------------


def test_from_counts_shares_within_groups():
    domain = Domain(("x", "y", "z"), (6, 3, 4))
    counts = {"x": np.array([2, 6, -4, 0, 0, 5]), "y": np.array([1, 1, 2])}
    expansion = Expansion.from_counts(domain, ((0, 2, 5), (0, 1, 2), (0, 2)), counts)

    assert np.allclose(expansion.shares[0], [0.25, 0.75, 1 / 3, 1 / 3, 1 / 3, 1.0])
    assert np.array_equal(expansion.shares[1], [1.0, 1.0, 1.0])
    assert np.allclose(expansion.shares[2], [0.5, 0.5, 0.5, 0.5])
    assert expansion.working == Domain(("x", "y", "z"), (3, 3, 2))
    assert expansion.maps[0].tolist() == [0, 0, 1, 1, 1, 2]
    assert expansion.maps[2].dtype == np.int64
    assert not expansion.is_identity()


def test_from_counts_identity():
    domain = Domain(("x", "y"), (3, 2))
    expansion = Expansion.from_counts(domain, ((0, 1, 2), np.array([0, 1])), {})
    assert expansion.is_identity()
    assert expansion.working == domain
    assert expansion.starts == ((0, 1, 2), (0, 1))


@pytest.mark.parametrize(
    ("starts", "message"),
    [
        (((1, 3), (0,)), r"'x' are \[1, 3\]; the first group must start at code 0"),
        (((0, 3, 3), (0,)), r"'x' are \[0, 3, 3\]; they must be strictly increasing"),
        (((0, 6), (0,)), r"'x' are \[0, 6\]; start 6 is not a code"),
        (((0, 2.5), (0,)), r"'x' are \[0, 2.5\]; every start must be an integer"),
        (((), (0,)), r"'x' are \[\]; the first group must start"),
        (((0,),), r"1 start lists and 2 share arrays for 2 attributes"),
    ],
)
def test_expansion_rejects_bad_starts(starts, message):
    domain = Domain(("x", "y"), (6, 2))
    shares = (np.full(6, 1 / 6), np.full(2, 0.5))
    with pytest.raises(ModelError, match=message):
        Expansion(domain=domain, starts=starts, shares=shares)


@pytest.mark.parametrize(
    ("x_shares", "message"),
    [
        (np.full(5, 0.5), r"shares of 'x' have shape \(5,\); expected \(4,\)"),
        (np.array([1.5, -0.5, 0.5, 0.5]), r"shares of 'x' include -0\.5"),
        (np.array([np.nan, 1.0, 0.5, 0.5]), r"shares of 'x' include nan"),
        (np.array([0.5, 0.4, 0.5, 0.5]), r"shares of 'x' in group 0 \(codes from 0\) sum to 0\.9"),
        (np.array([0.5, 0.5, 0.5, 0.6]), r"shares of 'x' in group 1 \(codes from 2\) sum to 1\.1"),
    ],
)
def test_expansion_rejects_bad_shares(x_shares, message):
    domain = Domain(("x", "y"), (4, 2))
    with pytest.raises(ModelError, match=message):
        Expansion(domain=domain, starts=((0, 2), (0, 1)), shares=(x_shares, np.ones(2)))


def test_from_counts_rejects_bad_counts():
    domain = Domain(("x", "y"), (4, 2))
    starts = ((0, 2), (0, 1))
    with pytest.raises(ModelError, match=r"'zip'"):
        Expansion.from_counts(domain, starts, {"zip": np.ones(3)})
    with pytest.raises(ModelError, match=r"1-way counts of 'x' have shape \(3,\)"):
        Expansion.from_counts(domain, starts, {"x": np.ones(3)})
    with pytest.raises(ModelError, match=r"1-way counts of 'x' contain non-finite"):
        Expansion.from_counts(domain, starts, {"x": np.array([1.0, np.inf, 1.0, 1.0])})


def test_starts_from_maps_matches_strategy_grouping():
    domain = Domain(("x", "y"), (40, 3))
    rng = np.random.default_rng(5)
    one_way = [
        Measurement(("x",), rng.integers(0, 200, size=40), 1.0),
        Measurement(("y",), np.array([5, 9, 2]), 1.0),
    ]
    grouping = equal_mass_grouping(domain, one_way, max_groups=6)
    starts = starts_from_maps(domain, grouping.maps)
    expansion = Expansion.from_counts(domain, starts, {m.attributes[0]: m.counts for m in one_way})

    assert expansion.working == grouping.working
    for mine, theirs in zip(expansion.maps, grouping.maps):
        assert np.array_equal(mine, theirs)
    with pytest.raises(ModelError, match=r"map of 'y' is \[0, 2, 2\]"):
        starts_from_maps(domain, (grouping.maps[0], np.array([0, 2, 2])))


def test_expand_draws_codes_by_shares(expansion):
    rng = np.random.default_rng(8)
    group_codes = np.stack([rng.integers(0, size, size=ROWS) for size in WORKING.sizes], axis=1)
    codes = expansion.expand(group_codes, np.random.default_rng(9))

    assert codes.shape == group_codes.shape
    assert codes.dtype == np.int64
    for index, name in enumerate(FULL.attributes):
        mapping = expansion.maps[index]
        assert np.array_equal(mapping[codes[:, index]], group_codes[:, index]), name
        for group in range(WORKING.sizes[index]):
            members = np.flatnonzero(mapping == group)
            drawn = codes[group_codes[:, index] == group, index]
            observed = np.bincount(drawn - members[0], minlength=members.size) / drawn.size
            expected = expansion.shares[index][members]
            assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, drawn.size)), (name, group)
    # c = 7 has share 0 (its noisy count was negative), so it is never drawn.
    assert not np.any(codes[:, FULL.index("c")] == 7)


def test_expand_with_allowed_codes(expansion):
    rng = np.random.default_rng(10)
    group_codes = np.zeros((ROWS // 4, len(FULL)), dtype=np.int64)
    group_codes[:, 0] = rng.integers(0, 2, size=len(group_codes))
    group_codes[:, 2] = 2
    allowed = {"a": {1, 2, 4}, "c": {7}}
    codes = expansion.expand(group_codes, np.random.default_rng(11), allowed=allowed)

    in_first = codes[group_codes[:, 0] == 0, 0]
    assert set(np.unique(in_first)) == {1, 2}
    shares = expansion.shares[0][[1, 2]]
    expected = shares[0] / shares.sum()
    assert abs(np.mean(in_first == 1) - expected) <= binomial_tolerance(expected, in_first.size)
    assert set(np.unique(codes[group_codes[:, 0] == 1, 0])) == {4}
    # Every allowed code of c has share 0: the draw falls back to the allowed codes.
    assert set(np.unique(codes[:, 2])) == {7}

    group_codes[0, 0] = 2
    with pytest.raises(ModelError, match=r"groups \[2\] of 'a', which contain no allowed code"):
        expansion.expand(group_codes, np.random.default_rng(11), allowed=allowed)
    with pytest.raises(ModelError, match=r"groups \[1\] of 'b', which contain no allowed code"):
        expansion.expand(np.array([[0, 1, 0, 0]]), np.random.default_rng(0), allowed={"b": {0, 2}})


def test_expand_rejects_bad_group_codes(expansion):
    with pytest.raises(ModelError, match=r"shape \(2, 3\); expected \(rows, 4\)"):
        expansion.expand(np.zeros((2, 3), dtype=np.int64), np.random.default_rng(0))
    with pytest.raises(ModelError, match=r"group codes of 'c' range over 0\.\.4; the attribute has groups 0\.\.3"):
        expansion.expand(np.array([[0, 0, 4, 0], [0, 0, 0, 0]]), np.random.default_rng(0))
    with pytest.raises(ModelError, match=r"codes 9 outside 0\.\.6"):
        expansion.expand(np.zeros((1, 4), dtype=np.int64), np.random.default_rng(0), allowed={"a": {9}})
    with pytest.raises(ModelError, match="dtype float64"):
        expansion.expand(np.zeros((1, 4)), np.random.default_rng(0))


def test_group_weights_and_conditions(expansion):
    shares = expansion.shares[0]
    weights = expansion.group_weights({"a": {1, 4, 6}, "b": {2}, "c": {7, 8}})
    assert np.allclose(weights["a"], [shares[1], shares[4], shares[6]])
    assert np.array_equal(weights["b"], [0.0, 0.0, 1.0, 0.0])
    assert np.allclose(weights["c"], [0.0, 0.0, expansion.shares[2][8], 0.0])
    assert expansion.group_conditions({"a": {1, 4}, "c": {7}}) == {"a": {0, 1}, "c": {2}}
    # c = 7 alone has share 0 everywhere, so groups weigh by their number of allowed codes.
    assert np.array_equal(expansion.group_weights({"c": {7}})["c"], [0.0, 0.0, 1.0, 0.0])


def test_expand_probabilities(expansion):
    working = np.arange(12, dtype=float).reshape(3, 4) / 66
    full = expansion.expand_probabilities(working, ("a", "c"))
    assert full.shape == (7, 10)
    assert np.isclose(full.sum(), 1.0)
    for a in range(7):
        for c in range(10):
            expected = working[expansion.maps[0][a], expansion.maps[2][c]] * expansion.shares[0][a] * expansion.shares[2][c]
            assert np.isclose(full[a, c], expected)
    with pytest.raises(ModelError, match=r"axis 1 of the probabilities has 3 cells; 'c' has 4 groups"):
        expansion.expand_probabilities(np.ones((3, 3)), ("a", "c"))


def test_expansion_document_round_trip(expansion):
    document = msgpack.unpackb(msgpack.packb(expansion.to_document(), use_bin_type=True))
    loaded = Expansion.from_document(document, FULL)
    assert loaded.starts == expansion.starts
    for mine, theirs in zip(loaded.shares, expansion.shares):
        assert np.array_equal(mine, theirs)
    with pytest.raises(ModelError, match=r"entry 1 is not \['b', starts, shares\]"):
        Expansion.from_document([document[0], document[2], document[1], document[3]], FULL)


# --- expanded GraphicalModel -----------------------------------------------------------


def test_expanded_model_domains(model, working_model, expansion):
    assert model.domain == FULL
    assert model.working_domain == WORKING
    assert model.expansion is expansion
    assert model.fit_summary is working_model.fit_summary
    codes = model.sample(1000, seed=3)
    assert codes.shape == (1000, len(FULL))
    assert np.array_equal(codes, model.sample(1000, seed=3))
    for column, size in enumerate(FULL.sizes):
        assert codes[:, column].min() >= 0
        assert codes[:, column].max() < size


def test_expanded_one_way_marginals_match_truth(model, truth):
    codes = model.sample(ROWS, seed=5)
    for index, name in enumerate(FULL.attributes):
        others = tuple(i for i in range(len(FULL)) if i != index)
        expected = truth.sum(axis=others)
        assert np.abs(model.project((name,)) - expected).max() < 1e-4, name
        observed = frequencies(codes, FULL, (name,))
        assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, ROWS)), name
        tvd = 0.5 * np.abs(observed - expected).sum()
        assert tvd < 0.01, name


def test_expanded_samples_match_projection(model):
    codes = model.sample(ROWS, seed=6)
    for attributes in [("a", "c"), ("c", "d"), ("b", "a", "d")]:
        expected = model.project(attributes)
        assert expected.shape == FULL.shape(attributes)
        observed = frequencies(codes, FULL, attributes)
        assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, ROWS)), attributes


def test_expanded_conditional_samples(model):
    # The allowed codes of a have different share sums per group, so weighing groups by
    # an allowed-group set alone would give other frequencies.
    conditions = {"a": {1, 4, 6}, "c": {3, 8, 9}}
    codes = model.sample(ROWS, seed=7, conditions=conditions)
    assert set(np.unique(codes[:, 0])) == {1, 4, 6}
    assert set(np.unique(codes[:, 2])) == {3, 8, 9}

    joint = model.project(("a", "b", "c", "d"))
    mask = np.zeros(FULL.sizes, dtype=bool)
    mask[np.ix_([1, 4, 6], range(4), [3, 8, 9], range(5))] = True
    conditional = np.where(mask, joint, 0.0) / joint[mask].sum()
    for attributes, axes in [(("a", "c"), (1, 3)), (("b", "d"), (0, 2)), (("a", "b"), (2, 3))]:
        expected = conditional.sum(axis=axes)
        observed = frequencies(codes, FULL, attributes)
        assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, ROWS)), attributes


def test_condition_returns_working_marginals(model):
    marginals = model.condition({"c": {0}})
    tree = model.tree
    home = tree.containing(["c"])
    assert marginals[home].shape == tree.shape(home)
    c_axis = tree.cliques[home].index("c")
    totals = marginals[home].sum(axis=tuple(i for i in range(marginals[home].ndim) if i != c_axis))
    assert np.allclose(totals, [1.0, 0.0, 0.0, 0.0])


def test_condition_on_zero_share_code(model):
    # c = 7 has model probability 0; its condition is read as a limit and still yields rows.
    codes = model.sample(ROWS // 4, seed=8, conditions={"c": {7}})
    assert set(np.unique(codes[:, 2])) == {7}
    grouped = model.with_expansion(None).project(("a", "c"))[:, 2]
    expected = model.expansion.expand_probabilities(grouped / grouped.sum(), ("a",))
    observed = frequencies(codes, FULL, ("a",))
    assert np.all(np.abs(observed - expected) <= binomial_tolerance(expected, len(codes)))

    # Next to a code of positive share, the zero-share code is never drawn.
    codes = model.sample(ROWS // 4, seed=8, conditions={"c": {6, 7}})
    assert set(np.unique(codes[:, 2])) == {6}


def test_condition_of_probability_zero_expanded():
    domain = Domain(("x", "y"), (2, 3))
    tree = JunctionTree(domain=domain, cliques=(("x", "y"),), parents=(-1,), order=(0,))
    joint = np.array([[0.5, 0.0, 0.25], [0.25, 0.0, 0.0]])
    full = Domain(("x", "y"), (2, 6))
    expansion = Expansion.from_counts(full, ((0, 1), (0, 2, 4)), {"y": np.array([1, 3, 5, 5, 2, 0])})
    model = GraphicalModel(tree=tree, marginals=[joint], total=100.0, expansion=expansion)

    with pytest.raises(ModelError, match="probability 0"):
        model.sample(10, seed=0, conditions={"y": {2, 3}})
    codes = model.sample(2000, seed=0, conditions={"x": {1}})
    assert set(np.unique(codes[:, 1])) == {0, 1}
    codes = model.sample(2000, seed=0, conditions={"y": {1, 3, 4, 5}})
    assert set(np.unique(codes[:, 1])) == {1, 4}


def test_identity_expansion_equals_unexpanded(working_model):
    identity = Expansion.from_counts(WORKING, tuple(tuple(range(s)) for s in WORKING.sizes), {})
    assert identity.is_identity()
    expanded = working_model.with_expansion(identity)

    assert np.array_equal(expanded.sample(5000, seed=12), working_model.sample(5000, seed=12))
    conditions = {"a": {0, 2}, "c": 1}
    assert np.array_equal(
        expanded.sample(5000, seed=13, conditions=conditions), working_model.sample(5000, seed=13, conditions=conditions)
    )
    assert np.array_equal(expanded.project(("c", "a")), working_model.project(("c", "a")))
    assert expanded.model_id != working_model.model_id


def test_with_expansion_rejects_other_working_domain(working_model):
    other = Expansion.from_counts(FULL, ((0, 3), (0, 1, 2, 3), (0, 2, 6, 9), (0,)), {})
    with pytest.raises(ModelError, match="working domain"):
        working_model.with_expansion(other)
    with pytest.raises(ModelError, match="expansion is a dict"):
        working_model.with_expansion({})


def test_expanded_bytes_round_trip(model):
    data = model.to_bytes()
    loaded = GraphicalModel.from_bytes(data)

    assert loaded.to_bytes() == data
    assert loaded.model_id == model.model_id == hashlib.sha256(data).hexdigest()
    assert loaded.model_id != model.with_expansion(None).model_id
    assert loaded.domain == FULL
    assert loaded.working_domain == WORKING
    assert loaded.expansion.starts == STARTS
    assert np.array_equal(loaded.project(("a", "c")), model.project(("a", "c")))
    assert np.array_equal(loaded.sample(3000, seed=4), model.sample(3000, seed=4))
    conditions = {"c": {3, 8}}
    assert np.array_equal(loaded.sample(3000, seed=4, conditions=conditions), model.sample(3000, seed=4, conditions=conditions))


def test_from_bytes_rejects_tampered_expansion(model):
    document = msgpack.unpackb(model.to_bytes())

    changed = dict(document)
    shares = np.frombuffer(document["expansion"][0][2], dtype="<f8").copy()
    shares[0] += 0.01
    changed["expansion"] = [[*document["expansion"][0][:2], shares.tobytes()]] + document["expansion"][1:]
    with pytest.raises(ModelError, match=r"shares of 'a' in group 0 \(codes from 0\) sum to"):
        GraphicalModel.from_bytes(msgpack.packb(changed, use_bin_type=True))

    changed["expansion"] = [["a", [0, 5], document["expansion"][0][2]]] + document["expansion"][1:]
    with pytest.raises(ModelError, match="shares of 'a' in group|shape"):
        GraphicalModel.from_bytes(msgpack.packb(changed, use_bin_type=True))

    changed["expansion"] = document["expansion"][:3]
    with pytest.raises(ModelError, match="3 entries for 4 attributes"):
        GraphicalModel.from_bytes(msgpack.packb(changed, use_bin_type=True))

    changed["expansion"] = None
    with pytest.raises(ModelError, match="malformed|shape"):
        GraphicalModel.from_bytes(msgpack.packb(changed, use_bin_type=True))


def test_from_bytes_rejects_version_one(working_model):
    document = msgpack.unpackb(working_model.to_bytes())
    document["version"] = 1
    del document["expansion"]
    with pytest.raises(ModelError, match="format version 1.*refit the model"):
        GraphicalModel.from_bytes(msgpack.packb(document, use_bin_type=True))
