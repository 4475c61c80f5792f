"""Expansion of a model fitted on grouped codes back to the schema's full resolution.

The pair measurements of the network's tree round are taken on a *model
grouping*: each attribute's codes are cut into at most a few groups of
consecutive codes, and the global model is fitted on those group codes (the
*working domain*). The full-resolution 1-way counts of every attribute are
measured too. ``Expansion`` joins the two into one distribution over the
schema's codes::

    P(codes) = P_tree(groups of the codes) * prod over attributes of share(code)

where ``share(code)`` is the code's part of its group's mass in the summed
round-1 counts. Within a group, an attribute is independent of every other
attribute. That is the maximum-entropy completion given the measurements:
no measurement shows how codes inside a group relate to other attributes.
The full-resolution 1-way marginals of the model are then the grouped model's
group probability times the share, so they equal the (clipped, normalized)
round-1 counts whenever the fit reproduces their group sums.

Shares come from noisy counts that are already public, so computing them is
post-processing: it spends no privacy budget and needs no accounting here.
Negative noisy counts count as 0, which can only move mass to codes that
the noise favoured. A group whose counts are all at most 0 gets uniform
shares, as does an attribute without counts.

Conditioning on codes is exact. A condition that allows the codes ``S`` of an
attribute weighs each group ``g`` by ``A(g) = sum of share(c) for c in S and
in g``. That weight enters the tree as soft evidence (``group_weights``), and
codes within a drawn group come from the shares restricted to ``S`` and
renormalized. A set of allowed groups alone would be wrong whenever ``A(g)``
differs between groups. If every allowed code of an attribute has share 0,
the condition has probability 0. Such a condition is then read as the limit
of shares smoothed by a vanishing uniform term: each group weighs as many
allowed codes as it contains, and the code is uniform over its allowed codes.
So a user asking for a rare category whose noisy count came out negative
still gets rows, and every row satisfies the condition.

Rejected alternatives:

- Storing a full-resolution copy of each clique marginal. A pair of two
  100-code attributes then has 10,000 cells instead of 256, for no extra
  information.
- Drawing codes with ``Generator.choice`` per group. That is a Python loop per
  group and attribute, and ``choice`` rebuilds its tables on every call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from p2psynth.domain import Domain
from p2psynth.errors import ModelError
from p2psynth.model.sampling import draw_cells, lookup_tables

logger = logging.getLogger(__name__)

# Shares are normalized in float64, so each group sums to 1 within rounding; a larger
# deviation means a corrupt or hand-made expansion.
_GROUP_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class _AttributeDraw:
    """Lookup tables that draw a code of one attribute within its sampled group.

    Row ``g`` of the tables contains the weights of the codes ``starts[g]`` to
    ``starts[g] + width - 1``; codes past the group's end weigh 0. Width 0
    marks an attribute with one code per group that is only checked against
    ``forbidden`` and draws nothing.
    """

    column: int
    starts: np.ndarray
    width: int
    cumulative: np.ndarray
    guide: np.ndarray
    # Groups that contain no allowed code: a row in one of them cannot satisfy the conditions.
    forbidden: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Expansion:
    """Map from a working domain of group codes to the full-resolution ``domain``.

    ``starts[i]`` lists the first code of each group of attribute ``i`` of
    ``domain``: first 0, strictly increasing, each below the size.
    ``shares[i]`` is each code's share of its group: float64, one per code of
    the attribute, summing to 1 within each group. Validation happens on
    construction and raises ModelError naming the attribute and value.
    """

    domain: Domain
    starts: tuple[tuple[int, ...], ...]
    shares: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.domain, Domain):
            raise ModelError(f"expansion domain is a {type(self.domain).__name__}; give a p2psynth.domain.Domain")
        if len(self.starts) != len(self.domain) or len(self.shares) != len(self.domain):
            raise ModelError(
                f"expansion has {len(self.starts)} start lists and {len(self.shares)} share arrays for "
                f"{len(self.domain)} attributes; give one of each per attribute of the domain, in domain order"
            )

        starts = tuple(
            _checked_starts(name, size, raw) for name, size, raw in zip(self.domain.attributes, self.domain.sizes, self.starts)
        )
        shares = tuple(
            _checked_shares(name, size, group_starts, raw)
            for name, size, group_starts, raw in zip(self.domain.attributes, self.domain.sizes, starts, self.shares)
        )
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "shares", shares)

        # Derived once: the code-to-group maps and the tables of unconditioned draws.
        maps = tuple(_group_map(size, group_starts) for size, group_starts in zip(self.domain.sizes, starts))
        for mapping in maps:
            mapping.setflags(write=False)
        object.__setattr__(self, "_maps", maps)
        object.__setattr__(self, "_draws", self._draw_tables(None))

    # --- construction -----------------------------------------------------------------

    @classmethod
    def from_counts(
        cls, domain: Domain, starts: Sequence[Sequence[int]], counts: Mapping[str, np.ndarray]
    ) -> "Expansion":
        """Build an expansion whose shares are the within-group parts of (noisy) 1-way counts.

        ``counts`` maps attribute names to full-resolution 1-way counts, such as
        the sum of all members' round-1 releases. Negative counts count as 0. A
        group whose counts sum to 0, and every group of an attribute missing
        from ``counts``, gets uniform shares.
        """
        if not isinstance(domain, Domain):
            raise ModelError(f"expansion domain is a {type(domain).__name__}; give a p2psynth.domain.Domain")
        unknown = sorted(str(name) for name in counts if name not in domain)
        if unknown:
            raise ModelError(
                f"counts name attributes {unknown} that are not in the domain {list(domain.attributes)}; "
                "give 1-way counts of the domain's attributes only"
            )
        if len(starts) != len(domain):
            raise ModelError(
                f"got {len(starts)} start lists for {len(domain)} attributes; give one per attribute, in domain order"
            )

        shares = []
        for name, size, raw_starts in zip(domain.attributes, domain.sizes, starts):
            group_starts = _checked_starts(name, size, raw_starts)
            if name in counts:
                mass = _checked_counts(name, size, counts[name])
            else:
                mass = np.zeros(size)
            shares.append(_normalize_within_groups(mass, _group_map(size, group_starts), len(group_starts)))
        return cls(domain=domain, starts=tuple(starts), shares=tuple(shares))

    # --- shape of the map -------------------------------------------------------------

    @property
    def working(self) -> Domain:
        """The domain of group codes: same attribute names, sizes are the numbers of groups."""
        return Domain(self.domain.attributes, tuple(len(s) for s in self.starts))

    @property
    def maps(self) -> tuple[np.ndarray, ...]:
        """Per attribute, the read-only int64 array mapping each code to its group."""
        return self._maps

    def is_identity(self) -> bool:
        """Return whether every group contains exactly one code, so expanding changes nothing."""
        return all(len(s) == size for s, size in zip(self.starts, self.domain.sizes))

    # --- sampling ---------------------------------------------------------------------

    def expand(
        self,
        group_codes: np.ndarray,
        rng: np.random.Generator,
        allowed: Mapping[str, set[int]] | None = None,
    ) -> np.ndarray:
        """Draw a code within each group of a (rows, attributes) table of group codes.

        Codes are drawn by their shares. With ``allowed`` (attribute name to
        the set of allowed codes), each draw is restricted to the allowed codes
        of the group, their shares renormalized, and uniform over them when
        they all have share 0. Raises ModelError when a row's group contains
        no allowed code. Returns int64 codes of ``domain``, same shape.
        """
        table = np.asarray(group_codes)
        if table.ndim != 2 or table.shape[1] != len(self.domain):
            raise ModelError(
                f"group codes have shape {table.shape}; expected (rows, {len(self.domain)}), one column per attribute"
            )
        if not np.issubdtype(table.dtype, np.integer):
            raise ModelError(f"group codes have dtype {table.dtype}; expected integer group codes")
        for column, (name, groups) in enumerate(zip(self.domain.attributes, self.working.sizes)):
            values = table[:, column]
            if values.size and (values.min() < 0 or values.max() >= groups):
                raise ModelError(
                    f"group codes of {name!r} range over {int(values.min())}..{int(values.max())}; "
                    f"the attribute has groups 0..{groups - 1}"
                )

        # Attribute-major copy: each column contiguous, as the sampler's chunks are.
        columns = np.array(table.T, dtype=np.int64, order="C")
        self.expander(allowed)(columns, rng)
        return np.ascontiguousarray(columns.T)

    def expander(
        self, allowed: Mapping[str, set[int]] | None = None
    ) -> Callable[[np.ndarray, np.random.Generator], None]:
        """Return a function that expands attribute-major group codes in place.

        The function takes an array of shape (attributes, rows) and a
        generator, and draws one uniform per row for each attribute that has
        a group of more than one code, in domain order. ``allowed`` works as
        in ``expand``. Build it once per condition set and reuse it.
        """
        draws = self._draws if not allowed else self._draw_tables(self._checked_allowed(allowed))

        def expand_columns(columns: np.ndarray, rng: np.random.Generator) -> None:
            for draw in draws:
                groups = columns[draw.column]
                if draw.forbidden is not None and groups.size and draw.forbidden[groups].any():
                    name = self.domain.attributes[draw.column]
                    bad = sorted({int(g) for g in np.unique(groups[draw.forbidden[groups]])})
                    raise ModelError(
                        f"rows have groups {bad} of {name!r}, which contain no allowed code; "
                        "draw the group codes under the matching group_weights() or group_conditions()"
                    )
                if draw.width == 0:
                    continue
                cells = draw_cells(draw.cumulative, draw.guide, draw.width, groups, rng.random(groups.size))
                columns[draw.column] = draw.starts[groups] + cells

        return expand_columns

    # --- conditions -------------------------------------------------------------------

    def group_weights(self, allowed: Mapping[str, set[int]]) -> dict[str, np.ndarray]:
        """Return, per conditioned attribute, the evidence weight of each group.

        The weight of group ``g`` is the sum of the shares of its allowed
        codes, so multiplying the grouped model by these weights and
        renormalizing gives the exact distribution of groups under the
        condition. When every allowed code of an attribute has share 0, the
        weight is the number of allowed codes in the group instead (see the
        module docstring). A group with weight 0 cannot satisfy the condition.
        """
        checked = self._checked_allowed(allowed)
        weights = {}
        for name, codes in checked.items():
            index = self.domain.index(name)
            mask = np.zeros(self.domain.sizes[index])
            mask[sorted(codes)] = 1.0
            groups = len(self.starts[index])
            weight = np.bincount(self._maps[index], weights=self.shares[index] * mask, minlength=groups)
            if not weight.sum() > 0:
                logger.debug("every allowed code of %r has share 0; weighing groups by allowed codes instead", name)
                weight = np.bincount(self._maps[index], weights=mask, minlength=groups)
            weights[name] = weight
        return weights

    def group_conditions(self, allowed: Mapping[str, set[int]]) -> dict[str, set[int]]:
        """Return, per conditioned attribute, the groups that can satisfy its allowed codes.

        These are the groups of positive ``group_weights``. Drawing group
        codes under these sets alone is exact only when every allowed group
        has weight 1; ``GraphicalModel`` uses the weights.
        """
        return {
            name: {int(g) for g in np.flatnonzero(weight > 0)} for name, weight in self.group_weights(allowed).items()
        }

    def expand_probabilities(self, probabilities: np.ndarray, attributes: Sequence[str]) -> np.ndarray:
        """Turn working-domain probabilities over ``attributes`` into full-resolution ones.

        Axis ``k`` of ``probabilities`` is over the groups of ``attributes[k]``;
        the result has the same axes over codes, with P(code) = P(group) * share.
        """
        if isinstance(attributes, str):
            attributes = (attributes,)
        attributes = tuple(attributes)
        values = np.asarray(probabilities, dtype=np.float64)
        if values.ndim != len(attributes):
            raise ModelError(
                f"probabilities have {values.ndim} axes for {len(attributes)} attributes {attributes}; "
                "give one axis per attribute"
            )

        for axis, name in enumerate(attributes):
            if name not in self.domain:
                raise ModelError(
                    f"attribute {name!r} is not in the expansion's domain {list(self.domain.attributes)}"
                )
            index = self.domain.index(name)
            if values.shape[axis] != len(self.starts[index]):
                raise ModelError(
                    f"axis {axis} of the probabilities has {values.shape[axis]} cells; "
                    f"{name!r} has {len(self.starts[index])} groups"
                )
            shape = [1] * values.ndim
            shape[axis] = self.domain.sizes[index]
            values = np.take(values, self._maps[index], axis=axis) * self.shares[index].reshape(shape)
        return values

    # --- serialization ----------------------------------------------------------------

    def to_document(self) -> list:
        """Return a canonical msgpack-ready form: per attribute [name, starts, shares as little-endian float64]."""
        return [
            [name, list(group_starts), share.astype("<f8").tobytes()]
            for name, group_starts, share in zip(self.domain.attributes, self.starts, self.shares)
        ]

    @classmethod
    def from_document(cls, document: object, domain: Domain) -> "Expansion":
        """Decode ``to_document`` output for ``domain``; raise ModelError for anything else."""
        if not isinstance(document, list) or len(document) != len(domain):
            count = len(document) if isinstance(document, list) else type(document).__name__
            raise ModelError(
                f"expansion document has {count} entries for {len(domain)} attributes; the model file is corrupt"
            )
        starts, shares = [], []
        for position, (entry, name, size) in enumerate(zip(document, domain.attributes, domain.sizes)):
            if not (isinstance(entry, list) and len(entry) == 3 and entry[0] == name):
                raise ModelError(
                    f"expansion entry {position} is not [{name!r}, starts, shares]; the model file is corrupt"
                )
            raw_starts, raw_shares = entry[1], entry[2]
            if not isinstance(raw_starts, list) or not isinstance(raw_shares, bytes) or len(raw_shares) != 8 * size:
                raise ModelError(
                    f"expansion of {name!r} needs a list of starts and {8 * size} bytes of shares; "
                    "the model file is corrupt"
                )
            starts.append(tuple(raw_starts))
            shares.append(np.frombuffer(raw_shares, dtype="<f8").astype(np.float64))
        return cls(domain=domain, starts=tuple(starts), shares=tuple(shares))

    # --- helpers ----------------------------------------------------------------------

    def _checked_allowed(self, allowed: Mapping[str, set[int]]) -> dict[str, set[int]]:
        """Return ``allowed`` as {attribute: set of int codes}, validated against ``domain``."""
        return check_code_conditions(self.domain, allowed)

    def _draw_tables(self, allowed: dict[str, set[int]] | None) -> tuple[_AttributeDraw, ...]:
        """Build the draw tables of every attribute with a group of several codes."""
        draws = []
        for index, (name, size) in enumerate(zip(self.domain.attributes, self.domain.sizes)):
            group_starts = np.asarray(self.starts[index], dtype=np.int64)
            if len(group_starts) == size:
                # One code per group: the group code is the code, and only a condition needs a check.
                if allowed and name in allowed:
                    forbidden = np.ones(size, dtype=bool)
                    forbidden[sorted(allowed[name])] = False
                    empty_table = np.zeros(0)
                    draws.append(_AttributeDraw(index, group_starts, 0, empty_table, empty_table, forbidden))
                continue
            ends = np.append(group_starts[1:], size)
            width = int((ends - group_starts).max())

            # Row g, cell j: the weight of code starts[g] + j, 0 past the group's end.
            codes = group_starts[:, None] + np.arange(width)[None, :]
            inside = codes < ends[:, None]
            weights = np.where(inside, self.shares[index][np.minimum(codes, size - 1)], 0.0)
            forbidden = None
            if allowed and name in allowed:
                mask = np.zeros(size, dtype=bool)
                mask[sorted(allowed[name])] = True
                permitted = inside & mask[np.minimum(codes, size - 1)]
                weights = np.where(permitted, weights, 0.0)
                # All allowed codes of a group at share 0: uniform over them (the smoothed limit).
                empty = weights.sum(axis=1) <= 0
                weights = np.where(empty[:, None], permitted.astype(np.float64), weights)
                forbidden = ~permitted.any(axis=1)

            cumulative, guide = lookup_tables(weights)
            draws.append(
                _AttributeDraw(
                    column=index, starts=group_starts, width=width, cumulative=cumulative, guide=guide, forbidden=forbidden
                )
            )
        return tuple(draws)


def check_code_conditions(domain: Domain, conditions: Mapping[str, object]) -> dict[str, set[int]]:
    """Return conditions as {attribute: set of codes} in domain order; raise ModelError naming a bad one.

    Each condition is one code or an iterable of codes of its attribute.
    """
    unknown = [name for name in conditions if name not in domain]
    if unknown:
        raise ModelError(
            f"condition names attribute {unknown[0]!r}, which is not in the domain {list(domain.attributes)}"
        )
    checked: dict[str, set[int]] = {}
    for name in domain.attributes:
        if name not in conditions:
            continue
        value = conditions[name]
        codes = {value} if isinstance(value, (int, np.integer)) else set(value)
        size = domain.size(name)
        bad = sorted(
            repr(c) for c in codes if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < size
        )
        if bad:
            raise ModelError(
                f"condition on {name!r} has codes {', '.join(bad)} outside 0..{size - 1}; "
                "give codes of the attribute's domain"
            )
        if not codes:
            raise ModelError(f"condition on {name!r} allows no code; give at least one")
        checked[name] = {int(c) for c in codes}
    return checked


def starts_from_maps(domain: Domain, maps: Sequence[np.ndarray]) -> tuple[tuple[int, ...], ...]:
    """Return the group start codes of code-to-group maps, such as a strategy grouping's ``maps``.

    Each map must number its groups 0, 1, 2, ... over consecutive codes;
    raises ModelError naming the attribute otherwise.
    """
    if len(maps) != len(domain):
        raise ModelError(f"got {len(maps)} maps for {len(domain)} attributes; give one per attribute, in domain order")
    result = []
    for name, size, mapping in zip(domain.attributes, domain.sizes, maps):
        values = np.asarray(mapping)
        if values.shape != (size,) or not np.issubdtype(values.dtype, np.integer):
            raise ModelError(
                f"map of {name!r} has shape {values.shape} and dtype {values.dtype}; expected {size} integer group codes"
            )
        steps = np.diff(values)
        if values[0] != 0 or np.any((steps != 0) & (steps != 1)):
            raise ModelError(
                f"map of {name!r} is {values.tolist()}; groups must be numbered 0, 1, 2, ... over consecutive codes"
            )
        result.append((0,) + tuple(int(i) + 1 for i in np.flatnonzero(steps)))
    return tuple(result)


def _checked_starts(name: str, size: int, raw: object) -> tuple[int, ...]:
    """Return one attribute's group starts as a tuple of ints, or raise ModelError naming the problem."""
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        raw = raw.tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ModelError(f"group starts of {name!r} are {raw!r}; give a sequence of start codes")
    starts = tuple(raw)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in starts):
        raise ModelError(f"group starts of {name!r} are {list(starts)}; every start must be an integer code")
    starts = tuple(int(s) for s in starts)
    if not starts or starts[0] != 0:
        raise ModelError(f"group starts of {name!r} are {list(starts)}; the first group must start at code 0")
    if any(later <= earlier for earlier, later in zip(starts, starts[1:])):
        raise ModelError(f"group starts of {name!r} are {list(starts)}; they must be strictly increasing")
    if starts[-1] >= size:
        raise ModelError(
            f"group starts of {name!r} are {list(starts)}; start {starts[-1]} is not a code of an attribute "
            f"of size {size}, so each start must be below {size}"
        )
    return starts


