"""The network's table definition: columns, their domains, and a fingerprint.

Every member of a network loads the same schema file (TOML, read with the
standard library's ``tomllib``). It fixes the column order, each column's
kind and its finite domain:

- a *categorical* column lists every category it can take;
- a *numeric* column has public bounds and bin edges, and its code is the
  bin a value falls into;
- by default each column has one more code for a missing value, after the
  categories or bins, so missing data stays visible in the marginals.

Domains and bounds come from public knowledge written into this file, never
from the private data. Reading them from the data would leak it: a category
seen once, or the maximum of a column, identifies a person. The marginal
counts released later are differentially private only for this fixed
domain. ``p2psynth.schema_draft`` can write a first draft from a data file,
and the draft opens with a warning that its values must be replaced with
public knowledge.

Bins follow the convention of ``numpy.histogram``: bin ``i`` is
``[edges[i], edges[i + 1])`` and the last bin also contains the upper bound.

Fingerprint. ``Schema.fingerprint`` is the SHA-256 (hex) of a canonical
JSON encoding of the parts that give codes their meaning. These are the
schema name, column names and order, kinds, categories, bin edges, the
``integer`` flag and the missing category. ``bins = N`` is expanded to
edges, and every number is written as a float. Comments, whitespace, key
order and ``description`` texts do not change it. The input options
(``strip_whitespace``, ``missing_markers``, ``aliases``, ``out_of_domain``)
are left out on purpose. They control how one node reads its own file, so
two nodes may set them differently and still publish comparable counts.
Releases carry the fingerprint so that peers can reject releases made under
another schema.

Rejected alternative: JSON Schema or YAML files. TOML is in the standard
library since Python 3.11, allows comments, and has no implicit typing of
bare words (YAML 1.1 readers such as PyYAML read ``no`` as false, a trap for
category lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Union

from p2psynth.domain import Domain
from p2psynth.errors import SchemaError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Value of ``format_version`` that this module reads."""

MAX_COLUMN_CODES = 100_000
"""Maximum number of codes (categories or bins, plus missing) of one column.

A release carries every one-way marginal in full as int64 counts, and the
release format bounds a release at 16 MiB, so a column with more codes than
this is almost always a mistake such as a typo in ``bins``.
"""

OUT_OF_DOMAIN_POLICIES = ("error", "clamp", "missing")

_TOP_KEYS = {"format_version", "name", "description", "defaults", "columns"}
_DEFAULT_KEYS = {"strip_whitespace", "missing_markers", "missing_category", "out_of_domain"}
_COMMON_COLUMN_KEYS = {
    "name",
    "kind",
    "description",
    "missing_category",
    "out_of_domain",
    "strip_whitespace",
    "missing_markers",
    "aliases",
}
_CATEGORICAL_KEYS = _COMMON_COLUMN_KEYS | {"categories"}
_NUMERIC_KEYS = _COMMON_COLUMN_KEYS | {"bounds", "edges", "bins", "integer"}


@dataclass(frozen=True)
class CategoricalColumn:
    """A column whose codes are the positions of its categories.

    Codes ``0 .. len(categories) - 1`` are the categories in schema order;
    when ``missing_category`` is true, code ``len(categories)`` is missing.
    """

    name: str
    categories: tuple[str, ...]
    missing_category: bool = True
    out_of_domain: str = "error"
    strip_whitespace: bool = True
    missing_markers: tuple[str, ...] = ("",)
    aliases: tuple[tuple[str, str], ...] = ()
    description: str = field(default="", compare=False)
    kind: str = field(default="categorical", init=False)

    @property
    def size(self) -> int:
        """Number of codes, the missing category included."""
        return len(self.categories) + int(self.missing_category)

    @property
    def missing_code(self) -> int | None:
        """Code of a missing value, or None when the column has no missing category."""
        return len(self.categories) if self.missing_category else None

    def code_labels(self) -> list[str]:
        """Text label of each code, in code order (``<missing>`` for the missing code)."""
        labels = list(self.categories)
        if self.missing_category:
            labels.append(MISSING_LABEL)
        return labels


