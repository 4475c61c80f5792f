"""Tests of schema loading, validation, domains and fingerprints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from p2psynth.errors import SchemaError
from p2psynth.schema import (
    MAX_COLUMN_CODES,
    CategoricalColumn,
    NumericColumn,
    load_schema,
    parse_schema,
)

REPOSITORY = Path(__file__).resolve().parents[1]
ADULT_SCHEMA = REPOSITORY / "node_config" / "adult.schema.toml"
ADULT_CODED_SCHEMA = REPOSITORY / "node_config" / "adult-coded.schema.toml"
DATA_FOLDERS = [REPOSITORY / "data" / "adult", REPOSITORY / "data" / "adult-coded"]

HEAD = """
format_version = 1
name = "test"
"""

COLUMNS = """
[[columns]]
name = "colour"
kind = "categorical"
categories = ["red", "green", "blue"]

[[columns]]
name = "age"
kind = "numeric"
integer = true
bounds = [0, 100]
edges = [0, 18, 65, 100]
"""


def schema_text(columns: str = COLUMNS, head: str = HEAD) -> str:
    return head + columns


def find_data_file(name: str) -> Path:
    for folder in DATA_FOLDERS:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    pytest.fail(f"{name} not found in data/adult or data/adult-coded; the repository ships it")


# ---------------------------------------------------------------------------
# Loading and domains


def test_minimal_schema_loads():
    schema = parse_schema(schema_text())

    assert schema.names == ("colour", "age")
    colour, age = schema.columns
    assert isinstance(colour, CategoricalColumn)
    assert colour.categories == ("red", "green", "blue")
    assert colour.missing_code == 3
    assert isinstance(age, NumericColumn)
    assert age.edges == (0.0, 18.0, 65.0, 100.0)
    assert age.bounds == (0.0, 100.0)
    assert age.missing_code == 3


def test_domain_counts_missing_category():
    schema = parse_schema(schema_text())

    domain = schema.domain
    assert domain.attributes == ("colour", "age")
    assert domain.sizes == (4, 4)


def test_missing_category_can_be_turned_off():
    text = schema_text(COLUMNS.replace('kind = "categorical"', 'kind = "categorical"\nmissing_category = false'))
    schema = parse_schema(text)

    assert schema.domain.sizes == (3, 4)
    assert schema.column("colour").missing_code is None


def test_defaults_apply_to_columns():
    head = HEAD + '[defaults]\nmissing_markers = ["?", "NA"]\nstrip_whitespace = false\nout_of_domain = "missing"\n'
    schema = parse_schema(schema_text(head=head))

    colour = schema.column("colour")
    assert colour.missing_markers == ("?", "NA")
    assert colour.strip_whitespace is False
    assert colour.out_of_domain == "missing"


def test_column_options_override_defaults():
    head = HEAD + '[defaults]\nmissing_markers = ["?"]\n'
    columns = COLUMNS.replace('kind = "categorical"', 'kind = "categorical"\nmissing_markers = ["n/a"]')
    schema = parse_schema(schema_text(columns, head))

    assert schema.column("colour").missing_markers == ("n/a",)
    assert schema.column("age").missing_markers == ("?",)


def test_bins_give_equal_width_edges():
    columns = '[[columns]]\nname = "x"\nkind = "numeric"\nbounds = [0, 1]\nbins = 4\n'
    schema = parse_schema(schema_text(columns))

    assert schema.column("x").edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert schema.domain.sizes == (5,)


def test_integer_ranges_of_bins():
    schema = parse_schema(schema_text())
    age = schema.column("age")

    assert age.integer_range(0) == (0, 17)
    assert age.integer_range(1) == (18, 64)
    # The last bin also contains the upper bound.
    assert age.integer_range(2) == (65, 100)


def test_code_labels():
    schema = parse_schema(schema_text())

    assert schema.column("colour").code_labels() == ["red", "green", "blue", "<missing>"]
    assert schema.column("age").code_labels() == ["[0, 18)", "[18, 65)", "[65, 100]", "<missing>"]


def test_unknown_column_lookup_names_columns():
    schema = parse_schema(schema_text())

    with pytest.raises(SchemaError, match="no column 'weight'.*colour, age"):
        schema.column("weight")


def test_adult_schema_loads():
    schema = load_schema(ADULT_SCHEMA)

    assert schema.names == (
        "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
        "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
        "native-country", "income",
    )
    assert len(schema.column("workclass").categories) == 8
    assert len(schema.column("native-country").categories) == 41
    assert schema.column("age").bounds == (17.0, 90.0)
    assert schema.column("hours-per-week").bounds == (1.0, 99.0)
    assert schema.column("capital-gain").bounds == (0.0, 99999.0)
    assert dict(schema.column("income").aliases) == {">50K.": ">50K", "<=50K.": "<=50K"}


def test_adult_schema_gives_each_education_level_a_bin():
    education = load_schema(ADULT_SCHEMA).column("education-num")

    assert [education.integer_range(i) for i in range(education.bins)] == [(n, n) for n in range(1, 17)]


def test_adult_schema_isolates_capital_gain_top_code():
    gain = load_schema(ADULT_SCHEMA).column("capital-gain")

    assert gain.integer_range(0) == (0, 0)
    assert gain.integer_range(gain.bins - 1) == (99999, 99999)


def test_coded_schema_matches_published_domain():
    domain_file = find_data_file("adult-domain.json")
    expected = json.loads(domain_file.read_text(encoding="utf-8"))

    schema = load_schema(ADULT_CODED_SCHEMA)

    assert schema.domain.to_dict() == expected
    assert list(schema.domain.attributes) == list(expected)


# ---------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_is_sha256_hex():
    fingerprint = parse_schema(schema_text()).fingerprint

    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)


def test_fingerprint_ignores_layout_and_comments():
    reformatted = """
