"""Measurement rounds in the network: which releases each round is planned from.

The decentralized strategy (p2psynth/strategy.py) measures in three rounds.
Round 1 needs nothing; round 2 is planned from the sum of the members' round-1
releases, round 3 from their round-1 and round-2 releases. Members add their
round-r counts cell by cell only if they planned round r identically, that is
from the same set of releases. No coordinator announces that set, so every
round-2 and round-3 release names it: its ``basis`` is the sorted list of
release ids its plan was computed from. ``plan_from_basis`` turns a basis into
the plan with pure functions of public releases, so anyone can recompute the
plan of any release from its basis.

How a member chooses the basis of its next round (``choose_basis``):

1. **Adopt** a plan already in use. If other members published this round with
   some basis, take the basis most of them used (ties go to the smallest
   sorted id list), provided this node holds every release it names. A member
   that publishes late, or after others have moved on, thus measures on the
   same grouping as the rest, and its counts add up with theirs.
2. Otherwise **wait** until every member has a release of the previous round
   in its current epoch (members flagged for equivocation are not waited for),
   and plan from all of them.
3. After ``round_wait_s`` without all of them, plan from the ones present.
   Members that planned before a late release arrived may end up with
   different bases. Assembly then fits the plan most members used and leaves
   the other measurements out (p2psynth/assembly.py).

Only members whose current epoch is *fresh* count in steps 1 to 3: its round-1
release was created at most ``FRESH_WAITS`` round waits before this member's
round 1 (with the default wait of 300 s, 15 minutes). Members that start
their epochs within that window form one network epoch, which covers a member
that publishes after the others went through both rounds' deadlines. Earlier
epochs are neither waited for nor adopted, so a new epoch plans from new data
instead of repeating the first epoch's plan forever.

For round 3 the basis holds the round-1 releases of this member's round-2
basis (the model grouping comes from their sum) and the round-2 releases that
share that round-2 basis (the tree is chosen from their sum): round-2 counts
on another grouping cannot be added.

Choosing from public releases is post-processing: it spends no privacy budget.
Rejected: a leader per round (a coordinator by another name, and a single
point of failure); a fixed wall-clock schedule (members' clocks and uptime
differ, and a missed slot would stall the epoch).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from p2psynth.assembly import ReleaseEntry
from p2psynth.domain import Domain
from p2psynth.errors import ModelError, SchemaError
from p2psynth.strategy import (
    RoundPlan,
    StrategyConfig,
    round_one_plan,
    round_three_plan,
    round_two_plan,
    sum_measurements,
)

log = logging.getLogger(__name__)

FINAL_ROUND = 3
# Round waits before this member's round 1 within which other members' epochs belong to the same network epoch.
FRESH_WAITS = 3


@dataclass(frozen=True)
class BasisChoice:
    """The basis a member plans its next round from, and how it was reached."""

    round: int
    basis: tuple[bytes, ...]  # sorted release ids
    method: str  # "adopted", "complete" or "deadline"


@dataclass(frozen=True)
class Waiting:
    """No basis yet: the members whose release of the previous round is still missing."""

    round: int
    missing: tuple[bytes, ...]  # member public keys, sorted


def plan_round_one(domain: Domain, *, rho: float, config: StrategyConfig) -> RoundPlan:
    """Return round 1's plan: every 1-way marginal at full resolution with its share of ``rho``."""
    return round_one_plan(domain, rho=rho, config=config)


def plan_from_basis(
    domain: Domain,
    basis: Sequence[ReleaseEntry],
    *,
    round_number: int,
    rho: float,
    config: StrategyConfig,
) -> RoundPlan:
    """Recompute the plan of round ``round_number`` (2 or 3) from the releases of its basis.

    ``rho`` is the member's whole epoch budget; the plan carries the round's
    share. Raises ModelError when the basis cannot give a plan (no round-1
    release, round-2 releases on different groupings, too few pairs).
    """
    first = [entry.release for entry in basis if entry.release.round == 1]
    if not first:
        raise ModelError(
            f"the basis of a round-{round_number} plan contains no round-1 release; "
            "plan only from a basis that names the members' round-1 releases"
        )
    if any(release.grouping for release in first):
        raise ModelError("a round-1 release in the basis measures grouped codes; round 1 is at full resolution")
    one_way = [[m for m in release.measurements if len(m.attributes) == 1] for release in first]
    round_one_sum = sum_measurements(one_way)
    if round_number == 2:
        return round_two_plan(domain, round_one_sum, rho=rho, config=config)
    if round_number != FINAL_ROUND:
        raise ModelError(f"round {round_number} does not exist; the strategy has rounds 1 to {FINAL_ROUND}")

    second = [entry.release for entry in basis if entry.release.round == 2]
    if not second:
        raise ModelError(
            "the basis of a round-3 plan contains no round-2 release; "
            "plan round 3 only after this member's round 2"
        )
    if len({release.grouping for release in second}) != 1:
        raise ModelError("the round-2 releases of a round-3 basis use different groupings; their counts cannot be added")
    round_two_sum = sum_measurements([list(release.measurements) for release in second])
    return round_three_plan(domain, round_one_sum, round_two_sum, rho=rho, config=config)


