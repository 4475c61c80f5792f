"""Vectorized forward sampling from calibrated junction-tree marginals.

A junction tree factorizes the distribution as the root clique's joint times,
for every other clique, the conditional of its new attributes given its
separator with the parent. Sampling in tree order therefore needs one draw per
clique and row: the root joint first, then each child given the separator
values already drawn.

Each draw is an inverse-CDF lookup done for all rows at once, sped up by a
guide table (Chen and Asau, 1974; Devroye, "Non-Uniform Random Variate
Generation", 1986, section III.2.4). A clique's conditional is stored as one
row of cumulative probabilities per separator configuration ``s`` of width
``R``, next to a guide row of ``R`` entries where entry ``g`` is the first
cell whose cumulative probability exceeds ``g / R``. A uniform ``u`` starts at
the guide entry of ``floor(u * R)`` and steps forward while the cumulative
probability is at most ``u``, about one step on average. All rows step
together with numpy fancy indexing, so a clique costs a few gathers per row.
A cell of probability exactly 0 is never returned, which is what makes
conditioned samples satisfy their conditions.

Rejected alternatives: one ``np.searchsorted`` over all rows shifted by their
configuration index is simpler, but it costs O(log cells) cache misses per row
and was about three times slower on Adult. Walker's alias method draws in O(1),
but its tables need a sequential pass per configuration, which is slow to
build in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from p2psynth.model.junction_tree import JunctionTree

# Rows drawn per chunk. It bounds temporaries to a few hundred bytes per row
# of the chunk, and it is fixed so a seed gives the same rows on every machine.
SAMPLE_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class _CliqueSampler:
    """Lookup tables that draw the attributes a clique adds, given its separator.

    ``cumulative[s * width + j]`` is the probability of the first ``j + 1``
    new-attribute cells given separator configuration ``s``, set to exactly 1
    from the last cell of positive probability on. ``guide[s * width + g]`` is
    the first cell ``j`` with ``cumulative > g / width``.
    """

    separator_columns: tuple[int, ...]
    separator_shape: tuple[int, ...]
    new_columns: tuple[int, ...]
    new_shape: tuple[int, ...]
    width: int
    cumulative: np.ndarray
    guide: np.ndarray


def build_samplers(tree: JunctionTree, marginals: list[np.ndarray]) -> list[_CliqueSampler]:
    """Return one sampler per clique, in tree order (root first)."""
    column = {name: i for i, name in enumerate(tree.domain.attributes)}
    samplers = []
    for clique in tree.order:
        attributes = tree.cliques[clique]
        separator = set(tree.separator(clique))
        old_axes = [i for i, a in enumerate(attributes) if a in separator]
        new_axes = [i for i, a in enumerate(attributes) if a not in separator]
        shape = marginals[clique].shape
        separator_shape = tuple(shape[i] for i in old_axes)
        new_shape = tuple(shape[i] for i in new_axes)
        width = math.prod(new_shape)

        table = np.transpose(marginals[clique], old_axes + new_axes).reshape(math.prod(separator_shape), width)
        cumulative, guide = lookup_tables(table)
        samplers.append(
            _CliqueSampler(
                separator_columns=tuple(column[attributes[i]] for i in old_axes),
                separator_shape=separator_shape,
                new_columns=tuple(column[attributes[i]] for i in new_axes),
                new_shape=new_shape,
                width=width,
                cumulative=cumulative,
                guide=guide,
            )
        )
    return samplers


def lookup_tables(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the flattened cumulative and guide tables of the conditional rows of ``table``.

    ``table`` has one row of non-negative weights per configuration; rows need
    not sum to 1. ``draw_cells`` reads the two tables.
    """
    configurations, width = table.shape
    table = np.clip(table, 0.0, None)
    mass = table.sum(axis=1, keepdims=True)

    # A configuration of probability 0 is never drawn; a uniform row keeps its tables valid.
    empty = mass[:, 0] <= 0
    table = np.where(empty[:, None], 1.0, table)
    mass = np.where(empty[:, None], float(width), mass)

    # Rounding can lift a partial sum just above 1 before a tiny last cell; capping keeps rows monotone.
    cumulative = np.minimum(np.cumsum(table / mass, axis=1), 1.0)
    last_positive = width - 1 - np.argmax(table[:, ::-1] > 0, axis=1)
    cumulative[np.arange(width)[None, :] >= last_positive[:, None]] = 1.0

    # Guide entry g of row s: the first j with cumulative[s, j] > g / width, found with one
    # searchsorted over rows shifted by their index (monotone as a whole).
    shifted = (cumulative + np.arange(configurations)[:, None]).ravel()
    levels = (np.arange(width) / width)[None, :] + np.arange(configurations)[:, None]
    found = np.searchsorted(shifted, levels.ravel(), side="right").reshape(configurations, width)
    guide = np.minimum(found - (np.arange(configurations) * width)[:, None], last_positive[:, None])
    return cumulative.ravel(), guide.ravel().astype(np.int64)


