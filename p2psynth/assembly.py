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

The provenance stored with the model lists the releases used, and per member
the number of releases, the rho they spent and the matching epsilon at a
reference delta of 1e-9 (releases record rho, not delta).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

from p2psynth.accounting import epsilon_from_rho
from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ModelError, ReleaseFormatError
from p2psynth.release import Release, check_against_domain, decode_release, release_id

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
    measurements: list[Measurement] = []
    sources: list[str] = []
    for entry in used:
        for measurement in entry.release.measurements:
            measurements.append(measurement)
            sources.append(entry.release.author.hex())

    model = fit_model(
        domain,
        measurements,
        sources=sources,
        max_clique_cells=max_clique_cells or DEFAULT_MAX_CLIQUE_CELLS,
        drop_cliques_over_cap=drop_cliques_over_cap,
        provenance=build_provenance(used, schema_fingerprint=schema_fingerprint),
    )
    log.info("assembled model %s from %d releases of %d members", model.model_id[:16], len(used),
             len({e.release.author for e in used}))
    return model


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