def _checked_shares(name: str, size: int, starts: tuple[int, ...], raw: object) -> np.ndarray:
    """Return one attribute's shares as a read-only float64 array, or raise ModelError naming the problem."""
    try:
        shares = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"shares of {name!r} are not numbers ({exc}); give a float64 array") from exc
    if shares.shape != (size,):
        raise ModelError(f"shares of {name!r} have shape {shares.shape}; expected ({size},), one per code")
    if not np.all(np.isfinite(shares)) or shares.min() < 0:
        bad = shares[~np.isfinite(shares) | (shares < 0)]
        raise ModelError(f"shares of {name!r} include {float(bad[0])!r}; every share must be a finite number of at least 0")

    sums = np.add.reduceat(shares, np.asarray(starts))
    wrong = np.flatnonzero(np.abs(sums - 1.0) > _GROUP_SUM_TOLERANCE)
    if wrong.size:
        group = int(wrong[0])
        raise ModelError(
            f"shares of {name!r} in group {group} (codes from {starts[group]}) sum to {float(sums[group])!r}; "
            "the shares of each group must sum to 1 (Expansion.from_counts normalizes them)"
        )
    shares.setflags(write=False)
    return shares


def _checked_counts(name: str, size: int, raw: object) -> np.ndarray:
    """Return one attribute's 1-way counts as float64 with negatives set to 0."""
    try:
        counts = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"1-way counts of {name!r} are not numbers ({exc}); give a numeric array") from exc
    if counts.shape != (size,):
        raise ModelError(f"1-way counts of {name!r} have shape {counts.shape}; expected ({size},), one per code")
    if not np.all(np.isfinite(counts)):
        raise ModelError(f"1-way counts of {name!r} contain non-finite values; give finite counts")
    return np.clip(counts, 0.0, None)


def _group_map(size: int, starts: tuple[int, ...]) -> np.ndarray:
    """Return the int64 array mapping each code to its group."""
    widths = np.diff(np.append(np.asarray(starts, dtype=np.int64), size))
    return np.repeat(np.arange(len(starts), dtype=np.int64), widths)


def _normalize_within_groups(mass: np.ndarray, mapping: np.ndarray, groups: int) -> np.ndarray:
    """Return each code's part of its group's mass; uniform within a group of zero mass."""
    totals = np.bincount(mapping, weights=mass, minlength=groups)
    widths = np.bincount(mapping, minlength=groups)
    empty = totals[mapping] <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(empty, 1.0 / widths[mapping], mass / np.where(empty, 1.0, totals[mapping]))
    return shares


__all__ = ["Expansion", "starts_from_maps"]
