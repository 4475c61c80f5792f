"""Releases the simulator makes in a node's own folder: seeded honest ones and misbehaving ones.

Both kinds go through the member's own ledger (``BudgetLedger.publish``):
the release is signed with the member's key, debited and stored as an own
release in the member's store, exactly as ``p2psynth measure`` does. The
member's daemon then serves it to peers over the sync protocol like any
release it holds. So a misbehaving release reaches every peer's
``ReleaseValidator`` through the real network path, and the verdict the
report shows is the one the peers' daemons reached and counted in their
status files. Writing straight into a peer's store instead would skip
validation, because the store never decides whether a release is valid.

Why seeded noise here: the daemon draws noise from ``SecureRandom()``, keyed
from os.urandom, and offers no way to seed it. A release measured by the
simulator in the node's folder (with SQLite's locking, also while the daemon
runs) uses ``SecureRandom(seed=...)`` derived from the scenario seed, the node
name and the release number, so a run can be repeated. Such a seed is for
simulations only, because anyone with the seed can subtract the noise.

Misbehaviour kinds, applied to an honest MST measurement of the member's
table (``factor`` is the scenario's multiplier):

- ``inflate_all``: every marginal gains ``(factor - 1)`` times the release's
  row count estimate, spread over its positive cells in proportion to their
  counts. Negative noisy cells and the noise on each total stay as they were,
  so the marginals still agree on one (inflated) row count and the negative
  mass does not grow. Multiplying every cell by ``factor`` would not be
  consistent: it multiplies the noise on the totals and the negative mass too,
  which the plausibility check catches. This passes the check unless
  members.toml gives the member a ``max_rows`` below the inflated size.
- ``inflate_one``: only the first 2-way marginal times ``factor``; its total
  disagrees with the other marginals of the release.
- ``negative``: the first 2-way marginal replaced by ``-factor`` times its
  counts, a negative mass no noise explains.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2psynth.accounting import rho_from_epsilon
from p2psynth.domain import Measurement
from p2psynth.encoding import encode_file
from p2psynth.measurement import measure_mst
from p2psynth.members import load_members
from p2psynth.noise import SEED_BYTES, SecureRandom
from p2psynth.nodefolder import measure_and_publish, open_node
from p2psynth.release import release_id
from p2psynth.schema import load_schema
from p2psynth.validation import plausibility_problem
from simulations.scenario import ScenarioError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseRecord:
    """A release the simulator caused, and whether peers are expected to accept it."""

    release_id: str
    author: str  # node name
    sequence: int
    epoch: int
    rho: float
    # None for a release peers must accept; otherwise the validator's expected reason.
    expected_rejection: str | None = None
    detail: str = ""
    kind: str = "honest"


def noise_seed(scenario_seed: int, node_name: str, release_number: int) -> bytes:
    """Derive the 32-byte noise key of one simulated release."""
    material = f"p2psynth-simulation/{scenario_seed}/{node_name}/{release_number}".encode()
    return hashlib.sha256(material).digest()[:SEED_BYTES]


def publish_seeded(config_path: Path, *, name: str, epsilon: float, seed: bytes) -> ReleaseRecord:
    """Measure the node's table with seeded noise through ``measure_and_publish``; return its record."""
    with open_node(config_path) as node:
        published = measure_and_publish(node, epsilon=epsilon, random=SecureRandom(seed=seed))
    release = published.release
    return ReleaseRecord(release_id(published.data).hex(), name, release.sequence, release.epoch, release.rho)


def publish_misbehaving(
    config_path: Path,
    *,
    name: str,
    kind: str,
    factor: float,
    epsilon: float,
    seed: bytes,
) -> ReleaseRecord:
    """Measure honestly, distort the counts, sign and debit with the member's own key; return the record."""
    with open_node(config_path) as node:
        config = node.config
        schema = load_schema(config.data.schema)
        encoded = encode_file(config.data.path, schema, header=config.data.header, skip_rows=config.data.skip_rows,
                              delimiter=config.data.delimiter)
        rho = rho_from_epsilon(epsilon, config.privacy.delta)
        node.ledger.check_affordable(rho)
        honest = measure_mst(encoded.codes, schema.domain, rho=rho, random=SecureRandom(seed=seed))
        measurements = distort(list(honest.measurements), kind=kind, factor=factor)

        epoch = max((stored.epoch for stored in node.store.own_releases()), default=0) + 1
        data, release = node.ledger.publish(
            schema_fingerprint=schema.fingerprint, measurements=measurements, rho=honest.rho, epoch=epoch
        )
        members = load_members(config.network.members_file)

    # Predict the peers' verdict with the validator's own function; the report
    # puts the prediction next to what the peers' status files count.
    member = members.get(release.author)
    problem = plausibility_problem(release, max_rows=member.max_rows if member else None)
    log.info("%s wrote a %s release %s; peers should %s", name, kind, release_id(data).hex()[:16],
             "reject it: " + problem if problem else "accept it")
    return ReleaseRecord(
        release_id(data).hex(), name, release.sequence, release.epoch, release.rho,
        expected_rejection="implausible" if problem else None, detail=problem or "", kind=kind,
    )


def distort(measurements: list[Measurement], *, kind: str, factor: float) -> list[Measurement]:
    """Return the measurements with counts changed for ``kind`` (see the module header)."""
    pairs = [i for i, m in enumerate(measurements) if len(m.attributes) == 2]
    if kind == "inflate_all":
        chosen = range(len(measurements))
    elif pairs:
        chosen = [pairs[0]]
    else:
        raise ScenarioError(f"misbehaviour {kind!r} needs a 2-way marginal and the release has none")

    rows = float(np.mean([m.counts.sum() for m in measurements]))
    changed = list(measurements)
    for index in chosen:
        m = measurements[index]
        values = m.counts.astype(np.float64)
        if kind == "negative":
            values = -factor * values
        elif kind == "inflate_all":
            positive = np.clip(values, 0, None)
            values = values + (factor - 1.0) * rows * positive / max(positive.sum(), 1.0)
        else:
            values = values * factor
        counts = np.rint(values).astype(np.int64)
        changed[index] = Measurement(attributes=m.attributes, counts=counts, sigma=m.sigma)
    return changed


def expected_current(records: list[ReleaseRecord]) -> set[str]:
    """Return the ids the model uses from ``records``: each author's highest epoch."""
    highest: dict[str, int] = {}
    for record in records:
        highest[record.author] = max(highest.get(record.author, 0), record.epoch)
    return {r.release_id for r in records if r.epoch == highest[r.author]}