@dataclass(frozen=True)
class NumericColumn:
    """A column whose codes are the bins of its values.

    Codes ``0 .. len(edges) - 2`` are the bins; when ``missing_category`` is
    true, code ``len(edges) - 1`` is missing. ``integer`` declares that the
    values are whole numbers: encoding treats a fraction as outside the
    domain, and decoding draws whole numbers.
    """

    name: str
    edges: tuple[float, ...]
    integer: bool = False
    missing_category: bool = True
    out_of_domain: str = "error"
    strip_whitespace: bool = True
    missing_markers: tuple[str, ...] = ("",)
    aliases: tuple[tuple[str, str], ...] = ()
    description: str = field(default="", compare=False)
    kind: str = field(default="numeric", init=False)

    @property
    def bounds(self) -> tuple[float, float]:
        """Lower and upper bound of the values, both inclusive."""
        return self.edges[0], self.edges[-1]

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    @property
    def size(self) -> int:
        """Number of codes, the missing category included."""
        return self.bins + int(self.missing_category)

    @property
    def missing_code(self) -> int | None:
        """Code of a missing value, or None when the column has no missing category."""
        return self.bins if self.missing_category else None

    def integer_range(self, code: int) -> tuple[int, int]:
        """Return the smallest and largest whole number in bin ``code`` (integer columns)."""
        return _integer_range(self.edges, code)

    def code_labels(self) -> list[str]:
        """Text label of each code: ``[low, high)`` per bin, ``[low, high]`` for the last."""
        labels = []
        for i in range(self.bins):
            closing = "]" if i == self.bins - 1 else ")"
            labels.append(f"[{_format_number(self.edges[i])}, {_format_number(self.edges[i + 1])}{closing}")
        if self.missing_category:
            labels.append(MISSING_LABEL)
        return labels


Column = Union[CategoricalColumn, NumericColumn]

MISSING_LABEL = "<missing>"
"""Label of the missing code in ``code_labels()``."""