# A comment at the top.
name = "test"          # key order differs
format_version = 1

[[columns]]
categories = [
    "red",   # one per line
    "green",
    "blue",
]
kind = "categorical"
name = "colour"
description = "descriptions do not count"

[[columns]]
edges = [0.0, 18.0, 65.0, 100.0]
bounds = [0.0, 100.0]
integer = true
kind = "numeric"
name = "age"
"""
    assert parse_schema(reformatted).fingerprint == parse_schema(schema_text()).fingerprint


def test_fingerprint_equal_for_bins_and_same_edges():
    with_bins = '[[columns]]\nname = "x"\nkind = "numeric"\nbounds = [0, 8]\nbins = 4\n'
    with_edges = '[[columns]]\nname = "x"\nkind = "numeric"\nbounds = [0, 8]\nedges = [0, 2, 4, 6, 8]\n'

    assert parse_schema(schema_text(with_bins)).fingerprint == parse_schema(schema_text(with_edges)).fingerprint


def test_fingerprint_ignores_input_options():
    head = HEAD + '[defaults]\nmissing_markers = ["?", ""]\nstrip_whitespace = false\nout_of_domain = "missing"\n'
    columns = COLUMNS.replace(
        'categories = ["red", "green", "blue"]',
        'categories = ["red", "green", "blue"]\naliases = { "Red" = "red" }',
    ).replace("integer = true", 'integer = true\nout_of_domain = "clamp"')

    assert parse_schema(schema_text(columns, head)).fingerprint == parse_schema(schema_text()).fingerprint


def test_adult_fingerprint_stable_across_loads():
    assert load_schema(ADULT_SCHEMA).fingerprint == load_schema(ADULT_SCHEMA).fingerprint
    assert load_schema(ADULT_SCHEMA).fingerprint != load_schema(ADULT_CODED_SCHEMA).fingerprint


SEMANTIC_CHANGES = {
    "schema name": (HEAD, HEAD.replace('"test"', '"test2"')),
    "column name": ('name = "colour"', 'name = "color"'),
    "category added": ('"blue"]', '"blue", "black"]'),
    "category order": ('["red", "green", "blue"]', '["green", "red", "blue"]'),
    "category spelling": ('"green"', '"Green"'),
    "edge moved": ("edges = [0, 18, 65, 100]", "edges = [0, 21, 65, 100]"),
    "edge added": ("edges = [0, 18, 65, 100]", "edges = [0, 18, 40, 65, 100]"),
    "bounds widened": (
        "bounds = [0, 100]\nedges = [0, 18, 65, 100]",
        "bounds = [0, 120]\nedges = [0, 18, 65, 120]",
    ),
    "integer flag": ("integer = true", "integer = false"),
    "missing category off": ('kind = "numeric"', 'kind = "numeric"\nmissing_category = false'),
}


@pytest.mark.parametrize("change", list(SEMANTIC_CHANGES))
def test_fingerprint_changes_with_meaning(change):
    old, new = SEMANTIC_CHANGES[change]
    original = schema_text()
    assert old in original

    changed = original.replace(old, new, 1)

    assert parse_schema(changed).fingerprint != parse_schema(original).fingerprint


def test_fingerprint_changes_with_column_order():
    first, second = COLUMNS.split("\n[[columns]]\nname = \"age\"")
    swapped = '\n[[columns]]\nname = "age"' + second + first

    assert parse_schema(schema_text(swapped)).names == ("age", "colour")
    assert parse_schema(schema_text(swapped)).fingerprint != parse_schema(schema_text()).fingerprint


# ---------------------------------------------------------------------------
# Validation: each broken schema raises SchemaError naming the column and fix


def numeric(body: str) -> str:
    return schema_text('[[columns]]\nname = "x"\nkind = "numeric"\n' + body)


def categorical(body: str) -> str:
    return schema_text('[[columns]]\nname = "c"\nkind = "categorical"\n' + body)


INVALID = {
    "not toml": ("name = ", ["invalid TOML"]),
    "no format version": ('name = "t"\n' + COLUMNS, ["format_version", "format_version = 1"]),
    "unknown top key": (schema_text() + '\ncolour = "x"\n', ["unknown key 'colour'", "allowed keys"]),
    "no columns": (HEAD, ["no columns", "[[columns]]"]),
    "unknown column key": (
        categorical('categories = ["a"]\ncategory = ["b"]\n'),
        ["column 'c'", "unknown key 'category'", "categories"],
    ),
    "unknown defaults key": (HEAD + "[defaults]\nstrip = true\n" + COLUMNS, ["[defaults]", "unknown key 'strip'"]),
    "duplicate column": (schema_text(COLUMNS + COLUMNS), ["'colour' appears twice", "columns 1 and 3"]),
    "bad kind": (
        schema_text('[[columns]]\nname = "c"\nkind = "text"\n'),
        ["column 'c'", "kind = 'text'", "categorical"],
    ),
    "empty name": (schema_text('[[columns]]\nname = ""\nkind = "categorical"\n'), ["column 1", "name"]),
    "name with spaces around": (
        schema_text('[[columns]]\nname = " c"\nkind = "categorical"\ncategories = ["a"]\n'),
        ["' c'", "whitespace"],
    ),
    "empty categories": (categorical("categories = []\n"), ["column 'c'", "categories is empty"]),
    "unquoted categories": (categorical("categories = [1, 2]\n"), ["column 'c'", "list of strings", "quotes"]),
    "duplicate category": (
        categorical('categories = ["a", "b", "a"]\n'),
        ["column 'c'", "'a' is listed twice", "positions 0 and 2"],
    ),
    "category with spaces around": (categorical('categories = ["a "]\n'), ["column 'c'", "'a '", "write 'a'"]),
    "category is a marker": (categorical('categories = ["a", ""]\n'), ["column 'c'", "missing marker"]),
    "clamp on categorical": (
        categorical('categories = ["a"]\nout_of_domain = "clamp"\n'),
        ["column 'c'", "numeric columns only"],
    ),
    "unknown policy": (categorical('categories = ["a"]\nout_of_domain = "drop"\n'), ["column 'c'", "'drop'"]),
    "missing policy without category": (
        categorical('categories = ["a"]\nout_of_domain = "missing"\nmissing_category = false\n'),
        ["column 'c'", "missing_category"],
    ),
    "default clamp": (HEAD + '[defaults]\nout_of_domain = "clamp"\n' + COLUMNS, ["[defaults]", "numeric column"]),
    "alias to unknown category": (
        categorical('categories = ["a"]\naliases = { "A" = "b" }\n'),
        ["column 'c'", "'A'", "'b'", "not a category"],
    ),
    "alias is category": (
        categorical('categories = ["a", "b"]\naliases = { "a" = "b" }\n'),
        ["column 'c'", "alias 'a' is also a category"],
    ),
    "alias chain": (
        categorical('categories = ["a"]\naliases = { "x" = "y", "y" = "a" }\n'),
        ["column 'c'", "itself an alias"],
    ),
    "alias is marker": (
        categorical('categories = ["a"]\naliases = { "?" = "a" }\nmissing_markers = ["?"]\n'),
        ["column 'c'", "alias and a missing marker"],
    ),
    "duplicate marker": (
        categorical('categories = ["a"]\nmissing_markers = ["?", "?"]\n'),
        ["column 'c'", "'?'", "more than once"],
    ),
    "marker with spaces around": (
        categorical('categories = ["a"]\nmissing_markers = [" ?"]\n'),
        ["column 'c'", "' ?'", "write '?'"],
    ),
    "no bounds": (numeric("edges = [0, 1]\n"), ["column 'x'", "bounds must be two numbers"]),
    "bounds reversed": (numeric("bounds = [5, 1]\nbins = 2\n"), ["column 'x'", "lower < upper"]),
    "bounds equal": (numeric("bounds = [1, 1]\nbins = 2\n"), ["column 'x'", "lower < upper", "categorical"]),
    "bounds infinite": (numeric("bounds = [0, inf]\nbins = 2\n"), ["column 'x'", "finite"]),
    "edges and bins": (numeric("bounds = [0, 2]\nbins = 2\nedges = [0, 1, 2]\n"), ["column 'x'", "exactly one"]),
    "neither edges nor bins": (numeric("bounds = [0, 2]\n"), ["column 'x'", "exactly one"]),
    "zero bins": (numeric("bounds = [0, 2]\nbins = 0\n"), ["column 'x'", "bins = 0"]),
    "fractional bins": (numeric("bounds = [0, 2]\nbins = 2.5\n"), ["column 'x'", "bins = 2.5"]),
    "unsorted edges": (
        numeric("bounds = [0, 10]\nedges = [0, 5, 3, 10]\n"),
        ["column 'x'", "strictly increasing", "edge 1 is 5", "edge 2 is 3"],
    ),
    "duplicate edges": (numeric("bounds = [0, 10]\nedges = [0, 5, 5, 10]\n"), ["column 'x'", "remove duplicates"]),
    "one edge": (numeric("bounds = [0, 10]\nedges = [0]\n"), ["column 'x'", "at least two"]),
    "edges miss bounds": (
        numeric("bounds = [0, 10]\nedges = [1, 5, 10]\n"),
        ["column 'x'", "bounds are [0, 10]", "first edge must equal the lower bound"],
    ),
    "integer bin without whole number": (
        numeric("integer = true\nbounds = [0, 2]\nedges = [0, 0.5, 0.9, 2]\n"),
        ["column 'x'", "bin 1", "no whole number"],
    ),
    "numeric alias not a number": (
        numeric('bounds = [0, 2]\nbins = 2\naliases = { "none" = "zero" }\n'),
        ["column 'x'", "'zero'", "not a number"],
    ),
    "numeric alias outside bounds": (
        numeric('bounds = [0, 2]\nbins = 2\naliases = { "lots" = "5" }\n'),
        ["column 'x'", "'5'", "within the bounds"],
    ),
    "too many codes": (
        numeric(f"bounds = [0, 1]\nbins = {MAX_COLUMN_CODES + 1}\n"),
        ["column 'x'", "maximum", str(MAX_COLUMN_CODES)],
    ),
    "integer bounds too large": (
        numeric("integer = true\nbounds = [0, 1e17]\nbins = 2\n"),
        ["column 'x'", "2**53"],
    ),
    "non-boolean flag": (numeric("integer = 1\nbounds = [0, 2]\nbins = 2\n"), ["column 'x'", "integer", "true or false"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_schema_rejected(case):
    text, fragments = INVALID[case]

    with pytest.raises(SchemaError) as raised:
        parse_schema(text, source="broken.toml")

    message = str(raised.value)
    assert "broken.toml" in message
    for fragment in fragments:
        assert fragment in message


def test_missing_schema_file(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        load_schema(tmp_path / "absent.toml")


def test_load_schema_from_file(tmp_path):
    path = tmp_path / "t.schema.toml"
    path.write_text(schema_text(), encoding="utf-8")

    schema = load_schema(path)

    assert schema.source == str(path)
    assert schema.fingerprint == parse_schema(schema_text()).fingerprint


def test_unicode_names_and_categories():
    columns = (
        '[[columns]]\nname = "Größe > 50 €"\nkind = "categorical"\n'
        'categories = ["groß", "klein", "日本"]\n'
    )
    schema = parse_schema(schema_text(columns))

    assert schema.names == ("Größe > 50 €",)
    assert schema.column("Größe > 50 €").categories == ("groß", "klein", "日本")
    assert schema.fingerprint != parse_schema(schema_text(columns.replace("日本", "中国"))).fingerprint
