"""Assembly: from a set of members' releases to the global model.

The model is a deterministic function of the *set* of releases: releases are
sorted by id before anything else happens, duplicates collapse, and for each
author only the releases of its highest epoch are used (see the release
format). Two peers holding the same releases therefore fit byte-identical
models with the same id.

Each measurement keeps its own noise scale; the estimator weighs it by
1 / sigma, so a noisier member counts less. Measurements are labelled with
their author, so the estimator can tell the row totals of different tables
apart (the network's total is the sum over members).

Releases of the measurement rounds (p2psynth/rounds.py) carry a grouping:
their pairs count groups of consecutive codes. The model is then fitted on
the *working grouping*, the grouping that most authors used in the highest
round present, and sampled at full resolution through an expansion (each
group's codes drawn by the shares of the summed full-resolution 1-way
counts). A measurement on a grouping that refines the working grouping (full
resolution refines every grouping) is summed into working groups; one on a
grouping that does not nest cannot be expressed in working cells, so it is
left out and listed in the provenance. Round-2 releases only choose round 3's pairs and are
never fitted (they measure every pair, which would make one clique of all
attributes); the provenance lists them as selection-only.

The provenance stored with the model lists the releases used, and per member
the number of releases, the rho they spent and the matching epsilon at a
reference delta of 1e-9 (releases record rho, not delta).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from p2psynth.accounting import epsilon_from_rho
from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError, ReleaseFormatError
from p2psynth.release import Release, check_against_domain, decode_release, release_id
from p2psynth.strategy import SELECTION_ROUND

log = logging.getLogger(__name__)

PROVENANCE_DELTA = 1e-9


@dataclass(frozen=True)
class ReleaseEntry:
    """A decoded release with its id."""

    release_id: bytes
    release: Release


def decode_entries(blobs: Iterable[bytes]) -> list[ReleaseEntry]:
    """Decode release bytes into entries; raise ModelError naming the bad one."""
    entries = []
    for position, data in enumerate(blobs):
        try:
            entries.append(ReleaseEntry(release_id(data), decode_release(data)))
        except ReleaseFormatError as exc:
            raise ModelError(f"release {position + 1} is invalid: {exc}") from exc
    return entries


def current_entries(entries: Sequence[ReleaseEntry]) -> list[ReleaseEntry]:
    """Keep, per author, the releases of its highest epoch; sorted by release id."""
    unique = {entry.release_id: entry for entry in entries}
    highest: dict[bytes, int] = {}
    for entry in unique.values():
        author = entry.release.author
        highest[author] = max(highest.get(author, -1), entry.release.epoch)
    kept = [e for e in unique.values() if e.release.epoch == highest[e.release.author]]
    return sorted(kept, key=lambda e: e.release_id)


def assemble_model(
    entries: Sequence[ReleaseEntry],
    *,
    schema_fingerprint: str,
    domain: Domain,
    max_clique_cells: int | None = None,
    drop_cliques_over_cap: bool = False,
):
    """Fit the global model to the current releases among ``entries``.

    Raises ModelError when there are no releases, when a release belongs to
    another schema, or when the junction tree exceeds the memory caps. With
    ``drop_cliques_over_cap`` the estimator instead leaves out the least
    weighted cliques that do not fit (``model.fit_summary.dropped_cliques``),
    which a daemon needs in large networks where members' trees differ.
    """
    from p2psynth.model import DEFAULT_MAX_CLIQUE_CELLS, fit_model

    if not entries:
        raise ModelError("no releases to assemble a model from; measure or receive at least one release")
    for entry in entries:
        if entry.release.schema_fingerprint != schema_fingerprint:
            raise ModelError(
                f"release {entry.release_id.hex()[:16]} belongs to schema "
                f"{entry.release.schema_fingerprint[:16]}…, not {schema_fingerprint[:16]}…; "
                "assemble only releases of one network's schema"
            )
        try:
            check_against_domain(entry.release, domain)
        except ReleaseFormatError as exc:
            raise ModelError(f"release {entry.release_id.hex()[:16]} does not fit the schema: {exc}") from exc

    used = current_entries(entries)
    selection_only = [e for e in used if e.release.round == SELECTION_ROUND]
    fitted = [e for e in used if e.release.round != SELECTION_ROUND]
    working = working_grouping(fitted)
    measurements: list[Measurement] = []
    sources: list[str] = []
    left_out: Counter[str] = Counter()
    for entry in fitted:
        for measurement in entry.release.measurements:
            converted = to_working_cells(measurement, entry.release.grouping, working, domain)
            if converted is None:
                left_out[entry.release_id.hex()] += 1
                continue
            measurements.append(converted)
            sources.append(entry.release.author.hex())
    if not measurements:
        raise ModelError(
            "no measurement of the current releases can be fitted (round-2 releases only choose pairs); "
            "wait for round 1 or 3 releases"
        )

    provenance = build_provenance(used, schema_fingerprint=schema_fingerprint)
    if working:
        provenance["working_grouping"] = {name: list(starts) for name, starts in working}
        # Release id -> number of its measurements whose groups do not nest in the working grouping.
        provenance["left_out"] = dict(sorted(left_out.items()))
    if selection_only:
        provenance["selection_only"] = [entry.release_id.hex() for entry in selection_only]
    model = fit_model(
        _working_domain(domain, working),
        measurements,
        sources=sources,
        max_clique_cells=max_clique_cells or DEFAULT_MAX_CLIQUE_CELLS,
        drop_cliques_over_cap=drop_cliques_over_cap,
        provenance=provenance,
    )
    if working:
        model = model.with_expansion(_expansion(domain, working, fitted))
    log.info("assembled model %s from %d releases of %d members", model.model_id[:16], len(used),
             len({e.release.author for e in used}))
    return model


Grouping = tuple[tuple[str, tuple[int, ...]], ...]


def working_grouping(used: Sequence[ReleaseEntry]) -> Grouping:
    """Return the grouping to fit on: the one most authors used in the highest grouped round.

    Empty when no release is grouped (the model is then at full resolution).
    Each author votes once per grouping; ties go to the smallest grouping.
    """
    grouped = [entry.release for entry in used if entry.release.grouping]
    if not grouped:
        return ()
    top = max(release.round for release in grouped)
    voters = {(release.author, release.grouping) for release in grouped if release.round == top}
    votes = Counter(grouping for _, grouping in voters)
    return min(votes, key=lambda grouping: (-votes[grouping], grouping))


def to_working_cells(
    measurement: Measurement, grouping: Grouping, working: Grouping, domain: Domain
) -> Measurement | None:
    """Sum a measurement's cells into the working groups, or return None if its groups do not nest.

    A cell that sums k noisy cells has noise variance k sigma^2; the result
    records sigma times the square root of the largest k, which overstates the
    noise of smaller sums (the estimator then trusts them a little less).
    """
    own = dict(grouping)
    target = dict(working)
    counts = np.asarray(measurement.counts)
    widest = 1
    for axis, attribute in enumerate(measurement.attributes):
        size = domain.size(attribute)
        starts = np.asarray(own.get(attribute, range(size)), dtype=np.int64)
        goal = np.asarray(target.get(attribute, range(size)), dtype=np.int64)
        if not np.isin(goal, starts).all():
            return None  # a working group boundary falls inside one of this measurement's groups
        mapping = np.searchsorted(goal, starts, side="right") - 1
        if mapping.size == goal.size:
            continue
        widest *= int(np.bincount(mapping).max())
        moved = np.moveaxis(counts, axis, 0)
        summed = np.zeros((goal.size,) + moved.shape[1:], dtype=np.int64)
        np.add.at(summed, mapping, moved)
        counts = np.moveaxis(summed, 0, axis)
    if widest == 1:
        return measurement
    return Measurement(measurement.attributes, np.ascontiguousarray(counts), measurement.sigma * math.sqrt(widest))


def _working_domain(domain: Domain, working: Grouping) -> Domain:
    groups = dict(working)
    return Domain(domain.attributes, tuple(len(groups.get(a, range(n))) for a, n in zip(domain.attributes, domain.sizes)))


def _expansion(domain: Domain, working: Grouping, used: Sequence[ReleaseEntry]):
    """Return the model's expansion: within-group shares from the summed full-resolution 1-way counts."""
    from p2psynth.model.expansion import Expansion

    counts: dict[str, np.ndarray] = {}
    for entry in used:
        for measurement in entry.release.measurements:
            (attribute, *rest) = measurement.attributes
            if rest or entry.release.group_starts(attribute) is not None:
                continue
            counts[attribute] = counts.get(attribute, 0) + np.asarray(measurement.counts, dtype=np.float64)
    groups = dict(working)
    starts = tuple(tuple(groups.get(a, range(n))) for a, n in zip(domain.attributes, domain.sizes))
    return Expansion.from_counts(domain, starts, counts)


def build_provenance(used: Sequence[ReleaseEntry], *, schema_fingerprint: str) -> dict:
    """Return the provenance map stored in the model (deterministic for a set of releases)."""
    members: dict[str, dict] = {}
    for entry in used:
        author = entry.release.author.hex()
        record = members.setdefault(author, {"releases": 0, "rho": 0.0, "epoch": entry.release.epoch})
        record["releases"] += 1
        record["rho"] += entry.release.rho
    for record in members.values():
        record[f"epsilon_at_delta_{PROVENANCE_DELTA:g}"] = epsilon_from_rho(record["rho"], PROVENANCE_DELTA)
    return {
        "schema_fingerprint": schema_fingerprint,
        "releases": [entry.release_id.hex() for entry in used],
        "members": dict(sorted(members.items())),
    }