@dataclass(frozen=True)
class Schema:
    """A validated table definition: an ordered tuple of columns."""

    name: str
    columns: tuple[Column, ...]
    description: str = field(default="", compare=False)
    source: str = field(default="<string>", compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def domain(self) -> Domain:
        """Attribute names in schema order with their code counts (missing included)."""
        return Domain(self.names, tuple(c.size for c in self.columns))

    def column(self, name: str) -> Column:
        for candidate in self.columns:
            if candidate.name == name:
                return candidate
        raise SchemaError(
            f"schema {self.name!r} has no column {name!r}; its columns are: {', '.join(self.names)}"
        )

    def canonical_json(self) -> str:
        """Return the canonical JSON text that the fingerprint hashes."""
        return json.dumps(
            _canonical_form(self),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of ``canonical_json()``."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.columns)


def load_schema(path: str | Path) -> Schema:
    """Read and validate a schema TOML file.

    Raises SchemaError naming the file, the column and the fix when the file
    cannot be read, is not valid TOML, or breaks a schema rule.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"schema file {str(path)!r} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file {str(path)!r}: {exc}") from exc
    schema = parse_schema(text, source=str(path))
    logger.debug("loaded schema %r from %s, fingerprint %s", schema.name, path, schema.fingerprint)
    return schema


def parse_schema(text: str, *, source: str = "<string>") -> Schema:
    """Parse and validate schema TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"schema {source}: invalid TOML: {exc}") from exc
    return schema_from_dict(data, source=source)


def schema_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Schema:
    """Validate the parsed TOML document ``data`` and build a Schema."""
    where = f"schema {source}"
    _check_keys(data, _TOP_KEYS, where)

    # Top-level fields.
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise SchemaError(
            f"{where}: format_version is {version!r}; this version of p2psynth reads "
            f"format_version = {FORMAT_VERSION}, so add or correct that line at the top"
        )
    name = _require_text(data, "name", where)
    description = _optional_text(data, "description", where)

    # Defaults shared by all columns.
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SchemaError(f"{where}: 'defaults' must be a table, written [defaults]")
    _check_keys(defaults, _DEFAULT_KEYS, f"{where}, [defaults]")
    base = {
        "strip_whitespace": _optional_bool(defaults, "strip_whitespace", True, f"{where}, [defaults]"),
        "missing_markers": _markers(defaults.get("missing_markers", [""]), f"{where}, [defaults]"),
        "missing_category": _optional_bool(defaults, "missing_category", True, f"{where}, [defaults]"),
        "out_of_domain": defaults.get("out_of_domain", "error"),
    }
    if base["out_of_domain"] not in ("error", "missing"):
        raise SchemaError(
            f"{where}, [defaults]: out_of_domain = {base['out_of_domain']!r} is invalid; the default "
            f"for all columns must be 'error' or 'missing' ('clamp' applies to numeric columns only, "
            f"so set it on each numeric column)"
        )

    # Columns.
    raw_columns = data.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise SchemaError(
            f"{where}: no columns; declare each column in a [[columns]] table with name and kind"
        )
    columns = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(raw_columns, start=1):
        if not isinstance(raw, dict):
            raise SchemaError(f"{where}: columns entry {position} must be a [[columns]] table")
        column = _parse_column(raw, base, where, position)
        if column.name in seen:
            raise SchemaError(
                f"{where}: column name {column.name!r} appears twice (columns {seen[column.name]} "
                f"and {position}); rename or remove one of them"
            )
        seen[column.name] = position
        columns.append(column)

    return Schema(name=name, columns=tuple(columns), description=description, source=source)


def _parse_column(raw: dict[str, Any], base: dict[str, Any], schema_where: str, position: int) -> Column:
    # Name and kind come first so that later messages can name the column.
    name = _require_text(raw, "name", f"{schema_where}, column {position}")
    if name != name.strip():
        raise SchemaError(
            f"{schema_where}, column {position}: column name {name!r} has leading or trailing "
            f"whitespace; remove it (header names in data files are compared after stripping whitespace)"
        )
    where = f"{schema_where}, column {name!r}"
    kind = raw.get("kind")
    if kind not in ("categorical", "numeric"):
        raise SchemaError(f"{where}: kind = {kind!r} is invalid; set kind = \"categorical\" or \"numeric\"")
    _check_keys(raw, _CATEGORICAL_KEYS if kind == "categorical" else _NUMERIC_KEYS, where)

    # Options shared by both kinds, falling back to [defaults].
    options = {
        "description": _optional_text(raw, "description", where),
        "strip_whitespace": _optional_bool(raw, "strip_whitespace", base["strip_whitespace"], where),
        "missing_category": _optional_bool(raw, "missing_category", base["missing_category"], where),
        "missing_markers": (
            _markers(raw["missing_markers"], where) if "missing_markers" in raw else base["missing_markers"]
        ),
        "out_of_domain": raw.get("out_of_domain", base["out_of_domain"]),
    }
    policy = options["out_of_domain"]
    if policy not in OUT_OF_DOMAIN_POLICIES:
        raise SchemaError(
            f"{where}: out_of_domain = {policy!r} is invalid; use one of {', '.join(OUT_OF_DOMAIN_POLICIES)}"
        )
    if policy == "missing" and not options["missing_category"]:
        raise SchemaError(
            f"{where}: out_of_domain = 'missing' needs a missing category, but missing_category "
            f"is false; set missing_category = true or choose another out_of_domain policy"
        )
    if options["strip_whitespace"]:
        for marker in options["missing_markers"]:
            if marker != marker.strip():
                raise SchemaError(
                    f"{where}: missing marker {marker!r} has surrounding whitespace, which "
                    f"strip_whitespace removes from every value, so it can never match; write {marker.strip()!r}"
                )
    aliases = _aliases(raw.get("aliases", {}), options, where)

    if kind == "categorical":
        return _parse_categorical(raw, name, options, aliases, where)
    return _parse_numeric(raw, name, options, aliases, where)


def _parse_categorical(
    raw: dict[str, Any], name: str, options: dict[str, Any], aliases: dict[str, str], where: str
) -> CategoricalColumn:
    categories = raw.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise SchemaError(
            f"{where}: categories must be a list of strings, for example categories = [\"yes\", \"no\"]; "
            f"write numbers in quotes"
        )
    if not categories:
        raise SchemaError(f"{where}: categories is empty; list every value the column can take")
    if options["out_of_domain"] == "clamp":
        raise SchemaError(
            f"{where}: out_of_domain = 'clamp' applies to numeric columns only; "
            f"use 'error' or 'missing' for a categorical column"
        )

    # Each category must be reachable and distinct from the other text options.
    first_position: dict[str, int] = {}
    for position, category in enumerate(categories):
        if category in first_position:
            raise SchemaError(
                f"{where}: category {category!r} is listed twice (positions {first_position[category]} "
                f"and {position}); remove the duplicate"
            )
        first_position[category] = position
        if options["strip_whitespace"] and category != category.strip():
            raise SchemaError(
                f"{where}: category {category!r} has surrounding whitespace, which strip_whitespace "
                f"removes from every value, so it can never match; write {category.strip()!r}"
            )
        if category in options["missing_markers"]:
            raise SchemaError(
                f"{where}: {category!r} is both a category and a missing marker; remove it from "
                f"one of the two (set missing_markers on this column to override the defaults)"
            )
    for alias, target in aliases.items():
        if alias in first_position:
            raise SchemaError(
                f"{where}: alias {alias!r} is also a category; remove the alias or the category"
            )
        if target not in first_position:
            raise SchemaError(
                f"{where}: alias {alias!r} maps to {target!r}, which is not a category; "
                f"map it to one of the listed categories"
            )

    _check_size(len(categories) + int(options["missing_category"]), where)
    return CategoricalColumn(
        name=name,
        categories=tuple(categories),
        aliases=tuple(sorted(aliases.items())),
        **options,
    )


def _parse_numeric(
    raw: dict[str, Any], name: str, options: dict[str, Any], aliases: dict[str, str], where: str
) -> NumericColumn:
    integer = _optional_bool(raw, "integer", False, where)

    # Bounds: two finite numbers, lower below upper.
    bounds = raw.get("bounds")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise SchemaError(
            f"{where}: bounds must be two numbers [lower, upper] from public knowledge, "
            f"for example bounds = [0, 120]; got {bounds!r}"
        )
    lower, upper = (float(b) for b in bounds)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise SchemaError(f"{where}: bounds {bounds!r} must be finite numbers")
    if not lower < upper:
        raise SchemaError(
            f"{where}: bounds {bounds!r} must have lower < upper; a column with one value "
            f"can be a categorical column with one category"
        )

    # Edges: explicit, or equal-width bins over the bounds.
    if ("edges" in raw) == ("bins" in raw):
        raise SchemaError(
            f"{where}: set exactly one of edges = [...] (explicit bin edges) or bins = N "
            f"(N equal-width bins between the bounds)"
        )
    if "bins" in raw:
        edges = _equal_width_edges(raw["bins"], lower, upper, where)
    else:
        edges = _explicit_edges(raw["edges"], lower, upper, where)
    if integer:
        if max(abs(lower), abs(upper)) > 2**53:
            raise SchemaError(
                f"{where}: bounds {bounds!r} of an integer column must lie within -2**53 .. 2**53, "
                f"where every whole number is an exact float; widen the bins or drop integer = true"
            )
        for i in range(len(edges) - 1):
            low_int, high_int = _integer_range(edges, i)
            if low_int > high_int:
                raise SchemaError(
                    f"{where}: bin {i} [{_format_number(edges[i])}, {_format_number(edges[i + 1])}) contains "
                    f"no whole number, but the column is integer; merge it with a neighbour or use fewer bins"
                )

    # Aliases on a numeric column must name a number inside the bounds.
    for alias, target in aliases.items():
        try:
            value = float(target)
        except ValueError:
            value = math.nan
        if not (lower <= value <= upper):
            raise SchemaError(
                f"{where}: alias {alias!r} maps to {target!r}, which is not a number within the "
                f"bounds [{_format_number(lower)}, {_format_number(upper)}]; correct the alias"
            )

    _check_size(len(edges) - 1 + int(options["missing_category"]), where)
    return NumericColumn(
        name=name,
        edges=tuple(edges),
        integer=integer,
        aliases=tuple(sorted(aliases.items())),
        **options,
    )


def _equal_width_edges(bins: Any, lower: float, upper: float, where: str) -> list[float]:
    """Return ``bins + 1`` equally spaced edges, computed in plain IEEE arithmetic.

    The formula is fixed here (not numpy.linspace) so that the expanded edges,
    and with them the fingerprint, cannot change with a library version.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise SchemaError(f"{where}: bins = {bins!r} is invalid; it must be a whole number of at least 1")
    _check_size(bins, where)
    width = upper - lower
    inner = [lower + width * i / bins for i in range(1, bins)]
    return [lower, *inner, upper]


def _explicit_edges(edges: Any, lower: float, upper: float, where: str) -> list[float]:
    if not (isinstance(edges, list) and len(edges) >= 2 and all(_is_number(e) for e in edges)):
        raise SchemaError(
            f"{where}: edges must be a list of at least two numbers, from the lower bound "
            f"to the upper bound; got {edges!r}"
        )
    values = [float(e) for e in edges]
    for i in range(len(values) - 1):
        if not values[i] < values[i + 1]:
            raise SchemaError(
                f"{where}: edges must be strictly increasing, but edge {i} is {edges[i]!r} and "
                f"edge {i + 1} is {edges[i + 1]!r}; sort them and remove duplicates"
            )
    if values[0] != lower or values[-1] != upper:
        raise SchemaError(
            f"{where}: edges run from {edges[0]!r} to {edges[-1]!r} but bounds are "
            f"[{_format_number(lower)}, {_format_number(upper)}]; the first edge must equal the "
            f"lower bound and the last edge the upper bound"
        )
    return values


def _integer_range(edges: tuple[float, ...] | list[float], code: int) -> tuple[int, int]:
    low = math.ceil(edges[code])
    high_edge = edges[code + 1]
    last = code == len(edges) - 2
    if not last and float(high_edge).is_integer():
        high = int(high_edge) - 1
    else:
        high = math.floor(high_edge)
    return low, high


def _aliases(raw: Any, options: dict[str, Any], where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise SchemaError(
            f"{where}: aliases must be a table of strings, for example aliases = {{ \">50K.\" = \">50K\" }}"
        )
    for alias in raw:
        if options["strip_whitespace"] and alias != alias.strip():
            raise SchemaError(
                f"{where}: alias {alias!r} has surrounding whitespace, which strip_whitespace removes "
                f"from every value, so it can never match; write {alias.strip()!r}"
            )
        if alias in options["missing_markers"]:
            raise SchemaError(
                f"{where}: {alias!r} is both an alias and a missing marker; remove it from one of the two"
            )
        if raw[alias] in raw:
            raise SchemaError(
                f"{where}: alias {alias!r} maps to {raw[alias]!r}, which is itself an alias; "
                f"map it to the final value directly"
            )
    return dict(raw)


def _markers(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise SchemaError(
            f"{where}: missing_markers must be a list of strings, for example missing_markers = [\"\", \"?\"]"
        )
    if len(set(raw)) != len(raw):
        duplicates = sorted({m for m in raw if raw.count(m) > 1})
        raise SchemaError(f"{where}: missing_markers lists {duplicates!r} more than once; remove the duplicates")
    return tuple(raw)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SchemaError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys here are: {', '.join(sorted(allowed))}"
        )


def _check_size(codes: int, where: str) -> None:
    if codes > MAX_COLUMN_CODES:
        raise SchemaError(
            f"{where}: {codes} codes is more than the maximum of {MAX_COLUMN_CODES} per column; "
            f"use fewer categories or bins"
        )


def _require_text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{where}: {key} must be a non-empty string; got {value!r}")
    return value


def _optional_text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise SchemaError(f"{where}: {key} must be a string; got {value!r}")
    return value


def _optional_bool(table: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise SchemaError(f"{where}: {key} must be true or false; got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _canonical_form(schema: Schema) -> dict[str, Any]:
    columns = []
    for column in schema.columns:
        entry: dict[str, Any] = {
            "name": column.name,
            "kind": column.kind,
            "missing_category": column.missing_category,
        }
        if isinstance(column, CategoricalColumn):
            entry["categories"] = list(column.categories)
        else:
            # Adding 0.0 turns -0.0 into 0.0, so both spellings hash the same.
            entry["edges"] = [float(e) + 0.0 for e in column.edges]
            entry["integer"] = column.integer
        columns.append(entry)
    return {"format": f"p2psynth-schema/{FORMAT_VERSION}", "name": schema.name, "columns": columns}
