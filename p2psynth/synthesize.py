"""Synthetic rows for users: conditions, chunked sampling, decoding and output formats.

Shared by ``p2psynth sample`` (from a model file or through the daemon) and
the HTTP API. Rows are drawn in chunks of ``CHUNK_ROWS`` so that a large
request never keeps all rows in memory at once; chunk ``i`` uses a seed
derived from the request's seed and ``i``, so the same request always gives
the same rows.

Conditions restrict columns to values, written ``COL=VALUE`` (repeat a
column to allow several values) or ``COL in {V1, V2}``. Values are read as
the schema reads data: aliases and surrounding spaces apply, a missing marker
or ``<missing>`` selects the missing category, and a number in a numeric
column selects the bin that contains it.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import numpy as np

from p2psynth.errors import ModelError
from p2psynth.schema import MISSING_LABEL, CategoricalColumn, Schema

if TYPE_CHECKING:
    import pandas as pd  # imported on first use: a daemon that never samples saves its memory

CHUNK_ROWS = 100_000
MAX_ROWS = 100_000_000
FORMATS = ("csv", "parquet", "json")

_IN_PATTERN = re.compile(r"^\s*(?P<column>.+?)\s+in\s+\{(?P<values>.*)\}\s*$")


def parse_where(schema: Schema, expressions: Sequence[str]) -> dict[str, set[int]]:
    """Parse ``COL=VALUE`` and ``COL in {V1, V2}`` expressions into allowed codes per column."""
    return conditions_from_values(schema, split_where(expressions))


def split_where(expressions: Sequence[str]) -> dict[str, list[str]]:
    """Split ``COL=VALUE`` and ``COL in {V1, V2}`` expressions into values per column, without a schema."""
    pairs: list[tuple[str, str]] = []
    for expression in expressions:
        match = _IN_PATTERN.match(expression)
        if match:
            values = [v.strip() for v in match.group("values").split(",")]
            pairs += [(match.group("column").strip(), v) for v in values if v]
            continue
        column, separator, value = expression.partition("=")
        if not separator or not column.strip():
            raise ModelError(f"condition {expression!r} is invalid; write COL=VALUE or 'COL in {{V1, V2}}'")
        pairs.append((column.strip(), value))
    grouped: dict[str, list[str]] = {}
    for column, value in pairs:
        grouped.setdefault(column, []).append(value)
    return grouped


def conditions_from_values(schema: Schema, values_by_column: Mapping[str, Iterable[object]]) -> dict[str, set[int]]:
    """Map {column: [values]} to {column: {codes}}; raise ModelError naming an unknown column or value."""
    conditions: dict[str, set[int]] = {}
    for name, values in values_by_column.items():
        if name not in schema.names:
            raise ModelError(f"unknown column {name!r} in condition; columns: {', '.join(schema.names)}")
        column = schema.column(name)
        codes = {_value_code(column, value) for value in values}
        if not codes:
            raise ModelError(f"condition on {name!r} lists no values")
        conditions[name] = codes
    return conditions


def _value_code(column, value: object) -> int:
    text = str(value)
    stripped = text.strip() if column.strip_whitespace else text
    aliases = dict(column.aliases)
    stripped = aliases.get(stripped, stripped)
    if stripped == MISSING_LABEL or stripped in column.missing_markers:
        if column.missing_code is None:
            raise ModelError(f"column {column.name!r} has no missing category; remove the condition on missing values")
        return column.missing_code

    if isinstance(column, CategoricalColumn):
        try:
            return column.categories.index(stripped)
        except ValueError:
            shown = ", ".join(column.categories[:12]) + (", …" if len(column.categories) > 12 else "")
            raise ModelError(
                f"unknown value {text!r} for column {column.name!r}; its categories are: {shown}"
            ) from None

    labels = column.code_labels()
    if stripped in labels:
        return labels.index(stripped)
    try:
        number = float(stripped)
    except ValueError:
        raise ModelError(
            f"value {text!r} for numeric column {column.name!r} is not a number or a bin label such as {labels[0]!r}"
        ) from None
    low, high = column.bounds
    if not (math.isfinite(number) and low <= number <= high):
        raise ModelError(f"value {text!r} is outside the bounds [{low:g}, {high:g}] of column {column.name!r}")
    return int(min(np.searchsorted(column.edges, number, side="right") - 1, column.bins - 1))


def sample_chunks(
    model, schema: Schema, *, rows: int, seed: int, conditions: Mapping[str, set[int]] | None = None
) -> Iterator[pd.DataFrame]:
    """Yield decoded synthetic rows in chunks of at most CHUNK_ROWS."""
    check_rows(rows)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ModelError(f"seed {seed!r} is invalid; use a non-negative integer")
    if tuple(model.domain.attributes) != schema.names:
        raise ModelError("the model was fitted for another schema than the one given; use the network's schema")
    from p2psynth.encoding import decode_codes

    if rows == 0:
        yield decode_codes(np.zeros((0, len(schema.names)), dtype=np.int64), schema, seed=seed)
        return
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        count = min(CHUNK_ROWS, rows - start)
        chunk_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        codes = model.sample(count, seed=chunk_seed, conditions=conditions or None)
        yield decode_codes(codes, schema, seed=chunk_seed)


def sample_frame(model, schema: Schema, *, rows: int, seed: int, conditions=None) -> pd.DataFrame:
    import pandas as pd

    chunks = list(sample_chunks(model, schema, rows=rows, seed=seed, conditions=conditions))
    return pd.concat(chunks, ignore_index=True)


def check_rows(rows: object) -> int:
    if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= MAX_ROWS:
        raise ModelError(f"rows {rows!r} is invalid; use an integer from 0 to {MAX_ROWS}")
    return rows


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ModelError(f"format {name!r} is not supported; use one of {', '.join(FORMATS)}")
    return name


def format_from_path(path: Path, explicit: str | None) -> str:
    if explicit:
        return check_format(explicit)
    suffix = Path(path).suffix.lower().lstrip(".")
    known = {"csv": "csv", "parquet": "parquet", "pq": "parquet", "json": "json"}
    if suffix not in known:
        raise ModelError(
            f"cannot tell the output format from {Path(path).name!r}; name the file .csv, .parquet or .json, "
            "or pass --format"
        )
    return known[suffix]


def encode_chunks(chunks: Iterable[pd.DataFrame], fmt: str) -> Iterator[bytes]:
    """Serialize DataFrame chunks as one CSV, JSON array or Parquet byte stream."""
    check_format(fmt)
    if fmt == "csv":
        first = True
        for chunk in chunks:
            yield chunk.to_csv(index=False, header=first).encode("utf-8")
            first = False
        return
    if fmt == "json":
        yield b"["
        first = True
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            body = chunk.to_json(orient="records", force_ascii=False)[1:-1]
            yield (b"" if first else b",") + body.encode("utf-8")
            first = False
        yield b"]"
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    # NOTE: Parquet output is assembled in memory and sent at the end, because
    # the writer seeks back to write its footer offsets.
    sink = io.BytesIO()
    writer = None
    for chunk in chunks:
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(sink, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    yield sink.getvalue()


def write_rows(path: Path, chunks: Iterable[pd.DataFrame], fmt: str) -> int:
    """Write chunks to ``path`` in ``fmt``; return the number of bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb") as handle:
        for data in encode_chunks(chunks, fmt):
            handle.write(data)
            written += len(data)
    return written


def describe_conditions(schema: Schema, conditions: Mapping[str, set[int]]) -> str:
    parts = []
    for name, codes in conditions.items():
        labels = schema.column(name).code_labels()
        parts.append(f"{name} in {{{', '.join(labels[c] for c in sorted(codes))}}}")
    return json.dumps(parts)
