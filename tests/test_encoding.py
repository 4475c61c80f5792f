"""Tests of encoding tables to codes, the load report, and decoding codes to values."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psynth.encoding import decode_codes, encode_file, encode_frame
from p2psynth.errors import ConfigError, DataError, SchemaError
from p2psynth.schema import load_schema, parse_schema

REPOSITORY = Path(__file__).resolve().parents[1]
ADULT_SCHEMA = REPOSITORY / "node_config" / "adult.schema.toml"
ADULT_CODED_SCHEMA = REPOSITORY / "node_config" / "adult-coded.schema.toml"
DATA_FOLDERS = [REPOSITORY / "data" / "adult", REPOSITORY / "data" / "adult-coded"]

ADULT_NAMES = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
    "native-country", "income",
)


def find_data_file(name: str) -> Path:
    for folder in DATA_FOLDERS:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.exists():
                return candidate
    pytest.fail(f"{name} not found in data/adult or data/adult-coded; the repository ships it")


@pytest.fixture(scope="module")
def adult_schema():
    return load_schema(ADULT_SCHEMA)


@pytest.fixture(scope="module")
def adult_train(adult_schema):
    return encode_file(find_data_file("adult.data"), adult_schema)


def make_schema(columns: str, defaults: str = "") -> object:
    head = 'format_version = 1\nname = "t"\n'
    if defaults:
        head += "[defaults]\n" + defaults + "\n"
    return parse_schema(head + columns)


COLOUR = '[[columns]]\nname = "colour"\nkind = "categorical"\ncategories = ["red", "green", "blue"]\n'
AGE = '[[columns]]\nname = "age"\nkind = "numeric"\ninteger = true\nbounds = [0, 100]\nedges = [0, 18, 65, 100]\n'


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Small tables: codes and report


def test_small_csv_with_header(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\nred,3\nblue,70\ngreen,18\n,40\n")

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[0, 0], [2, 2], [1, 1], [3, 1]]
    assert encoded.codes.dtype == np.int64
    assert encoded.report.rows == 4
    assert encoded.report.header is True
    assert encoded.report.column("colour").missing == 1
    assert encoded.schema is schema


def test_columns_matched_by_name_extra_ignored(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "id,age,notes,colour\n1,20,x,red\n2,99,y,green\n")

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[0, 1], [1, 2]]
    assert encoded.report.ignored_columns == ("id", "notes")
    assert "ignored columns not in the schema: id, notes" in encoded.report.summary()


def test_no_header_uses_schema_order(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "red,3,extra\nblue,70,extra\n")

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[0, 0], [2, 2]]
    assert encoded.report.header is False
    assert encoded.report.ignored_columns == ("column 3",)


def test_header_false_reads_first_row_as_data(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\nred,3\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema, header=False)

    message = str(raised.value)
    assert "column 'colour'" in message
    assert "'colour'" in message  # the header value shows up as an example


def test_header_true_with_unmatched_names(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "red,3\nblue,4\n")

    with pytest.raises(DataError, match="lacks schema column"):
        encode_file(path, schema, header=True)


def test_too_few_columns_without_header(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "red\nblue\n")

    with pytest.raises(DataError, match="1 columns per row but the schema has 2"):
        encode_file(path, schema)


def test_leading_junk_lines_skipped(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "|exported by tool\nred,3\nblue,70\n")

    with pytest.raises(DataError, match="skip_rows"):
        encode_file(path, schema)
    encoded = encode_file(path, schema, skip_rows=1)

    assert encoded.codes.tolist() == [[0, 0], [2, 2]]
    assert encoded.report.skipped_rows == 1


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path, delimiter):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, f"colour{delimiter}age\nred{delimiter}3\nblue{delimiter}70\n")

    encoded = encode_file(path, schema, delimiter=delimiter)

    assert encoded.codes.tolist() == [[0, 0], [2, 2]]


def test_quoted_values_with_delimiter(tmp_path):
    schema = make_schema('[[columns]]\nname = "place"\nkind = "categorical"\ncategories = ["Paris, France", "Rome"]\n')
    path = write(tmp_path, 'place\n"Paris, France"\nRome\n')

    assert encode_file(path, schema).codes.tolist() == [[0], [1]]


def test_gzip_csv(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = tmp_path / "t.data"  # no .gz suffix: detected from the content
    path.write_bytes(gzip.compress(b"colour,age\nred,3\nblue,70\n"))

    assert encode_file(path, schema).codes.tolist() == [[0, 0], [2, 2]]


def test_whitespace_stripped_by_default(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, " colour , age \n  red ,  3\n\tblue\t, 70 \n")

    assert encode_file(path, schema).codes.tolist() == [[0, 0], [2, 2]]


def test_whitespace_kept_when_configured(tmp_path):
    schema = make_schema(COLOUR.replace('kind = "categorical"', 'kind = "categorical"\nstrip_whitespace = false'))
    path = write(tmp_path, "colour\n red\nred\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    assert "1 rejected" in str(raised.value)
    assert "' red'" in str(raised.value)


def test_missing_markers_and_aliases_counted(tmp_path):
    columns = COLOUR.replace('"blue"]', '"blue"]\naliases = { "Red" = "red", "RED" = "red" }')
    schema = make_schema(columns, defaults='missing_markers = ["", "?", "NA"]')
    path = write(tmp_path, "colour\nRed\nRED\nred\n?\nNA\n\ngreen\n")

    encoded = encode_file(path, schema)
    report = encoded.report.column("colour")

    # An empty line is skipped by the CSV reader, so 6 rows remain.
    assert encoded.codes[:, 0].tolist() == [0, 0, 0, 3, 3, 1]
    assert report.aliased == 2
    assert report.missing == 2
    assert report.rejected == 0


def test_constant_column(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\n" + "green,42\n" * 50)

    encoded = encode_file(path, schema)

    assert (encoded.codes[:, 0] == 1).all()
    assert (encoded.codes[:, 1] == 1).all()
    assert encoded.report.rows == 50


def test_all_missing_column(tmp_path):
    schema = make_schema(COLOUR + AGE, defaults='missing_markers = ["", "?"]')
    path = write(tmp_path, "colour,age\n?,\n,?\n?,?\n")

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[3, 3]] * 3
    assert encoded.report.column("colour").missing == 3
    assert encoded.report.column("age").missing == 3


def test_all_missing_column_without_missing_category(tmp_path):
    schema = make_schema(COLOUR + AGE, defaults="missing_category = false")
    path = write(tmp_path, "colour,age\n,5\n,6\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    message = str(raised.value)
    assert "column 'colour': 2 rejected" in message
    assert "no missing category" in message
    assert "missing_category = true" in message
    assert "column 'age'" not in message


def test_declared_category_never_seen(tmp_path):
    schema = make_schema(COLOUR)
    path = write(tmp_path, "colour\nred\nred\nblue\n")

    encoded = encode_file(path, schema)

    assert encoded.codes[:, 0].tolist() == [0, 0, 2]
    assert np.bincount(encoded.codes[:, 0], minlength=schema.domain.sizes[0]).tolist() == [2, 0, 1, 0]


# ---------------------------------------------------------------------------
# Values outside the schema, per policy


def test_unknown_category_error_policy(tmp_path):
    schema = make_schema(COLOUR)
    path = write(tmp_path, "colour\nred\npurple\npink\npurple\nblue\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    message = str(raised.value)
    assert "column 'colour': 3 rejected (3 outside the domain)" in message
    assert "'purple', 'pink'" in message  # most frequent first
    assert "categories or aliases" in message
    report = raised.value.report
    assert report.column("colour").rejected == 3
    assert report.column("colour").rejected_examples == ("purple", "pink")


def test_unknown_category_missing_policy(tmp_path):
    schema = make_schema(COLOUR.replace('kind = "categorical"', 'kind = "categorical"\nout_of_domain = "missing"'))
    path = write(tmp_path, "colour\nred\npurple\npink\n\n")

    encoded = encode_file(path, schema)

    assert encoded.codes[:, 0].tolist() == [0, 3, 3]
    assert encoded.report.column("colour").mapped_to_missing == 2
    assert encoded.report.column("colour").missing == 0


def test_rejections_reported_for_all_columns_at_once(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\npurple,500\nred,-1\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    message = str(raised.value)
    assert "3 value(s) do not fit" in message
    assert "column 'colour': 1 rejected" in message
    assert "column 'age': 2 rejected (2 outside the domain)" in message
    assert "'500', '-1'" in message or "'-1', '500'" in message


SPECIAL_NUMBERS = "x\n5\nNaN\ninf\n-inf\n1e309\n-1e309\nnan\n"


def numeric_schema(policy: str):
    return make_schema(
        f'[[columns]]\nname = "x"\nkind = "numeric"\nbounds = [0, 10]\nedges = [0, 5, 10]\nout_of_domain = "{policy}"\n'
    )


def test_special_numbers_error_policy(tmp_path):
    path = write(tmp_path, SPECIAL_NUMBERS)

    with pytest.raises(DataError) as raised:
        encode_file(path, numeric_schema("error"))

    message = str(raised.value)
    assert "column 'x': 4 rejected (4 outside the domain)" in message
    assert "'inf'" in message
    assert "'-inf'" in message
    assert "'1e309'" in message
    assert raised.value.report.column("x").missing == 2  # NaN and nan


def test_special_numbers_clamp_policy(tmp_path):
    path = write(tmp_path, SPECIAL_NUMBERS)

    encoded = encode_file(path, numeric_schema("clamp"))

    assert encoded.codes[:, 0].tolist() == [1, 2, 1, 0, 1, 0, 2]
    assert encoded.report.column("x").clamped == 4
    assert encoded.report.column("x").missing == 2


def test_special_numbers_missing_policy(tmp_path):
    path = write(tmp_path, SPECIAL_NUMBERS)

    encoded = encode_file(path, numeric_schema("missing"))

    assert encoded.codes[:, 0].tolist() == [1, 2, 2, 2, 2, 2, 2]
    assert encoded.report.column("x").mapped_to_missing == 4
    assert encoded.report.column("x").missing == 2


def test_special_numbers_from_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    values = [5.0, math.nan, math.inf, -math.inf, float("1e309"), None, 10.0, 0.0]
    pq.write_table(pa.table({"x": pa.array(values, type=pa.float64())}), path)

    encoded = encode_file(path, numeric_schema("clamp"))

    assert encoded.codes[:, 0].tolist() == [1, 2, 1, 0, 1, 2, 1, 0]
    assert encoded.report.column("x").clamped == 3
    assert encoded.report.column("x").missing == 2


def test_numeric_bounds_inclusive(tmp_path):
    path = write(tmp_path, "x\n0\n4.999\n5\n10\n10.0001\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, numeric_schema("error"))

    assert "1 rejected" in str(raised.value)
    assert "'10.0001'" in str(raised.value)


def test_text_in_numeric_column(tmp_path):
    path = write(tmp_path, "x\n5\nfive\n1,5\n0x10\n")

    for policy in ("error", "clamp"):
        with pytest.raises(DataError) as raised:
            encode_file(path, numeric_schema(policy), delimiter=";")
        message = str(raised.value)
        assert "column 'x': 3 rejected (3 not a number)" in message
        assert "missing_markers" in message

    encoded = encode_file(path, numeric_schema("missing"), delimiter=";")
    assert encoded.codes[:, 0].tolist() == [1, 2, 2, 2]


def test_number_spellings_accepted(tmp_path):
    path = write(tmp_path, "x\n+3\n.5\n5.\n1e0\n7E-0\n0009\n")

    encoded = encode_file(path, numeric_schema("error"))

    assert encoded.codes[:, 0].tolist() == [0, 0, 1, 0, 1, 1]


def test_fraction_in_integer_column(tmp_path):
    path = write(tmp_path, "age\n17\n17.0\n17.5\n")

    with pytest.raises(DataError, match=r"1 not a whole number"):
        encode_file(path, make_schema(AGE + 'out_of_domain = "error"\n'))
    clamped = encode_file(path, make_schema(AGE + 'out_of_domain = "clamp"\n'))

    assert clamped.codes[:, 0].tolist() == [0, 0, 0]
    assert clamped.report.column("age").clamped == 1


def test_numeric_alias(tmp_path):
    schema = make_schema(AGE.replace("integer = true", 'integer = true\naliases = { "newborn" = "0" }'))
    path = write(tmp_path, "age\nnewborn\n30\n")

    encoded = encode_file(path, schema)

    assert encoded.codes[:, 0].tolist() == [0, 1]
    assert encoded.report.column("age").aliased == 1


# ---------------------------------------------------------------------------
# Text stays text


def test_boolean_and_date_like_text_stays_text(tmp_path):
    schema = make_schema(
        '[[columns]]\nname = "flag"\nkind = "categorical"\ncategories = ["true", "FALSE", "yes", "0"]\n'
        '[[columns]]\nname = "day"\nkind = "categorical"\ncategories = ["2020-01-31", "2020-02-30", "01/02/2020"]\n'
        '[[columns]]\nname = "zip"\nkind = "categorical"\ncategories = ["007", "7"]\n'
    )
    path = write(tmp_path, "flag,day,zip\ntrue,2020-01-31,007\nFALSE,2020-02-30,7\nyes,01/02/2020,007\n0,2020-01-31,7\n")

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 0], [3, 0, 1]]


def test_boolean_spelling_is_not_normalized(tmp_path):
    schema = make_schema('[[columns]]\nname = "flag"\nkind = "categorical"\ncategories = ["true", "false"]\n')
    path = write(tmp_path, "flag\ntrue\nTrue\nfalse\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    assert "'True'" in str(raised.value)


def test_unicode_spaces_and_symbols_in_names(tmp_path):
    schema = make_schema(
        '[[columns]]\nname = "Größe > 50 €"\nkind = "categorical"\ncategories = ["ja", "nein"]\n'
        '[[columns]]\nname = "hours per week"\nkind = "numeric"\nbounds = [0, 99]\nbins = 3\n'
        '[[columns]]\nname = "income>50K"\nkind = "categorical"\ncategories = ["0", "1"]\n'
        '[[columns]]\nname = "東京"\nkind = "categorical"\ncategories = ["é", "ü"]\n'
    )
    path = write(tmp_path, "東京,income>50K,hours per week,Größe > 50 €\nü,1,40,nein\né,0,10,ja\n")

    encoded = encode_file(path, schema)

    assert encoded.report.header is True
    assert encoded.codes.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]


def test_byte_order_mark_in_header(tmp_path):
    schema = make_schema(COLOUR)
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffcolour\nred\n".encode("utf-8"))

    assert encode_file(path, schema).codes.tolist() == [[0]]


def test_latin1_file(tmp_path):
    schema = make_schema('[[columns]]\nname = "city"\nkind = "categorical"\ncategories = ["Köln", "Zürich"]\n')
    path = tmp_path / "latin1.csv"
    path.write_bytes("city\nKöln\nZürich\n".encode("latin-1"))

    with pytest.raises(DataError, match="not valid UTF-8.*encoding="):
        encode_file(path, schema)
    assert encode_file(path, schema, encoding="latin-1").codes.tolist() == [[0], [1]]


# ---------------------------------------------------------------------------
# Broken files and options


def test_duplicate_column_names(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age,colour\nred,3,blue\n")

    with pytest.raises(DataError, match=r"duplicate column names: 'colour' at positions 1, 3"):
        encode_file(path, schema)


def test_duplicate_column_names_in_frame():
    schema = make_schema(COLOUR + AGE)
    df = pd.DataFrame([["red", 3, "blue"]], columns=["colour", "age", "colour"])

    with pytest.raises(DataError, match="duplicate column names: 'colour'"):
        encode_frame(df, schema)


def test_schema_column_missing_from_file(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,Age\nred,3\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    message = str(raised.value)
    assert "lacks schema column(s) 'age'" in message
    assert "the input has 'Age'" in message
    assert str(path) in message


def test_empty_file(tmp_path):
    schema = make_schema(COLOUR)
    path = write(tmp_path, "")

    with pytest.raises(DataError, match="is empty"):
        encode_file(path, schema)


def test_blank_lines_only(tmp_path):
    schema = make_schema(COLOUR)
    path = write(tmp_path, "\n\n\n")

    with pytest.raises(DataError, match=str(path)):
        encode_file(path, schema)


def test_header_only_file(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\n")

    with pytest.raises(DataError, match="header row but no data rows"):
        encode_file(path, schema)


def test_ragged_rows(tmp_path):
    schema = make_schema(COLOUR + AGE)
    path = write(tmp_path, "colour,age\nred,3\nblue,4,secret\n")

    with pytest.raises(DataError) as raised:
        encode_file(path, schema)

    assert "different numbers of fields" in str(raised.value)
    assert "secret" not in str(raised.value)  # row contents stay out of the message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        encode_file(tmp_path / "absent.csv", make_schema(COLOUR))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        encode_file(tmp_path, make_schema(COLOUR))


@pytest.mark.parametrize(
    "options",
    [{"header": "yes"}, {"header": 1}, {"skip_rows": -1}, {"delimiter": ""}, {"delimiter": "\n"}, {"file_format": "xls"}],
)
def test_invalid_options(tmp_path, options):
    path = write(tmp_path, "colour\nred\n")

    with pytest.raises(ConfigError):
        encode_file(path, make_schema(COLOUR), **options)


def test_skip_rows_rejected_for_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"colour": ["red"]}), path)

    with pytest.raises(ConfigError, match="CSV files only"):
        encode_file(path, make_schema(COLOUR), skip_rows=1)


def test_empty_frame():
    with pytest.raises(DataError, match="no rows"):
        encode_frame(pd.DataFrame({"colour": pd.Series([], dtype=object)}), make_schema(COLOUR))


# ---------------------------------------------------------------------------
# Parquet and pandas input


def test_parquet_typed_columns(tmp_path):
    schema = make_schema(
        COLOUR
        + AGE
        + '[[columns]]\nname = "flag"\nkind = "categorical"\ncategories = ["true", "false"]\n'
        + '[[columns]]\nname = "code"\nkind = "categorical"\ncategories = ["0", "1", "2"]\n'
    )
    table = pa.table(
        {
            "code": pa.array([2, 0, None], type=pa.int64()),
            "colour": pa.array(["red", None, "blue"]).dictionary_encode(),
            "age": pa.array([17, 18, None], type=pa.int32()),
            "flag": pa.array([True, False, True]),
            "unused": pa.array([[1], [2], [3]]),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)

    encoded = encode_file(path, schema)

    assert encoded.codes.tolist() == [[0, 0, 0, 2], [3, 1, 1, 0], [2, 3, 0, 3]]
    assert encoded.report.column("colour").missing == 1
    assert encoded.report.column("age").missing == 1
    assert encoded.report.ignored_columns == ("unused",)


def test_parquet_duplicate_column_names(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.Table.from_arrays([pa.array(["red"]), pa.array(["blue"])], names=["colour", "colour"])
    pq.write_table(table, path)

    with pytest.raises(DataError, match="duplicate column names: 'colour' at positions 1, 2"):
        encode_file(path, make_schema(COLOUR))


def test_parquet_missing_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"colour": ["red"]}), path)

    with pytest.raises(DataError, match="lacks schema column.*'age'"):
        encode_file(path, make_schema(COLOUR + AGE))


def test_parquet_numeric_text_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"age": ["17", " 70 ", "x"]}), path)

    with pytest.raises(DataError, match="1 not a number"):
        encode_file(path, make_schema(AGE))


def test_frame_with_pandas_dtypes():
    schema = make_schema(
        COLOUR
        + AGE
        + '[[columns]]\nname = "flag"\nkind = "categorical"\ncategories = ["true", "false"]\n'
    )
    df = pd.DataFrame(
        {
            "colour": pd.Categorical(["red", "blue", None]),
            "age": pd.array([10, None, 99], dtype="Int64"),
            "flag": [True, False, True],
        }
    )

    encoded = encode_frame(df, schema)

    assert encoded.codes.tolist() == [[0, 0, 0], [2, 3, 1], [3, 2, 0]]


def test_frame_with_mixed_object_column():
    schema = make_schema('[[columns]]\nname = "code"\nkind = "categorical"\ncategories = ["1", "a"]\n')
    df = pd.DataFrame({"code": pd.Series([1, "a", None], dtype=object)})

    encoded = encode_frame(df, schema)

    assert encoded.codes.tolist() == [[0], [1], [2]]


# ---------------------------------------------------------------------------
# Decoding


def test_decode_round_trip_small(tmp_path):
    schema = make_schema(
        COLOUR + AGE + '[[columns]]\nname = "w"\nkind = "numeric"\nbounds = [0, 1]\nedges = [0, 0.5, 1]\n'
    )
    codes = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 0], [3, 3, 2]] * 50)

    frame = decode_codes(codes, schema, seed=7)

    assert list(frame.columns) == ["colour", "age", "w"]
    assert frame["colour"].tolist()[:3] == ["red", "green", "blue"]
    assert pd.isna(frame["colour"].iloc[3])
    assert str(frame["age"].dtype) == "Int64"
    ages = frame["age"].to_numpy(dtype=float, na_value=np.nan)
    assert ((ages[0::4] >= 0) & (ages[0::4] <= 17)).all()
    assert ((ages[1::4] >= 18) & (ages[1::4] <= 64)).all()
    assert ((ages[2::4] >= 65) & (ages[2::4] <= 100)).all()
    assert np.isnan(ages[3::4]).all()
    weights = frame["w"].to_numpy()
    assert ((weights[0::4] >= 0) & (weights[0::4] < 0.5)).all()
    assert ((weights[1::4] >= 0.5) & (weights[1::4] <= 1)).all()
    assert np.isnan(weights[3::4]).all()
    assert encode_frame(frame, schema).codes.tolist() == codes.tolist()


ROUND_TRIP_SCHEMA = make_schema(
    COLOUR
    + AGE
    + '[[columns]]\nname = "w"\nkind = "numeric"\nbounds = [-1, 1]\nedges = [-1, -0.001, 0, 1e-9, 1]\n'
    + '[[columns]]\nname = "n"\nkind = "numeric"\ninteger = true\nmissing_category = false\n'
    + "bounds = [-5, 5]\nedges = [-5, -4.5, 0.5, 1.5, 5]\n"
)


@settings(max_examples=60, deadline=None)
@given(
    codes=st.lists(
        st.tuples(*(st.integers(0, size - 1) for size in ROUND_TRIP_SCHEMA.domain.sizes)), min_size=1, max_size=40
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_then_encode_keeps_codes(codes, seed):
    codes = np.array(codes, dtype=np.int64)

    decoded = decode_codes(codes, ROUND_TRIP_SCHEMA, seed=seed)

    assert np.array_equal(encode_frame(decoded, ROUND_TRIP_SCHEMA).codes, codes)


def test_decode_is_seeded():
    schema = make_schema(AGE)
    codes = np.zeros((100, 1), dtype=np.int64)

    first = decode_codes(codes, schema, seed=1)
    again = decode_codes(codes, schema, seed=1)
    other = decode_codes(codes, schema, seed=2)

    assert first.equals(again)
    assert not first.equals(other)


def test_decode_integer_bins_cover_every_value():
    schema = make_schema('[[columns]]\nname = "n"\nkind = "numeric"\ninteger = true\nbounds = [1, 4]\nedges = [1, 4]\n')

    values = decode_codes(np.zeros((2000, 1), dtype=np.int64), schema, seed=3)["n"]

    assert sorted(values.unique().tolist()) == [1, 2, 3, 4]


def test_decode_rejects_codes_outside_domain():
    schema = make_schema(COLOUR + AGE)

    with pytest.raises(SchemaError, match=r"column 'age': 1 code\(s\) outside 0..3, for example 4"):
        decode_codes(np.array([[0, 0], [1, 4]]), schema, seed=0)
    with pytest.raises(SchemaError, match="shape"):
        decode_codes(np.zeros((2, 3), dtype=int), schema, seed=0)
    with pytest.raises(SchemaError, match="integers"):
        decode_codes(np.zeros((2, 2)), schema, seed=0)


# ---------------------------------------------------------------------------
# The real Adult files


def test_adult_train_counts(adult_train):
    report = adult_train.report

    assert report.rows == 32561
    assert adult_train.codes.shape == (32561, 15)
    assert report.header is False
    assert report.column("workclass").missing == 1836
    assert report.column("occupation").missing == 1843
    assert report.column("native-country").missing == 583
    assert report.rejected == 0
    assert sum(c.clamped for c in report.columns) == 0
    assert sum(c.aliased for c in report.columns) == 0


def test_adult_train_codes_within_domain(adult_train, adult_schema):
    sizes = np.array(adult_schema.domain.sizes)

    assert (adult_train.codes >= 0).all()
    assert (adult_train.codes < sizes).all()
    # Known first row: 39, State-gov, ..., Male, ..., <=50K
    first = dict(zip(ADULT_NAMES, adult_train.codes[0]))
    assert first["workclass"] == adult_schema.column("workclass").categories.index("State-gov")
    assert first["sex"] == adult_schema.column("sex").categories.index("Male")
    assert first["income"] == 0
    assert first["age"] == 4  # bin [35, 40)


def test_adult_test_file(adult_schema):
    path = find_data_file("adult.test")

    with pytest.raises(DataError, match="skip_rows"):
        encode_file(path, adult_schema)
    encoded = encode_file(path, adult_schema, skip_rows=1)

    assert encoded.report.rows == 16281
    assert encoded.report.column("income").aliased == 16281
    assert encoded.report.rejected == 0
    assert set(np.unique(encoded.codes[:, ADULT_NAMES.index("income")])) == {0, 1}


def test_adult_summary_lists_columns(adult_train):
    summary = adult_train.report.summary()

    assert "32561 rows" in summary
    assert "workclass" in summary
    assert "1836" in summary
    assert len(summary.splitlines()) >= 17


def test_adult_round_trip(adult_train, adult_schema):
    decoded = decode_codes(adult_train.codes, adult_schema, seed=11)

    # Decoded values fall into the same categories and bins.
    again = encode_frame(decoded, adult_schema)
    assert np.array_equal(again.codes, adult_train.codes)
    assert again.report.column("workclass").missing == 1836
    # Categorical values equal the original text.
    raw = pd.read_csv(
        find_data_file("adult.data"), header=None, names=list(ADULT_NAMES), skipinitialspace=True,
        keep_default_na=False, dtype=str,
    )
    seen = raw["education"] != "?"
    assert (decoded["education"].astype(str)[seen] == raw["education"][seen]).all()
    known = raw["workclass"] != "?"
    assert (decoded["workclass"].astype(str)[known] == raw["workclass"][known]).all()
    assert decoded["workclass"][~known].isna().all()


def test_adult_parquet_matches_csv(tmp_path, adult_train, adult_schema):
    raw = pd.read_csv(
        find_data_file("adult.data"), header=None, names=list(ADULT_NAMES), skipinitialspace=True,
        keep_default_na=False,
    )
    assert raw["age"].dtype.kind == "i"  # typed numbers, not text
    path = tmp_path / "adult.parquet"
    raw.to_parquet(path, index=False)

    encoded = encode_file(path, adult_schema)

    assert encoded.report.header is None
    assert np.array_equal(encoded.codes, adult_train.codes)


def test_adult_coded_file_keeps_codes():
    path = find_data_file("adult.csv")
    schema = load_schema(ADULT_CODED_SCHEMA)

    encoded = encode_file(path, schema)
    expected = pd.read_csv(path).to_numpy()

    assert encoded.report.header is True
    assert np.array_equal(encoded.codes, expected)
