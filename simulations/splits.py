"""Splitting one real table into the private tables of simulated organizations.

Every split works on row indices chosen with one seeded numpy generator, then
writes each node's rows as the original text lines, so a node reads its file
exactly as an operator's node would read its own export. Kinds:

- ``iid``: a random permutation cut into parts; ``shares`` sets unequal sizes.
- ``by_column``: rows sorted by the codes of one column (ties broken at
  random) and cut into contiguous blocks, so each node gets a narrow slice of
  that column. This is the "split sorted by age" case of the design notes,
  where skewed shards pull each node's choice of pairs towards that column.
- ``dirichlet``: for each category of ``column``, the rows of that category are
  dealt to nodes with proportions drawn from Dirichlet(alpha). Small alpha
  gives nodes with very different label mixes; this is the usual way federated
  learning papers simulate non-iid clients (Hsu, Qi and Brown, "Measuring the
  effects of non-identical data distribution for federated visual
  classification", 2019). Sizes then vary too, and ``shares`` does not apply.

Codes come from ``p2psynth.encoding`` under the network's schema, so the
column used for skew is the schema's view (a numeric column is binned).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2psynth.encoding import encode_file
from p2psynth.schema import Schema
from simulations.scenario import ScenarioError, SplitSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    """Text lines of a real table and their codes under the schema, row for row."""

    lines: list[str]
    codes: np.ndarray


def read_lines(path: Path, *, skip_rows: int = 0) -> list[str]:
    """Return the non-empty lines of a CSV file (gzip or plain) after ``skip_rows`` lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return [line for line in lines[skip_rows:] if line.strip()]


def load_table(path: Path, schema: Schema, *, skip_rows: int, scratch: Path, max_rows: int = 0,
               rng: np.random.Generator | None = None) -> Table:
    """Read a headerless CSV table and encode it; keep a seeded subsample of ``max_rows`` if set."""
    lines = read_lines(path, skip_rows=skip_rows)
    if not lines:
        raise ScenarioError(f"{path} has no rows after skipping {skip_rows} lines")
    if max_rows and max_rows < len(lines):
        generator = rng if rng is not None else np.random.default_rng(0)
        keep = np.sort(generator.choice(len(lines), size=max_rows, replace=False))
        lines = [lines[i] for i in keep]

    # Encode through the product's own reader, from an uncompressed copy.
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_text("\n".join(lines) + "\n", encoding="utf-8")
    encoded = encode_file(scratch, schema, header=False)
    if len(encoded.codes) != len(lines):
        raise ScenarioError(
            f"{path}: encoding kept {len(encoded.codes)} of {len(lines)} rows; the split needs one code row per line"
        )
    return Table(lines=lines, codes=encoded.codes)


def split_rows(table: Table, schema: Schema, spec: SplitSpec, *, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Return one sorted array of row indices per node."""
    rows = len(table.lines)
    if rows < count * 10:
        raise ScenarioError(f"{rows} rows cannot be split over {count} nodes; use fewer nodes or more rows")
    shares = np.array(spec.shares or (1.0,) * count, dtype=np.float64)
    shares = shares / shares.sum()

    if spec.kind == "iid":
        parts = _cut(rng.permutation(rows), shares)
    elif spec.kind == "by_column":
        column = _column_index(schema, spec.column)
        order = np.lexsort((rng.random(rows), table.codes[:, column]))
        parts = _cut(order, shares)
    else:
        parts = _dirichlet(table.codes[:, _column_index(schema, spec.column)], count, spec.alpha, rng)

    small = [i for i, part in enumerate(parts) if len(part) < 10]
    if small:
        raise ScenarioError(
            f"the {spec.kind} split gave node-{small[0] + 1} only {len(parts[small[0]])} rows; "
            "raise alpha, even out shares or use fewer nodes"
        )
    return [np.sort(part) for part in parts]


def _cut(order: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    bounds = np.round(np.cumsum(shares) * len(order)).astype(int)
    bounds[-1] = len(order)
    return list(np.split(order, bounds[:-1]))


def _dirichlet(labels: np.ndarray, count: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(count)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(count, alpha))
        for node, chunk in enumerate(_cut(members, proportions)):
            parts[node].append(chunk)
    return [np.concatenate(chunks) for chunks in parts]


def _column_index(schema: Schema, column: str | None) -> int:
    if column not in schema.domain.attributes:
        raise ScenarioError(
            f"[split] column {column!r} is not in the schema; columns: {', '.join(schema.domain.attributes)}"
        )
    return schema.domain.index(column)


def write_parts(table: Table, parts: list[np.ndarray], folder: Path, names: list[str]) -> list[Path]:
    """Write each node's rows as a headerless CSV file; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in zip(names, parts):
        path = folder / f"{name}.csv"
        path.write_text("\n".join(table.lines[i] for i in part) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def describe_parts(table: Table, schema: Schema, parts: list[np.ndarray], column: str | None) -> list[dict]:
    """Return per-node row counts and, for ``column``, the share of the most common code."""
    described = []
    index = schema.domain.index(column) if column in schema.domain.attributes else None
    for part in parts:
        entry: dict = {"rows": int(len(part))}
        if index is not None:
            codes = table.codes[part, index]
            counts = np.bincount(codes, minlength=schema.domain.sizes[index])
            entry["top_code_share"] = float(counts.max() / counts.sum())
        described.append(entry)
    return described
