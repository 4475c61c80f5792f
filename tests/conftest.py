"""Shared fixtures: paths of the bundled data and schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
NODE_CONFIG_DIR = REPO_ROOT / "node_config"


@pytest.fixture(scope="session")
def adult_data_path() -> Path:
    """The raw UCI adult.data file (gzip), shipped in the repository."""
    return DATA_DIR / "adult" / "adult.data.gz"


@pytest.fixture(scope="session")
def adult_schema_path() -> Path:
    return NODE_CONFIG_DIR / "adult.schema.toml"
