"""Tests of the three-round decentralized measurement strategy."""

import hashlib
import itertools
import math

import numpy as np
import pytest

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ConfigError, ModelError, PrivacyError, SchemaError
from p2psynth.evaluate import marginal_tvd
from p2psynth.measurement import marginal_counts, measure_marginals
from p2psynth.model import fit_model
from p2psynth.noise import SecureRandom
from p2psynth.strategy import (
    StrategyConfig,
    equal_mass_grouping,
    expand_codes,
    max_spanning_tree,
    model_grouping,
    pair_score,
    round_one_plan,
    round_three_plan,
    round_two_plan,
    select_from_public,
    sum_measurements,
    working_measurements,
)

DOMAIN = Domain(("a", "b", "c", "d", "e"), (3, 30, 4, 5, 40))


def chain_codes(rows, seed):
    """Return codes where a -> b -> c is a strong chain and d, e are independent noise."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, rows)
    b = np.clip(a * 10 + rng.integers(0, 10, rows), 0, 29)
    c = np.where(rng.random(rows) < 0.8, b // 8, rng.integers(0, 4, rows))
    d = rng.integers(0, 5, rows)
    e = rng.integers(0, 40, rows)
    return np.stack([a, b, c, d, e], axis=1)


def member_random(index):
    return SecureRandom(seed=hashlib.sha256(f"member-{index}".encode()).digest())


def measure_round(members, plan, randoms):
    releases = []
    for codes, random in zip(members, randoms):
        table = codes if plan.grouping is None else plan.grouping.group_codes(codes)
        domain = DOMAIN if plan.grouping is None else plan.grouping.working
        releases.append(measure_marginals(table, domain, plan.attribute_sets, rho=plan.rho, random=random))
    return releases


def run_rounds(members, rho, config=StrategyConfig()):
    randoms = [member_random(i) for i in range(len(members))]
    plan_one = round_one_plan(DOMAIN, rho=rho, config=config)
    round_one = measure_round(members, plan_one, randoms)
    plan_two = round_two_plan(DOMAIN, sum_measurements(round_one), rho=rho, config=config)
    round_two = measure_round(members, plan_two, randoms)
    plan_three = round_three_plan(
        DOMAIN, sum_measurements(round_one), sum_measurements(round_two), rho=rho, config=config
    )
    round_three = measure_round(members, plan_three, randoms)
    return (plan_one, plan_two, plan_three), round_one, round_three


def test_round_shares_add_up_to_budget():
    rho = 0.0123
    one = round_one_plan(DOMAIN, rho=rho)
    assert one.attribute_sets == tuple((a,) for a in DOMAIN.attributes)
    assert one.grouping is None

    summed = [Measurement((a,), np.full(s, 100), 1.0) for a, s in zip(DOMAIN.attributes, DOMAIN.sizes)]
    two = round_two_plan(DOMAIN, summed, rho=rho)
    assert len(two.attribute_sets) == 10
    config = StrategyConfig()
    assert one.rho + two.rho + rho * config.tree_share == pytest.approx(rho, rel=1e-12)


def test_config_rejects_invalid_shares():
    with pytest.raises(ConfigError, match="one_way_share"):
        StrategyConfig(one_way_share=0.0)
    with pytest.raises(ConfigError, match="below 1"):
        StrategyConfig(one_way_share=0.6, selection_share=0.4)
    with pytest.raises(ConfigError, match="model_groups"):
        StrategyConfig(model_groups=1)


def test_plan_rejects_invalid_rho():
    with pytest.raises(PrivacyError, match="rho"):
        round_one_plan(DOMAIN, rho=-1.0)
    with pytest.raises(PrivacyError, match="rho"):
        round_one_plan(DOMAIN, rho=float("nan"))


def test_grouping_keeps_narrow_attributes():
    counts = [Measurement((a,), np.full(s, 10), 1.0) for a, s in zip(DOMAIN.attributes, DOMAIN.sizes)]
    grouping = equal_mass_grouping(DOMAIN, counts, max_groups=6)
    assert list(grouping.maps[0]) == [0, 1, 2]
    assert list(grouping.maps[3]) == [0, 1, 2, 3, 4]
    assert grouping.working.sizes[1] <= 6
    assert grouping.working.sizes[4] <= 6


def test_grouping_consecutive_and_heavy_code_alone():
    domain = Domain(("x",), (20,))
    counts = np.full(20, 5)
    counts[10] = 1000
    counts[7] = -30
    grouping = equal_mass_grouping(domain, [Measurement(("x",), counts, 1.0)], max_groups=4)
    mapping = grouping.maps[0]
    assert np.all(np.diff(mapping) >= 0)
    assert mapping.max() + 1 <= 4
    assert np.sum(mapping == mapping[10]) == 1
    assert mapping[9] < mapping[10] < mapping[11]


def test_grouping_without_mass_uses_equal_widths():
    domain = Domain(("x",), (12,))
    grouping = equal_mass_grouping(domain, [Measurement(("x",), np.full(12, -5), 1.0)], max_groups=3)
    assert list(grouping.maps[0]) == [0] * 4 + [1] * 4 + [2] * 4


def test_grouping_missing_one_way_raises():
    with pytest.raises(ModelError, match="'b'"):
        equal_mass_grouping(DOMAIN, [], max_groups=6)


def test_group_counts_match_grouped_codes():
    codes = chain_codes(500, seed=1)
    counts = [Measurement((a,), marginal_counts(codes, DOMAIN, (a,)), 1.0) for a in DOMAIN.attributes]
    grouping = equal_mass_grouping(DOMAIN, counts, max_groups=5)
    full = marginal_counts(codes, DOMAIN, ("b", "e"))
    grouped = marginal_counts(grouping.group_codes(codes), grouping.working, ("b", "e"))
    assert np.array_equal(grouping.group_counts(("b", "e"), full), grouped)


def test_sum_measurements_adds_counts_and_variances():
    first = [Measurement(("a",), np.array([1, 2, 3]), 3.0), Measurement(("c",), np.array([1, 1, 1, 1]), 1.0)]
    second = [Measurement(("a",), np.array([10, 20, 30]), 4.0)]
    summed = sum_measurements([first, second])
    assert [m.attributes for m in summed] == [("a",)]
    assert list(summed[0].counts) == [11, 22, 33]
    assert summed[0].sigma == pytest.approx(5.0)


def test_sum_measurements_rejects_shape_mismatch():
    first = [Measurement(("b",), np.zeros(30, dtype=np.int64), 1.0)]
    second = [Measurement(("b",), np.zeros(6, dtype=np.int64), 1.0)]
    with pytest.raises(ModelError, match="different shapes"):
        sum_measurements([first, second])


def test_pair_score_independence_and_noise():
    independent = np.outer([100, 300], [200, 200, 400]).astype(float) / 1200
    dependent = np.array([[400.0, 0.0], [0.0, 400.0]])
    assert pair_score(independent, sigma=0.0) == pytest.approx(0.0, abs=1e-9)
    assert pair_score(dependent, sigma=10.0) > 700

    rng = np.random.default_rng(2)
    noise_only = np.full((40, 40), 50.0) + rng.normal(0, 20.0, (40, 40))
    raw_deviation = np.abs(noise_only - noise_only.mean()).sum()
    assert pair_score(noise_only, sigma=20.0) < 0.5 * raw_deviation


def test_max_spanning_tree_breaks_ties_by_domain_order():
    domain = Domain(("p", "q", "r"), (2, 2, 2))
    scores = {("p", "q"): 1.0, ("p", "r"): 1.0, ("q", "r"): 1.0}
    assert max_spanning_tree(domain, scores) == [("p", "q"), ("p", "r")]
    scores[("q", "r")] = 2.0
    assert max_spanning_tree(domain, scores) == [("q", "r"), ("p", "q")]


def test_select_from_public_rejects_missing_pairs():
    with pytest.raises(ModelError, match="every pair"):
        select_from_public(DOMAIN, [Measurement(("a", "b"), np.zeros((3, 30), dtype=np.int64), 1.0)])


def test_rounds_find_chain_across_members():
    members = [chain_codes(400, seed=10 + i) for i in range(5)]
    plans, round_one, round_three = run_rounds(members, rho=0.5)
    tree = set(plans[2].attribute_sets)
    assert ("a", "b") in tree
    assert ("b", "c") in tree
    assert len(tree) == 4
    for release in round_three:
        assert [m.counts.shape for m in release] == [plans[2].grouping.working.shape(s) for s in plans[2].attribute_sets]
    assert sum(plan.rho for plan in plans) == pytest.approx(0.5, rel=1e-12)


def test_selection_same_for_any_member_order():
    members = [chain_codes(300, seed=20 + i) for i in range(4)]
    randoms = [member_random(i) for i in range(4)]
    plan = round_one_plan(DOMAIN, rho=0.2)
    round_one = measure_round(members, plan, randoms)
    forward = round_two_plan(DOMAIN, sum_measurements(round_one), rho=0.2)
    backward = round_two_plan(DOMAIN, sum_measurements(round_one[::-1]), rho=0.2)
    for first, second in zip(forward.grouping.maps, backward.grouping.maps):
        assert np.array_equal(first, second)


def test_expand_codes_stays_in_groups():
    counts = np.zeros(40, dtype=np.int64)
    counts[[3, 4, 30]] = [100, 100, 50]
    one_way = [Measurement((a,), np.full(s, 10), 1.0) for a, s in zip(DOMAIN.attributes, DOMAIN.sizes)]
    one_way[1] = Measurement(("b",), np.zeros(30, dtype=np.int64), 1.0)
    one_way[4] = Measurement(("e",), counts, 1.0)
    grouping = equal_mass_grouping(DOMAIN, one_way, max_groups=2)
    assert list(grouping.maps[4]) == [0] * 5 + [1] * 35
    rng = np.random.default_rng(3)
    group_codes = np.stack([rng.integers(0, s, 4000) for s in grouping.working.sizes], axis=1)

    codes = expand_codes(group_codes, grouping, one_way, seed=4)
    for column, mapping in enumerate(grouping.maps):
        assert np.array_equal(mapping[codes[:, column]], group_codes[:, column])
    # Group 0 of e contains codes 0..4, weighted 100:100 on codes 3 and 4.
    first = codes[group_codes[:, 4] == 0, 4]
    assert set(np.unique(first)) == {3, 4}
    assert np.mean(first == 4) == pytest.approx(0.5, abs=0.05)
    assert set(np.unique(codes[group_codes[:, 4] == 1, 4])) == {30}
    # b has no mass, so its codes are drawn uniformly within equal-width groups.
    assert len(np.unique(codes[:, 1])) == 30


def test_pipeline_fits_and_beats_independence():
    members = [chain_codes(800, seed=30 + i) for i in range(4)]
    pooled = np.concatenate(members)
    plans, round_one, round_three = run_rounds(members, rho=0.3)
    summed_one = sum_measurements(round_one)
    grouping = model_grouping(DOMAIN, summed_one)
    measurements = working_measurements(grouping, summed_one, sum_measurements(round_three))

    model = fit_model(grouping.working, measurements, max_iterations=200)
    synthetic = expand_codes(model.sample(pooled.shape[0], seed=5), grouping, summed_one, seed=6)
    rng = np.random.default_rng(7)
    independent = np.stack([rng.permutation(pooled[:, i]) for i in range(len(DOMAIN))], axis=1)

    fitted = marginal_tvd(pooled, synthetic, DOMAIN, ways=(2,))["2-way"]["mean"]
    baseline = marginal_tvd(pooled, independent, DOMAIN, ways=(2,))["2-way"]["mean"]
    assert fitted < baseline
    assert math.isfinite(fitted)


def test_focus_and_extra_pairs_follow_tree():
    members = [chain_codes(400, seed=40 + i) for i in range(3)]
    randoms = [member_random(i) for i in range(3)]
    round_one = measure_round(members, round_one_plan(DOMAIN, rho=0.5), randoms)
    plan_two = round_two_plan(DOMAIN, sum_measurements(round_one), rho=0.5)
    summed_two = sum_measurements(measure_round(members, plan_two, randoms))

    tree = select_from_public(DOMAIN, summed_two)
    focused = select_from_public(DOMAIN, summed_two, focus_attributes=("d",))
    assert focused[: len(tree)] == tree
    assert {pair for pair in focused if "d" in pair} == {("a", "d"), ("b", "d"), ("c", "d"), ("d", "e")}
    assert len(set(focused)) == len(focused)

    extended = select_from_public(DOMAIN, summed_two, extra_pairs=2)
    assert extended[: len(tree)] == tree
    assert len(extended) == len(tree) + 2
    assert not set(extended[len(tree):]) & set(tree)


def test_focus_rejects_unknown_attribute():
    summed_two = [Measurement(pair, np.ones((2, 2), dtype=np.int64), 1.0) for pair in itertools.combinations(DOMAIN.attributes, 2)]
    with pytest.raises(SchemaError, match="'income'"):
        select_from_public(DOMAIN, summed_two, focus_attributes=("income",))
    with pytest.raises(ConfigError, match="extra_pairs"):
        StrategyConfig(extra_pairs=-1)
