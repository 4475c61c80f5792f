"""Measurement rounds across members: basis choice, plans from a basis, and assembly of grouped releases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from p2psynth.assembly import ReleaseEntry, assemble_model, to_working_cells, working_grouping
from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError
from p2psynth.measurement import measure_marginals
from p2psynth.noise import SecureRandom
from p2psynth.release import Release, decode_release, encode_release, release_id
from p2psynth.rounds import BasisChoice, Waiting, choose_basis, plan_from_basis, plan_round_one
from p2psynth.strategy import RoundPlan, StrategyConfig

from releasefactory import FINGERPRINT, fixed_key

DOMAIN = Domain(("age", "hours", "sex", "income"), (40, 24, 2, 2))
CONFIG = StrategyConfig(selection_groups=4, model_groups=8)
RHO = 2.0


def _table(seed: int, rows: int = 4000) -> np.ndarray:
    """Rows whose hours and income depend on age, so the tree has pairs worth choosing."""
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 40, size=rows)
    hours = np.clip(age // 2 + rng.integers(-2, 3, size=rows), 0, 23)
    sex = rng.integers(0, 2, size=rows)
    income = (rng.random(rows) < 0.1 + 0.02 * (age // 4)).astype(np.int64)
    return np.stack([age, hours, sex, income], axis=1)


class Member:
    """One member's key, table and releases, published the way the daemon does."""

    def __init__(self, seed: int) -> None:
        self.key = fixed_key(seed)
        self.author = self.key.public_key().public_bytes_raw()
        self.codes = _table(seed)
        self.random = SecureRandom(seed=seed.to_bytes(32, "little"))
        self.entries: dict[int, ReleaseEntry] = {}
        self.created_at_ms = 1_700_000_000_000

    def publish(self, plan: RoundPlan, basis: tuple[bytes, ...] = ()) -> ReleaseEntry:
        codes, domain, grouping = self.codes, DOMAIN, ()
        if plan.grouping is not None:
            codes, domain, grouping = plan.grouping.group_codes(codes), plan.grouping.working, plan.grouping.starts()
        measurements = measure_marginals(codes, domain, plan.attribute_sets, rho=plan.rho, random=self.random)
        release = Release(
            schema_fingerprint=FINGERPRINT,
            author=self.author,
            sequence=plan.round,
            epoch=1,
            created_at_ms=self.created_at_ms,
            rho=plan.rho,
            measurements=tuple(measurements),
            basis=tuple(basis),
            round=plan.round,
            grouping=grouping,
        )
        data = encode_release(release, self.key)
        entry = ReleaseEntry(release_id(data), decode_release(data))
        self.entries[plan.round] = entry
        return entry


def _choose(member: Member, round_number: int, current, members, *, deadline_passed=False, by_id=None,
            fresh_after_ms=None):
    known = {e.release_id: e for e in current} if by_id is None else by_id
    return choose_basis(
        round_number,
        domain=DOMAIN,
        config=CONFIG,
        own_author=member.author,
        own_previous=member.entries[round_number - 1],
        current=current,
        expected_authors={m.author for m in members},
        lookup=known.get,
        deadline_passed=deadline_passed,
        fresh_after_ms=fresh_after_ms,
    )


def _run_all_rounds(members: list[Member]) -> list[ReleaseEntry]:
    """Every member publishes every round, each choosing its basis from what all published."""
    for member in members:
        member.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    for round_number in (2, 3):
        published = [e for m in members for e in m.entries.values()]
        choices = [_choose(m, round_number, published, members) for m in members]
        for member, choice in zip(members, choices):
            assert isinstance(choice, BasisChoice)
            by_id = {e.release_id: e for e in published}
            plan = plan_from_basis(DOMAIN, [by_id[r] for r in choice.basis], round_number=round_number,
                                   rho=RHO, config=CONFIG)
            member.publish(plan, choice.basis)
    return [e for m in members for e in m.entries.values()]


@pytest.fixture(scope="module")
def three_members() -> list[Member]:
    members = [Member(seed) for seed in (1, 2, 3)]
    _run_all_rounds(members)
    return members


def test_round_two_waits_until_deadline():
    members = [Member(seed) for seed in (11, 12, 13)]
    for member in members[:2]:
        member.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    current = [m.entries[1] for m in members[:2]]

    waiting = _choose(members[0], 2, current, members)
    assert isinstance(waiting, Waiting)
    assert waiting.missing == (members[2].author,)

    late = _choose(members[0], 2, current, members, deadline_passed=True)
    assert isinstance(late, BasisChoice) and late.method == "deadline"
    assert late.basis == tuple(sorted(e.release_id for e in current))


