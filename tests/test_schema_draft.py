"""Tests of drafting a schema from a data file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2psynth.encoding import encode_file
from p2psynth.errors import ConfigError, DataError, SchemaError
from p2psynth.schema import parse_schema
from p2psynth.schema_draft import draft_schema

REPOSITORY = Path(__file__).resolve().parents[1]
DATA_FOLDERS = [REPOSITORY / "data" / "adult", REPOSITORY / "data" / "adult-coded"]


def find_data_file(name: str) -> Path:
    for folder in DATA_FOLDERS:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.exists():
                return candidate
    pytest.fail(f"{name} not found in data/adult or data/adult-coded; the repository ships it")


def write(tmp_path: Path, text: str, name: str = "people.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def columns_by_name(text: str) -> dict[str, dict]:
    return {column["name"]: column for column in tomllib.loads(text)["columns"]}


def test_draft_starts_with_warning(tmp_path):
    path = write(tmp_path, "colour\nred\n")

    text = draft_schema(path)

    assert text.startswith("# WARNING: DRAFT READ FROM PRIVATE DATA")
    assert "leaks private data" in text
    assert "replace each" in text


def test_draft_kinds_and_values(tmp_path):
    rows = "\n".join(f"{20 + i % 50},{['red', 'blue'][i % 2]},{i % 3},{i * 0.5}" for i in range(200))
    path = write(tmp_path, "age,colour,level,weight\n" + rows + "\n")

    text = draft_schema(path, bins=5)
    columns = columns_by_name(text)

    assert list(columns) == ["age", "colour", "level", "weight"]
    assert columns["age"] == {
        "name": "age", "kind": "numeric", "integer": True, "bounds": [20, 69], "bins": 5, "out_of_domain": "clamp",
    }
    assert columns["colour"]["categories"] == ["blue", "red"]
    # Few distinct numbers: categorical, sorted by value.
    assert columns["level"]["categories"] == ["0", "1", "2"]
    assert columns["weight"]["integer"] is False
    assert columns["weight"]["bounds"] == [0, 99.5]
    assert text.count("read from the data: replace with public knowledge") == 4


def test_draft_loads_and_encodes_its_file(tmp_path):
    rows = "\n".join(f"{i},{'?' if i % 7 == 0 else ['a', 'b', 'c'][i % 3]}" for i in range(100))
    path = write(tmp_path, "n,letter\n" + rows + "\n")

    schema = parse_schema(draft_schema(path))
    encoded = encode_file(path, schema)

    assert schema.names == ("n", "letter")
    assert schema.column("letter").categories == ("a", "b", "c")
    assert encoded.report.rejected == 0
    assert encoded.report.column("letter").missing == 15


def test_draft_integer_bins_fit_narrow_range(tmp_path):
    rows = "\n".join(str(v) for v in [0, 1, 2, 3, 4] * 6)
    path = write(tmp_path, "n\n" + rows + "\n")

    text = draft_schema(path, bins=50, max_categories=3)
    schema = parse_schema(text)

    assert columns_by_name(text)["n"]["bins"] == 4
    assert schema.column("n").bins == 4


def test_draft_without_header(tmp_path):
    path = write(tmp_path, "39, Private, 1\n50, Self-emp, 2\n")

    columns = columns_by_name(draft_schema(path))

    assert list(columns) == ["column_1", "column_2", "column_3"]
    assert columns["column_2"]["categories"] == ["Private", "Self-emp"]


def test_draft_with_given_names(tmp_path):
    path = write(tmp_path, "39,Private\n50,Self-emp\n")

    columns = columns_by_name(draft_schema(path, column_names=["age", "workclass"]))

    assert list(columns) == ["age", "workclass"]
    with pytest.raises(ConfigError, match="one name per column"):
        draft_schema(path, column_names=["age"])


def test_draft_header_detection_with_text_columns(tmp_path):
    path = write(tmp_path, "colour,size\nred,S\nblue,M\nred,M\n")

    columns = columns_by_name(draft_schema(path))

    assert list(columns) == ["colour", "size"]


def test_draft_first_row_repeated_is_data(tmp_path):
    path = write(tmp_path, "red,S\nblue,M\nred,M\n")

    columns = columns_by_name(draft_schema(path))

    assert columns["column_1"]["categories"] == ["blue", "red"]


def test_draft_all_missing_column_needs_editing(tmp_path):
    path = write(tmp_path, "a,b\nx,?\ny,\n")

    text = draft_schema(path)

    assert "only missing values" in text
    with pytest.raises(SchemaError, match="column 'b'.*categories is empty"):
        parse_schema(text)


def test_draft_leaves_out_identifier_column(tmp_path):
    rows = "\n".join(f"id-{i},{i % 2}" for i in range(60))
    path = write(tmp_path, "id,flag\n" + rows + "\n")

    text = draft_schema(path, max_listed_categories=50)

    assert list(columns_by_name(text)) == ["flag"]
    assert "more than 50 distinct" in text


def test_draft_escapes_awkward_names(tmp_path):
    path = write(tmp_path, 'Größe > 50,"quote""d",back\\slash\nx,1,2\ny,3,4\n')

    text = draft_schema(path)
    schema = parse_schema(text)

    assert schema.names == ("Größe > 50", 'quote"d', "back\\slash")


def test_draft_from_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"age": list(range(30, 90)), "ok": [True, False] * 30}), path)

    columns = columns_by_name(draft_schema(path))

    assert columns["age"]["kind"] == "numeric"
    assert columns["age"]["bounds"] == [30, 89]
    assert columns["ok"]["categories"] == ["false", "true"]


def test_draft_empty_and_header_only(tmp_path):
    with pytest.raises(DataError, match="empty"):
        draft_schema(write(tmp_path, "", "empty.csv"))
    with pytest.raises(DataError, match="no data rows"):
        draft_schema(write(tmp_path, "a,b\n", "header.csv"), header=True)


def test_draft_duplicate_names(tmp_path):
    with pytest.raises(DataError, match="duplicate column names"):
        draft_schema(write(tmp_path, "a,a\nx,y\nz,w\n"), header=True)


def test_draft_invalid_bins(tmp_path):
    with pytest.raises(ConfigError, match="bins=0"):
        draft_schema(write(tmp_path, "a\nx\n"), bins=0)


def test_draft_of_adult_encodes_adult():
    path = find_data_file("adult.data")

    text = draft_schema(path)
    schema = parse_schema(text)
    encoded = encode_file(path, schema)

    assert len(schema.columns) == 15
    assert schema.column("column_2").categories[0] == "Federal-gov"
    assert schema.column("column_1").bounds == (17.0, 90.0)
    assert encoded.report.rejected == 0
    assert encoded.report.column("column_2").missing == 1836
