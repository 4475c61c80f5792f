"""A first draft of a schema TOML file, read from a data file.

Writing a schema by hand for a wide table is tedious. So ``draft_schema``
reads a CSV or Parquet file and writes a schema that fits it, with the
column names, a kind per column, the categories seen and the bounds seen.

That draft leaks the data it was read from. A category that occurs once, or
the minimum or maximum of a column, can identify a person, and the marginal
counts that the network releases are differentially private only for a
domain that does not depend on the data. So the draft opens with a warning,
and every line with a value read from the data has a comment saying so.
Before the network uses the file, the operator must replace each list and
bound with public knowledge (code books, standards, published ranges).

Kind rules: a column is numeric when every value that is not a missing
marker is a finite number and it has more than ``max_categories`` distinct
values. It is integer when all those numbers are whole. Every other column is
categorical. A column with more than ``max_listed_categories`` distinct
values is most likely an identifier or free text: the draft leaves it out
and says so in a comment.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from p2psynth.encoding import HeaderOption, NUMBER_PATTERN, as_text, distinct_text, first_row_text, read_raw_table
from p2psynth.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

WARNING = """\
# WARNING: DRAFT READ FROM PRIVATE DATA. DO NOT USE OR SHARE IT AS IT IS.
#
# Every category list and every numeric bound below was read from the data
# file itself. A rare category or an extreme value can identify a person, so
# this file leaks private data, and releases made with it are not
# differentially private. Before the network uses this schema, replace each
# line marked "read from the data" with public knowledge (code books,
# standards, published ranges), add the categories that other members'
# tables may hold, and choose bin edges that suit the analysis.
"""

_FROM_DATA = "  # read from the data: replace with public knowledge"


def draft_schema(
    path: str | Path,
    *,
    bins: int = 10,
    max_categories: int = 20,
    max_listed_categories: int = 1000,
    header: HeaderOption = "auto",
    skip_rows: int = 0,
    delimiter: str = ",",
    missing_markers: Sequence[str] = ("", "?"),
    column_names: Sequence[str] | None = None,
    name: str | None = None,
) -> str:
    """Read a CSV or Parquet file and return a draft schema as TOML text.

    ``bins`` is the number of equal-width bins of a numeric column (fewer for
    an integer column with a narrow range). ``max_categories`` is the number
    of distinct numbers up to which a numeric-looking column is drafted as
    categorical. ``header`` for CSV: True, False, or "auto" (the first row is
    a header when its values are distinct, non-empty, none is a number, and
    none occurs again in its column). ``column_names`` replaces the names
    from the header or the default names ``column_1``, ``column_2``, ...
    ``name`` defaults to the file name without suffixes. Raises DataError
    when the file cannot be read and ConfigError for invalid options.
    """
    path = Path(path)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ConfigError(f"bins={bins!r} is invalid; use a whole number of at least 1")
    for option, value in (("max_categories", max_categories), ("max_listed_categories", max_listed_categories)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{option}={value!r} is invalid; use a whole number of at least 1")
    if not (header is True or header is False or header == "auto"):
        raise ConfigError(f"header={header!r} is invalid; use True, False or 'auto'")
    missing_markers = list(dict.fromkeys(missing_markers))
    markers = set(missing_markers)

    # Read and split off the header.
    table, is_csv = read_raw_table(path, skip_rows=skip_rows, delimiter=delimiter)
    if is_csv:
        names, table = _split_header(table, path, header=header)
    else:
        names = [str(n) for n in table.column_names]
    if column_names is not None:
        if len(column_names) != len(names):
            raise ConfigError(
                f"column_names has {len(column_names)} names but {path} has {len(names)} columns; "
                f"give one name per column"
            )
        names = [str(n) for n in column_names]
    if table.num_rows == 0:
        raise DataError(f"data file {path} has no data rows; a draft needs rows to read values from")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"data file {path} has duplicate column names {duplicates}; rename them first")

    # Document head, then one [[columns]] table per column.
    schema_name = name or path.name.split(".")[0] or "draft"
    lines = [
        WARNING,
        f"# Draft written by p2psynth from the file {path.name}.",
        "",
        "format_version = 1",
        f"name = {_toml_string(schema_name)}",
        f"description = {_toml_string('DRAFT: replace values read from the data with public knowledge')}",
        "",
        "[defaults]",
        "strip_whitespace = true",
        f"missing_markers = [{', '.join(_toml_string(m) for m in missing_markers)}]",
        "missing_category = true",
        'out_of_domain = "error"',
    ]
    for position, column_name in enumerate(names):
        lines.append("")
        lines.extend(
            _draft_column(
                table.column(position),
                column_name,
                markers=markers,
                bins=bins,
                max_categories=max_categories,
                max_listed_categories=max_listed_categories,
                source=str(path),
            )
        )
    logger.info("drafted a schema of %d columns from %s", len(names), path)
    return "\n".join(lines) + "\n"


def _split_header(table: pa.Table, path: Path, *, header: HeaderOption) -> tuple[list[str], pa.Table]:
    if table.num_rows == 0:
        raise DataError(f"data file {path} has no rows")
    first = first_row_text(table)
    has_header = _looks_like_header(table, first) if header == "auto" else bool(header)
    if has_header:
        return first, table.slice(1)
    return [f"column_{i + 1}" for i in range(table.num_columns)], table


def _looks_like_header(table: pa.Table, first: list[str]) -> bool:
    """Guess whether the first CSV row contains column names (see ``draft_schema``)."""
    if any(value == "" for value in first) or len(set(first)) != len(first):
        return False
    if any(_is_number(value) for value in first):
        return False
    rest = table.slice(1)
    for position, value in enumerate(first):
        column = pc.utf8_trim_whitespace(pc.cast(rest.column(position), pa.string()))
        if pc.any(pc.equal(column, value)).as_py():
            return False
    return True


def _draft_column(
    values: pa.ChunkedArray,
    name: str,
    *,
    markers: set[str],
    bins: int,
    max_categories: int,
    max_listed_categories: int,
    source: str,
) -> list[str]:
    distinct = _distinct_values(values, markers, source=source, name=name)
    head = ["[[columns]]", f"name = {_toml_string(name)}"]

    # No value at all: the operator has to list the categories.
    if not distinct:
        return head + [
            'kind = "categorical"',
            "# TODO: the column holds only missing values; list its categories from public knowledge.",
            "categories = []",
        ]

    numbers = _finite_numbers(distinct)
    if numbers is not None and len(numbers) > max_categories:
        return head + _numeric_lines(numbers, bins=bins)

    if len(distinct) > max_listed_categories:
        return [
            f"# Column {_toml_string(name)} was left out: it has more than {max_listed_categories} distinct",
            "# values, so it is most likely an identifier or free text. Group it into public",
            "# categories, or leave it out of the schema.",
        ]
    ordered = sorted(distinct, key=float) if numbers is not None else sorted(distinct)
    return head + ['kind = "categorical"', "categories = [" + _FROM_DATA] + _wrapped(ordered) + ["]"]


def _distinct_values(values: pa.ChunkedArray, markers: set[str], *, source: str, name: str) -> list[str]:
    """Return the distinct stripped values that occur, missing markers and nulls excluded."""
    dictionary, indices = distinct_text(as_text(values, name, source=source))
    occurrences = np.bincount(indices, minlength=len(dictionary) + 1)[: len(dictionary)]
    stripped = pc.utf8_trim_whitespace(dictionary).to_pylist()
    seen = {value for value, count in zip(stripped, occurrences) if count > 0 and value not in markers}
    return list(seen)


def _finite_numbers(distinct: list[str]) -> np.ndarray | None:
    """Return the values as floats when all are finite numbers, else None."""
    text = pa.array(distinct, type=pa.string())
    if not pc.all(pc.match_substring_regex(text, NUMBER_PATTERN, ignore_case=True)).as_py():
        return None
    numbers = pc.cast(text, pa.float64()).to_numpy()
    if not np.isfinite(numbers).all():
        return None
    return numbers


def _numeric_lines(numbers: np.ndarray, *, bins: int) -> list[str]:
    lower, upper = float(numbers.min()), float(numbers.max())
    integer = bool(np.all(numbers == np.floor(numbers)))
    if integer:
        # Equal-width bins at least 1 wide each contain a whole number.
        bins = max(1, min(bins, int(upper - lower)))
    return [
        'kind = "numeric"',
        f"integer = {'true' if integer else 'false'}",
        f"bounds = [{_toml_number(lower)}, {_toml_number(upper)}]" + _FROM_DATA,
        f"bins = {bins}",
        'out_of_domain = "clamp"',
    ]


def _wrapped(values: list[str], width: int = 76) -> list[str]:
    lines, current = [], "   "
    for value in values:
        item = f" {_toml_string(value)},"
        if len(current) + len(item) > width and current.strip():
            lines.append(current)
            current = "   "
        current += item
    if current.strip():
        lines.append(current)
    return lines


def _toml_string(value: str) -> str:
    """Return ``value`` as a TOML basic string.

    JSON string escapes are valid TOML escapes; TOML also forbids a raw
    U+007F (DEL), which JSON leaves unescaped.
    """
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_number(value: float) -> str:
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