def test_round_two_basis_all_round_one():
    members = [Member(seed) for seed in (21, 22, 23)]
    for member in members:
        member.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    current = [m.entries[1] for m in members]
    choices = [_choose(m, 2, current, members) for m in members]
    assert {c.method for c in choices} == {"complete"}
    assert len({c.basis for c in choices}) == 1
    assert choices[0].basis == tuple(sorted(e.release_id for e in current))


def test_late_member_adopts_the_basis_the_others_used():
    members = [Member(seed) for seed in (31, 32, 33)]
    for member in members:
        member.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    early = tuple(sorted(m.entries[1].release_id for m in members[:2]))
    by_id = {m.entries[1].release_id: m.entries[1] for m in members}
    plan = plan_from_basis(DOMAIN, [by_id[r] for r in early], round_number=2, rho=RHO, config=CONFIG)
    for member in members[:2]:
        member.publish(plan, early)

    current = [e for m in members for e in m.entries.values()]
    choice = _choose(members[2], 2, current, members)
    assert choice == BasisChoice(2, early, "adopted")

    # Without one of the basis releases the plan cannot be recomputed, so it is not adopted.
    missing_one = {rid: e for rid, e in by_id.items() if rid != early[0]}
    missing_one.update({e.release_id: e for m in members for r, e in m.entries.items() if r == 2})
    fallback = _choose(members[2], 2, current, members, by_id=missing_one)
    assert isinstance(fallback, BasisChoice) and fallback.method == "complete"
    assert fallback.basis != early


def test_earlier_epoch_neither_adopted_nor_waited_for():
    members = [Member(seed) for seed in (51, 52, 53)]
    for member in members:
        member.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    first_epoch = tuple(sorted(m.entries[1].release_id for m in members))
    by_id = {m.entries[1].release_id: m.entries[1] for m in members}
    plan = plan_from_basis(DOMAIN, [by_id[r] for r in first_epoch], round_number=2, rho=RHO, config=CONFIG)
    for member in members[:2]:
        member.publish(plan, first_epoch)

    # A day later the third member starts a new epoch alone.
    late = members[2]
    late.created_at_ms += 86_400_000
    late.publish(plan_round_one(DOMAIN, rho=RHO, config=CONFIG))
    current = [e for m in members[:2] for e in m.entries.values()] + [late.entries[1]]
    stored = {e.release_id: e for e in current} | by_id

    same_epoch = _choose(late, 2, current, members, by_id=stored)
    assert same_epoch.method == "adopted"

    window_start = late.created_at_ms - 300_000
    waiting = _choose(late, 2, current, members, by_id=stored, fresh_after_ms=window_start)
    assert isinstance(waiting, Waiting)
    assert waiting.missing == tuple(sorted(m.author for m in members[:2]))

    alone = _choose(late, 2, current, members, by_id=stored, fresh_after_ms=window_start, deadline_passed=True)
    assert alone == BasisChoice(2, (late.entries[1].release_id,), "deadline")


def test_round_three_basis_contents(three_members):
    entries = [e for m in three_members for e in m.entries.values()]
    round_two_basis = three_members[0].entries[2].release.basis
    for member in three_members:
        release = member.entries[3].release
        assert set(round_two_basis) <= set(release.basis)
        assert {m.entries[2].release_id for m in three_members} <= set(release.basis)
        assert len(release.basis) == 6
    assert len({m.entries[3].release.basis for m in three_members}) == 1
    # The plan is a function of the basis alone: the order of the entries does not matter.
    by_id = {e.release_id: e for e in entries}
    basis = [by_id[r] for r in three_members[0].entries[3].release.basis]
    first = plan_from_basis(DOMAIN, basis, round_number=3, rho=RHO, config=CONFIG)
    second = plan_from_basis(DOMAIN, list(reversed(basis)), round_number=3, rho=RHO, config=CONFIG)
    assert first.attribute_sets == second.attribute_sets
    assert first.grouping.starts() == second.grouping.starts()
    assert len(first.attribute_sets) == len(DOMAIN) - 1  # a spanning tree
    assert ("age", "hours") in first.attribute_sets


def test_round_shares_add_up_to_the_epoch_rho(three_members):
    member = three_members[0]
    total = sum(member.entries[r].release.rho for r in (1, 2, 3))
    assert total == pytest.approx(RHO, rel=1e-12)
    assert total <= RHO * (1 + 1e-12)


