"""The node commands as a user runs them: init, measure, inspect, budget."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from p2psynth.cli import main


@pytest.fixture(scope="module")
def small_adult(tmp_path_factory, adult_data_path) -> Path:
    """The first 3,000 rows of adult.data, as a user's own CSV file."""
    path = tmp_path_factory.mktemp("data") / "adult-small.csv"
    with gzip.open(adult_data_path, "rt", encoding="utf-8") as source:
        lines = [next(source) for _ in range(3000)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def node(tmp_path, small_adult, adult_schema_path) -> Path:
    folder = tmp_path / "node"
    code = main([
        "init", str(folder), "--data", str(small_adult), "--schema", str(adult_schema_path),
        "--lifetime-epsilon", "2", "--release-epsilon", "1",
    ])
    assert code == 0
    return folder


def _config(folder: Path) -> list[str]:
    return ["--config", str(folder / "node.toml")]


def test_init_creates_private_key(node):
    mode = os.stat(node / "node.key").st_mode & 0o777
    assert mode == 0o600
    assert (os.stat(node / "api.token").st_mode & 0o777) == 0o600
    assert (node / "store.sqlite").is_file()
    assert "public_key" in (node / "members.toml").read_text()


def test_init_refuses_existing_node(node, capsys):
    assert main(["init", str(node)]) == 1
    assert "already contains a node" in capsys.readouterr().err


def test_measure_then_inspect(node, capsys):
    assert main(["measure", *_config(node)]) == 0
    out = capsys.readouterr().out
    assert "3000 rows" in out
    files = list((node / "releases").glob("*.p2pr"))
    assert len(files) == 1

    assert main(["inspect", str(files[0]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["signature"] == "valid"
    assert summary["sequence"] == 1
    assert abs(summary["epsilon_at_delta_1e-9"] - 1.0) < 1e-6
    assert len(summary["measurements"]) >= 15
    assert summary["round"] == 0
    assert summary["grouping"] == {}

    # Several files (a shell glob over releases/) give one summary each.
    assert main(["inspect", str(files[0]), str(files[0]), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [item["release_id"] for item in both] == [summary["release_id"]] * 2


def test_inspect_checks_schema(node, adult_schema_path, tmp_path, capsys):
    assert main(["measure", *_config(node)]) == 0
    release = next((node / "releases").glob("*.p2pr"))
    assert main(["inspect", str(release), "--schema", str(adult_schema_path)]) == 0
    assert "matches the given schema" in capsys.readouterr().out

    other = tmp_path / "other.schema.toml"
    other.write_text(adult_schema_path.read_text().replace('name = "uci-adult"', 'name = "other"'))
    assert main(["inspect", str(release), "--schema", str(other)]) == 1
    assert "fingerprint" in capsys.readouterr().err


def test_flipped_bytes_fail_inspect(node, tmp_path, capsys):
    assert main(["measure", *_config(node)]) == 0
    data = next((node / "releases").glob("*.p2pr")).read_bytes()
    # A spread of positions: envelope header, body fields, counts, signature.
    positions = sorted({0, 1, 2, 5, 40, 80, 120, len(data) // 2, len(data) - 70, len(data) - 1})
    for position in positions:
        mutated = bytearray(data)
        mutated[position] ^= 0x20
        path = tmp_path / f"flipped-{position}.p2pr"
        path.write_bytes(bytes(mutated))
        capsys.readouterr()
        assert main(["inspect", str(path)]) == 1, position
        assert "is not a valid release" in capsys.readouterr().err


def test_budget_exhaustion_via_cli(node, capsys):
    # Lifetime epsilon 2 at release epsilon 1: zCDP composition admits a few releases, not unlimited.
    results = [main(["measure", *_config(node)]) for _ in range(6)]
    assert results[0] == 0
    assert results[-1] == 1
    err = capsys.readouterr().err
    assert "spent epsilon" in err
    assert "remaining epsilon" in err
    assert "requests epsilon 1" in err

    assert main(["budget", *_config(node), "--json"]) == 0
    budget = json.loads(capsys.readouterr().out)
    assert budget["releases"] == results.count(0)
    assert budget["rho_spent"] <= budget["rho_limit"]


def test_measure_rejects_readable_key(node, capsys):
    os.chmod(node / "node.key", 0o644)
    assert main(["measure", *_config(node)]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_measure_with_missing_store(node, capsys):
    (node / "store.sqlite").unlink()
    assert main(["measure", *_config(node)]) == 1
    assert "missing" in capsys.readouterr().err
    assert list((node / "releases").glob("*.p2pr")) == []


def test_measure_with_bad_config(node, capsys):
    config = node / "node.toml"
    config.write_text(config.read_text().replace("lifetime_epsilon", "lifetime_epsilonn"))
    assert main(["measure", *_config(node)]) == 1
    assert "lifetime_epsilonn" in capsys.readouterr().err


def test_budget_on_fresh_node(node, capsys):
    assert main(["budget", *_config(node)]) == 0
    out = capsys.readouterr().out
    assert "releases:          0" in out


def test_inspect_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.p2pr")]) == 1
    assert "not found" in capsys.readouterr().err