def sample_codes(
    samplers: list[_CliqueSampler],
    attribute_count: int,
    rows: int,
    rng: np.random.Generator,
    *,
    finish: Callable[[np.ndarray, np.random.Generator], None] | None = None,
) -> np.ndarray:
    """Draw ``rows`` rows of codes, shape (rows, attribute_count), in chunks of SAMPLE_CHUNK_ROWS.

    ``finish``, when given, rewrites each chunk in place after the forward pass
    (attribute-major, one contiguous row of codes per attribute) and may draw
    from ``rng``. The model uses it to expand group codes to codes.
    """
    codes = np.empty((rows, attribute_count), dtype=np.int64)
    # Columns are drawn into an attribute-major buffer, where each column is contiguous.
    columns = np.empty((attribute_count, min(rows, SAMPLE_CHUNK_ROWS)), dtype=np.int64)
    for start in range(0, rows, SAMPLE_CHUNK_ROWS):
        stop = min(start + SAMPLE_CHUNK_ROWS, rows)
        chunk = columns[:, : stop - start]
        _sample_chunk(samplers, chunk, rng)
        if finish is not None:
            finish(chunk, rng)
        codes[start:stop] = chunk.T
    return codes


def _sample_chunk(samplers: list[_CliqueSampler], columns: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``columns`` (attributes x rows) with one forward pass through the tree."""
    count = columns.shape[1]
    for sampler in samplers:
        if sampler.separator_columns:
            configuration = np.ravel_multi_index(
                tuple(columns[c] for c in sampler.separator_columns), sampler.separator_shape
            )
        else:
            configuration = np.zeros(count, dtype=np.int64)

        cell = draw_cells(sampler.cumulative, sampler.guide, sampler.width, configuration, rng.random(count))
        if len(sampler.new_columns) == 1:
            columns[sampler.new_columns[0]] = cell
        elif sampler.new_columns:
            for column, values in zip(sampler.new_columns, np.unravel_index(cell, sampler.new_shape)):
                columns[column] = values


def draw_cells(
    cumulative: np.ndarray, guide: np.ndarray, width: int, configuration: np.ndarray, uniform: np.ndarray
) -> np.ndarray:
    """Return the cell in 0..width-1 that each uniform selects in its configuration's row of the tables.

    ``cumulative`` and ``guide`` come from ``lookup_tables``. A cell of
    probability 0 is never returned.
    """
    base = configuration * width
    cell = guide[base + np.minimum((uniform * width).astype(np.int64), width - 1)]

    # Step forward while the cell's cumulative probability is at most u; at most width steps.
    pending = np.flatnonzero(cumulative[base + cell] <= uniform)
    while pending.size:
        cell[pending] += 1
        pending = pending[cumulative[base[pending] + cell[pending]] <= uniform[pending]]
    return cell