def test_plan_refuses_round_two_releases_on_different_groupings(three_members):
    first = [m.entries[1] for m in three_members]
    other = three_members[1].entries[2]
    shifted_plan = plan_from_basis(DOMAIN, first[:1], round_number=2, rho=RHO, config=CONFIG)
    odd = Member(44)
    odd.entries[1] = first[0]
    odd_entry = odd.publish(shifted_plan, (first[0].release_id,))
    if odd_entry.release.grouping == other.release.grouping:
        pytest.skip("one member's round-1 counts gave the same grouping as all three")
    with pytest.raises(ModelError, match="different groupings"):
        plan_from_basis(DOMAIN, first + [other, odd_entry], round_number=3, rho=RHO, config=CONFIG)


def test_working_grouping_is_round_three_grouping(three_members):
    entries = [e for m in three_members for r, e in m.entries.items() if r != 2]
    assert working_grouping(entries) == three_members[0].entries[3].release.grouping
    assert working_grouping([m.entries[1] for m in three_members]) == ()


def test_measurement_regrouped_into_nesting_groups_only():
    counts = np.arange(40, dtype=np.int64)
    measurement = Measurement(("age",), counts, 2.0)
    working = (("age", (0, 10, 30)),)
    regrouped = to_working_cells(measurement, (), working, DOMAIN)
    assert regrouped.counts.tolist() == [sum(range(10)), sum(range(10, 30)), sum(range(30, 40))]
    assert regrouped.sigma == pytest.approx(2.0 * np.sqrt(20))

    coarse = Measurement(("age",), np.array([5, 6], dtype=np.int64), 2.0)
    assert to_working_cells(coarse, (("age", (0, 20)),), working, DOMAIN) is None
    finer = Measurement(("age",), np.array([1, 2, 3, 4], dtype=np.int64), 2.0)
    assert to_working_cells(finer, (("age", (0, 10, 20, 30)),), working, DOMAIN).counts.tolist() == [1, 5, 4]


def test_assembled_model_samples_full_resolution_codes(three_members):
    entries = [e for m in three_members for e in m.entries.values()]
    model = assemble_model(entries, schema_fingerprint=FINGERPRINT, domain=DOMAIN)
    assert model.domain == DOMAIN
    assert model.expansion is not None
    grouping = dict(three_members[0].entries[3].release.grouping)
    assert model.provenance["working_grouping"] == {k: list(v) for k, v in grouping.items()}
    # Round 2 only chose the pairs; it is not fitted, and everything else nests in the working grouping.
    assert model.provenance["selection_only"] == sorted(m.entries[2].release_id.hex() for m in three_members)
    assert model.provenance["left_out"] == {}

    rows = model.sample(20000, seed=5)
    assert rows.shape == (20000, 4)
    assert rows[:, 0].max() < 40
    assert len(np.unique(rows[:, 0])) > 20
    real = np.concatenate([m.codes for m in three_members])
    real_age = np.bincount(real[:, 0], minlength=40) / len(real)
    synthetic_age = np.bincount(rows[:, 0], minlength=40) / len(rows)
    assert 0.5 * np.abs(real_age - synthetic_age).sum() < 0.08
    # The age-hours dependence survives grouping and expansion.
    assert np.corrcoef(rows[:, 0], rows[:, 1])[0, 1] > 0.8

    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    again = assemble_model(shuffled, schema_fingerprint=FINGERPRINT, domain=DOMAIN)
    assert again.model_id == model.model_id


def test_assembly_without_grouped_releases_keeps_full_resolution(three_members):
    entries = [m.entries[1] for m in three_members]
    model = assemble_model(entries, schema_fingerprint=FINGERPRINT, domain=DOMAIN)
    assert model.expansion is None
    assert "working_grouping" not in model.provenance


def test_model_between_rounds_fits_round_one_only(three_members):
    entries = [e for m in three_members for r, e in m.entries.items() if r in (1, 2)]
    model = assemble_model(entries, schema_fingerprint=FINGERPRINT, domain=DOMAIN)
    assert model.expansion is None
    assert len(model.provenance["selection_only"]) == 3
    assert all(len(clique) == 1 for clique in model.tree.cliques)
    with pytest.raises(ModelError, match="round-2 releases only choose pairs"):
        assemble_model([three_members[0].entries[2]], schema_fingerprint=FINGERPRINT, domain=DOMAIN)