def choose_basis(
    round_number: int,
    *,
    domain: Domain,
    config: StrategyConfig,
    own_author: bytes,
    own_previous: ReleaseEntry,
    current: Sequence[ReleaseEntry],
    expected_authors: Iterable[bytes],
    lookup: Callable[[bytes], ReleaseEntry | None],
    deadline_passed: bool,
    fresh_after_ms: int | None = None,
) -> BasisChoice | Waiting:
    """Decide the basis of this member's round ``round_number`` (2 or 3), or that it must wait.

    ``own_previous`` is this member's release of the previous round in the
    epoch being measured. ``current`` contains the current releases (each
    author's highest epoch) of the members that count. ``expected_authors``
    are the members waited for, and ``lookup`` finds a stored release by id.
    A member whose current epoch started (its round-1 release, else its
    oldest current release) before ``fresh_after_ms`` belongs to an earlier
    network epoch and is ignored.
    """
    if fresh_after_ms is not None:
        current = _fresh_entries(current, own_author=own_author, fresh_after_ms=fresh_after_ms)
    adopted = _adoptable_basis(round_number, domain=domain, config=config, own_author=own_author,
                               current=current, lookup=lookup)
    if adopted is not None:
        return BasisChoice(round_number, adopted, "adopted")

    previous_round = round_number - 1
    by_author: dict[bytes, ReleaseEntry] = {}
    for entry in current:
        if entry.release.round == previous_round and _matches(entry, own_previous, round_number):
            by_author[entry.release.author] = entry
    by_author[own_author] = own_previous
    if round_number == FINAL_ROUND:
        # Members whose round 2 used another basis never match; do not wait for them.
        answered = {e.release.author for e in current if e.release.round == previous_round} | {own_author}
    else:
        answered = set(by_author)
    missing = tuple(sorted(set(expected_authors) - answered))
    if missing and not deadline_passed:
        return Waiting(round_number, missing)

    ids = {entry.release_id for entry in by_author.values()}
    if round_number == FINAL_ROUND:
        ids |= set(own_previous.release.basis)
    return BasisChoice(round_number, tuple(sorted(ids)), "deadline" if missing else "complete")


def _fresh_entries(
    current: Sequence[ReleaseEntry], *, own_author: bytes, fresh_after_ms: int
) -> list[ReleaseEntry]:
    """Keep this member's entries and those of members whose current epoch started after ``fresh_after_ms``."""
    oldest: dict[bytes, int] = {}
    round_one_at: dict[bytes, int] = {}
    for entry in current:
        author, created = entry.release.author, entry.release.created_at_ms
        oldest[author] = min(oldest.get(author, created), created)
        if entry.release.round == 1:
            round_one_at[author] = created
    started = {author: round_one_at.get(author, oldest[author]) for author in oldest}
    return [
        entry for entry in current
        if entry.release.author == own_author or started[entry.release.author] >= fresh_after_ms
    ]


def _matches(entry: ReleaseEntry, own_previous: ReleaseEntry, round_number: int) -> bool:
    """Round 2 plans from any round-1 release; round 3 only from round-2 releases planned like ours."""
    if round_number != FINAL_ROUND:
        return True
    return entry.release.basis == own_previous.release.basis


def _adoptable_basis(
    round_number: int,
    *,
    domain: Domain,
    config: StrategyConfig,
    own_author: bytes,
    current: Sequence[ReleaseEntry],
    lookup: Callable[[bytes], ReleaseEntry | None],
) -> tuple[bytes, ...] | None:
    """Return the basis most other members used for this round, if this node can plan from it."""
    votes = Counter(
        entry.release.basis
        for entry in current
        if entry.release.round == round_number and entry.release.author != own_author and entry.release.basis
    )
    for basis, _ in sorted(votes.items(), key=lambda item: (-item[1], item[0])):
        entries = [lookup(rid) for rid in basis]
        if any(entry is None for entry in entries):
            continue  # not every release of that basis has arrived yet
        try:
            plan_from_basis(domain, entries, round_number=round_number, rho=1.0, config=config)
        except (ModelError, SchemaError) as exc:
            log.info("not adopting a round-%d basis of %d releases: %s", round_number, len(basis), exc)
            continue
        return basis
    return None
