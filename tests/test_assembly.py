"""Assembly from release files and sampling front-end: determinism, errors, conditions."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from p2psynth.assembly import assemble_model, current_entries, decode_entries
from p2psynth.cli import main
from p2psynth.errors import ModelError
from p2psynth.measurement import measure_mst
from p2psynth.noise import SecureRandom
from p2psynth.release import Release, encode_release
from p2psynth.schema import parse_schema
from p2psynth.synthesize import parse_where, sample_frame
from releasefactory import fixed_key

SCHEMA_TEXT = """
format_version = 1
name = "toy"

[[columns]]
name = "color"
kind = "categorical"
categories = ["red", "green", "blue"]

[[columns]]
name = "size"
kind = "numeric"
integer = true
bounds = [0, 100]
edges = [0, 10, 50, 100]

[[columns]]
name = "fraud"
kind = "categorical"
categories = ["no", "yes"]
missing_category = false
"""


@pytest.fixture(scope="module")
def schema():
    return parse_schema(SCHEMA_TEXT)


def _codes(rows: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    color = generator.integers(0, 3, rows)
    size = np.where(color == 2, 2, generator.integers(0, 3, rows))
    fraud = (generator.random(rows) < np.where(size == 2, 0.3, 0.02)).astype(int)
    return np.stack([color, size, fraud], axis=1)


def _releases(schema, authors: int = 3) -> list[bytes]:
    blobs = []
    for index in range(authors):
        key = fixed_key(10 + index)
        result = measure_mst(_codes(3000, index), schema.domain, rho=1.0,
                             random=SecureRandom(seed=bytes([index + 1]) * 32))
        release = Release(schema.fingerprint, key.public_key().public_bytes_raw(), 1, 1, 0, 1.0,
                          result.measurements)
        blobs.append(encode_release(release, key))
    return blobs


def test_model_independent_of_release_order(schema):
    blobs = _releases(schema)
    shuffled = list(blobs)
    random.Random(3).shuffle(shuffled)
    first = assemble_model(decode_entries(blobs), schema_fingerprint=schema.fingerprint, domain=schema.domain)
    second = assemble_model(decode_entries(shuffled + blobs[:1]), schema_fingerprint=schema.fingerprint,
                            domain=schema.domain)
    assert first.to_bytes() == second.to_bytes()
    assert first.model_id == second.model_id
    assert len(first.provenance["releases"]) == 3
    assert len(first.provenance["members"]) == 3


def test_latest_epoch_replaces_earlier(schema):
    key = fixed_key(20)
    result = measure_mst(_codes(500, 1), schema.domain, rho=1.0, random=SecureRandom(seed=b"\x05" * 32))
    old = encode_release(Release(schema.fingerprint, key.public_key().public_bytes_raw(), 1, 1, 0, 1.0,
                                 result.measurements), key)
    new = encode_release(Release(schema.fingerprint, key.public_key().public_bytes_raw(), 2, 2, 0, 1.0,
                                 result.measurements), key)
    entries = current_entries(decode_entries([old, new]))
    assert [e.release.sequence for e in entries] == [2]


def test_other_schema_rejected(schema):
    other = parse_schema(SCHEMA_TEXT.replace('name = "toy"', 'name = "other"'))
    blobs = _releases(other, authors=1)
    with pytest.raises(ModelError, match="belongs to schema"):
        assemble_model(decode_entries(blobs), schema_fingerprint=schema.fingerprint, domain=schema.domain)


def test_zero_releases_is_clear_error(schema):
    with pytest.raises(ModelError, match="no releases"):
        assemble_model([], schema_fingerprint=schema.fingerprint, domain=schema.domain)


def test_where_parsing(schema):
    assert parse_where(schema, ["fraud=yes"]) == {"fraud": {1}}
    assert parse_where(schema, ["color in {red, blue}"]) == {"color": {0, 2}}
    assert parse_where(schema, ["color=red", "color=green"]) == {"color": {0, 1}}
    assert parse_where(schema, ["size=55"]) == {"size": {2}}
    assert parse_where(schema, ["size=<missing>"]) == {"size": {3}}


@pytest.mark.parametrize(
    "expression, message",
    [
        ("shape=round", "unknown column 'shape'"),
        ("color=purple", "unknown value 'purple'"),
        ("size=500", "outside the bounds"),
        ("size=big", "not a number"),
        ("fraud=<missing>", "no missing category"),
        ("color", "invalid"),
    ],
)
def test_where_errors(schema, expression, message):
    with pytest.raises(ModelError, match=message):
        parse_where(schema, [expression])


def test_conditional_samples_satisfy_conditions(schema):
    model = assemble_model(decode_entries(_releases(schema)), schema_fingerprint=schema.fingerprint,
                           domain=schema.domain)
    frame = sample_frame(model, schema, rows=5000, seed=4, conditions=parse_where(schema, ["fraud=yes"]))
    assert len(frame) == 5000
    assert set(frame["fraud"]) == {"yes"}
    again = sample_frame(model, schema, rows=5000, seed=4, conditions=parse_where(schema, ["fraud=yes"]))
    pd.testing.assert_frame_equal(frame, again)


def test_assemble_and_sample_cli(schema, tmp_path, capsys):
    schema_path = tmp_path / "toy.schema.toml"
    schema_path.write_text(SCHEMA_TEXT)
    files = []
    for index, blob in enumerate(_releases(schema)):
        path = tmp_path / f"r{index}.p2pr"
        path.write_bytes(blob)
        files.append(str(path))
    model_path = tmp_path / "model.p2pm"
    assert main(["assemble", *files, "--schema", str(schema_path), "--out", str(model_path)]) == 0
    assert model_path.is_file()

    out = tmp_path / "rows.parquet"
    assert main(["sample", "--model", str(model_path), "--schema", str(schema_path), "--rows", "2000",
                 "--where", "color=blue", "--seed", "1", "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 2000
    assert list(frame.columns) == ["color", "size", "fraud"]
    assert set(frame["color"]) == {"blue"}

    capsys.readouterr()
    assert main(["sample", "--model", str(model_path), "--schema", str(schema_path), "--rows", "5",
                 "--where", "color=purple", "--out", str(tmp_path / "x.csv")]) == 1
    assert "unknown value 'purple'" in capsys.readouterr().err
