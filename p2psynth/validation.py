"""Validation of releases received from peers, before anything is stored.

Checks, in order (the first failure names the rejection reason):

1. ``oversize``: more bytes than the node accepts.
2. ``malformed`` / ``bad_signature``: strict decoding and the Ed25519 check.
3. ``non_member``: the author is not in the members file.
4. ``wrong_schema``: another schema fingerprint than the network's.
5. ``domain_mismatch``: an attribute or shape that the schema does not have.
6. ``implausible``: noisy totals or negative mass that the noise cannot
   explain (bounds below), or a total above the member's public ``max_rows``.
7. Sequence rules per author, against the store:
   - the same bytes again is a ``replay`` (counted, harmless);
   - different bytes with a sequence already stored is ``equivocation``: both
     releases are kept as evidence, the author is flagged and none of its
     releases is used by the model again;
   - a new sequence below the highest stored one fills a gap in the author's
     history (gossip may deliver out of order) and is accepted.

Plausibility bounds, for a measurement with c cells and noise sigma s. The
noise on its total has standard deviation s * sqrt(c). A cell whose true count
is zero turns negative by E[max(0, -Z)] = s / sqrt(2 pi) < 0.4 s on average,
so the negative mass of a release built from non-negative counts stays below
0.5 s c + K s sqrt(c). Totals of all measurements of one release estimate the
same row count and must agree within K standard deviations. K = 8 makes a
false rejection of an honest release practically impossible (a Gaussian
exceeds 8 standard deviations with probability about 1e-15), while an author
who inflates one marginal or adds large negative counts is caught. An author
who inflates every marginal consistently passes unless its members entry
gives ``max_rows``.

Every rejection is counted per reason and per peer; a given peer and reason
is logged at most once a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from p2psynth.domain import Domain
from p2psynth.errors import ReleaseFormatError
from p2psynth.members import Members
from p2psynth.release import (
    MAX_RELEASE_BYTES,
    InvalidSignatureError,
    Release,
    author_fingerprint,
    check_against_domain,
    decode_release,
    release_id,
)
from p2psynth.store import Store

log = logging.getLogger(__name__)

PLAUSIBILITY_SIGMAS = 8.0
LOG_INTERVAL_S = 60.0

REASONS = (
    "oversize",
    "malformed",
    "bad_signature",
    "non_member",
    "wrong_schema",
    "domain_mismatch",
    "implausible",
    "replay",
    "equivocation",
)


# Rejections of releases whose signature verified: their author is known.
_SIGNED_REJECTIONS = frozenset({"wrong_schema", "domain_mismatch", "implausible"})


@dataclass(frozen=True)
class Outcome:
    """The result of validating one release body."""

    accepted: bool
    reason: str  # "accepted", "own_key_unknown", or one of REASONS
    release_id: bytes | None = None
    release: Release | None = None
    detail: str = ""


@dataclass
class RejectionCounter:
    """Counts of rejections per reason and per (peer, reason), with rate-limited logging."""

    by_reason: Counter = field(default_factory=Counter)
    by_peer: Counter = field(default_factory=Counter)
    _last_logged: dict[tuple[str, str], float] = field(default_factory=dict)

    def record(self, peer: str, reason: str, detail: str) -> None:
        self.by_reason[reason] += 1
        self.by_peer[(peer, reason)] += 1

        # A replay usually comes from a gossip race (one release pulled twice), not from misbehaviour.
        level = logging.DEBUG if reason == "replay" else logging.WARNING
        now = time.monotonic()
        last = self._last_logged.get((peer, reason))
        if last is None or now - last >= LOG_INTERVAL_S:
            self._last_logged[(peer, reason)] = now
            total = self.by_peer[(peer, reason)]
            log.log(level, "rejected release from peer %s: %s (%s); %d so far", peer, reason, detail, total)

    def snapshot(self) -> dict:
        per_peer: dict[str, dict[str, int]] = {}
        for (peer, reason), count in sorted(self.by_peer.items()):
            per_peer.setdefault(peer, {})[reason] = count
        return {"by_reason": dict(sorted(self.by_reason.items())), "by_peer": per_peer}


class ReleaseValidator:
    """Validates received release bytes and stores the ones that pass."""

    def __init__(
        self,
        *,
        store: Store,
        members: Members,
        schema_fingerprint: str,
        domain: Domain,
        own_author: bytes,
        max_release_bytes: int = MAX_RELEASE_BYTES,
    ) -> None:
        self._store = store
        self.members = members
        self._fingerprint = schema_fingerprint
        self._domain = domain
        self._own_author = own_author
        self._max_bytes = max_release_bytes
        self.rejections = RejectionCounter()
        # Accepted releases per author since start (statistics only).
        self.accepted = Counter()
        # Highest sequence per author among rejected releases whose signature
        # verified, so anti-entropy does not pull them again.
        self.rejected_sequences: dict[bytes, int] = {}

    def accept(self, data: bytes, *, from_peer: str) -> Outcome:
        """Validate ``data`` and store it if valid.

        Faulty peer input is rejected, never raised. Store failures (sqlite3)
        do raise: the caller's guard logs them and the node keeps running.
        """
        try:
            outcome = self._check(data)
        except (ArithmeticError, ValueError, TypeError) as exc:
            # A check that trips over odd input is a bug to fix, but the bytes
            # still come from a peer: reject them and keep the node running.
            log.exception("validating a release from peer %s failed", from_peer)
            outcome = Outcome(False, "malformed", detail=f"{type(exc).__name__}: {exc}")
        if outcome.accepted:
            assert outcome.release is not None
            self.accepted[outcome.release.author] += 1
            log.info(
                "stored release %s from %s (sequence %d) via peer %s",
                outcome.release_id.hex()[:16], self.members.name_of(outcome.release.author),
                outcome.release.sequence, from_peer,
            )
        elif outcome.reason != "own_key_unknown":
            self.rejections.record(from_peer, outcome.reason, outcome.detail)
            if outcome.reason in _SIGNED_REJECTIONS and outcome.release is not None:
                author, sequence = outcome.release.author, outcome.release.sequence
                self.rejected_sequences[author] = max(self.rejected_sequences.get(author, 0), sequence)
        return outcome

    def _check(self, data: bytes) -> Outcome:
        if len(data) > self._max_bytes:
            return Outcome(False, "oversize", detail=f"{len(data)} bytes, limit {self._max_bytes}")
        try:
            release = decode_release(data, max_bytes=self._max_bytes)
        except InvalidSignatureError as exc:
            return Outcome(False, "bad_signature", detail=str(exc))
        except ReleaseFormatError as exc:
            return Outcome(False, "malformed", detail=str(exc))
        rid = release_id(data)

        if release.author not in self.members:
            return Outcome(False, "non_member", rid, detail=f"author {author_fingerprint(release.author)}")
        if release.schema_fingerprint != self._fingerprint:
            return Outcome(
                False, "wrong_schema", rid, release,
                detail=f"schema {release.schema_fingerprint[:16]}, network uses {self._fingerprint[:16]}",
            )
        try:
            check_against_domain(release, self._domain)
        except ReleaseFormatError as exc:
            return Outcome(False, "domain_mismatch", rid, release, detail=str(exc))
        problem = plausibility_problem(release, max_rows=self.members.get(release.author).max_rows)
        if problem is not None:
            return Outcome(False, "implausible", rid, release, detail=problem)

        return self._check_sequence_and_store(data, rid, release)

    def _check_sequence_and_store(self, data: bytes, rid: bytes, release: Release) -> Outcome:
        if self._store.has_release(rid):
            return Outcome(False, "replay", rid, release, f"release {rid.hex()[:16]} is stored already")

        same_slot = self._store.releases_at(release.author, release.sequence)
        if same_slot:
            # Keep the second release as evidence, then stop using the author.
            self._store.add_release(data, release, own=False)
            self._store.flag_author(release.author, f"two releases with sequence {release.sequence}")
            log.warning(
                "member %s equivocated: releases %s and %s both have sequence %d; its releases are no longer used",
                self.members.name_of(release.author), same_slot[0].release_id.hex()[:16], rid.hex()[:16],
                release.sequence,
            )
            return Outcome(False, "equivocation", rid, release, f"sequence {release.sequence} reused")

        self._store.add_release(data, release, own=False)
        if release.author == self._own_author:
            # Signed with our key but unknown to our store: the store was restored
            # from an old backup. Storing it makes the ledger stop publishing.
            log.error(
                "received release %s signed with this node's own key but missing from its store; "
                "publishing stops until the ledger is reconciled",
                rid.hex()[:16],
            )
            return Outcome(True, "own_key_unknown", rid, release)
        return Outcome(True, "accepted", rid, release)


def plausibility_problem(release: Release, *, max_rows: int | None = None) -> str | None:
    """Return why ``release``'s counts are implausible for honest noisy counts, or None."""
    totals = []
    deviations = []
    for m in release.measurements:
        cells = m.counts.size
        spread = m.sigma * math.sqrt(cells)
        counts = m.counts.astype(np.float64)
        negative_mass = float(-counts[counts < 0].sum())
        allowed = 0.5 * m.sigma * cells + PLAUSIBILITY_SIGMAS * spread
        if negative_mass > allowed:
            return (
                f"measurement over {m.attributes} has negative mass {negative_mass:.0f}; "
                f"noise of sigma {m.sigma:.3g} explains at most {allowed:.0f}"
            )
        totals.append(float(counts.sum()))
        deviations.append(spread)

    weights = np.array([1.0 / d**2 for d in deviations])
    estimate = float(np.dot(weights, totals) / weights.sum())
    estimate_spread = math.sqrt(1.0 / weights.sum())
    for m, total, spread in zip(release.measurements, totals, deviations):
        allowed = PLAUSIBILITY_SIGMAS * math.sqrt(spread**2 + estimate_spread**2)
        if abs(total - estimate) > allowed:
            return (
                f"measurement over {m.attributes} totals {total:.0f} while the release's measurements "
                f"agree on about {estimate:.0f}; the noise explains a difference of at most {allowed:.0f}"
            )
    if estimate < -PLAUSIBILITY_SIGMAS * estimate_spread:
        return f"the release's row count estimate is negative ({estimate:.0f})"
    if max_rows is not None and estimate > max_rows + PLAUSIBILITY_SIGMAS * estimate_spread:
        return f"the release counts about {estimate:.0f} rows, above the member's public max_rows {max_rows}"
    return None
