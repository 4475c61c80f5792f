"""Tests of the quality measures: marginal TVD, ML efficacy and the report folder."""

import json

import numpy as np
import pytest

from p2psynth.domain import Domain
from p2psynth.errors import ConfigError, DataError, SchemaError
from p2psynth.evaluate import marginal_tvd, ml_efficacy, write_report


@pytest.fixture
def small_domain():
    return Domain(("a", "b", "c"), (2, 3, 4))


def random_codes(domain, rows, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, rows) for size in domain.sizes], axis=1)


def learnable_codes(rows, seed):
    """Return codes where the binary target follows feature x0 (with 10% label noise)."""
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 4, rows)
    x1 = rng.integers(0, 5, rows)
    flip = rng.random(rows) < 0.1
    y = np.where(flip, 1 - (x0 >= 2), x0 >= 2).astype(np.int64)
    return np.stack([x0, x1, y], axis=1)


def test_tvd_identical_tables_is_zero(small_domain):
    codes = random_codes(small_domain, 500, seed=1)
    result = marginal_tvd(codes, codes.copy(), small_domain)
    for way in ("1-way", "2-way", "3-way"):
        assert result[way]["mean"] == 0.0
        assert result[way]["max"] == 0.0


def test_tvd_disjoint_supports_is_one(small_domain):
    real = np.zeros((10, 3), dtype=np.int64)
    synthetic = np.array([[1, 2, 3]] * 7)
    result = marginal_tvd(real, synthetic, small_domain)
    assert result["1-way"]["mean"] == pytest.approx(1.0)
    assert result["3-way"]["max"] == pytest.approx(1.0)


def test_tvd_hand_computed_case():
    domain = Domain(("x", "y"), (2, 2))
    # real x: 3/4 zeros; synthetic x: 1/2 zeros, so TVD(x) = 0.25.
    real = np.array([[0, 0], [0, 1], [0, 0], [1, 1]])
    synthetic = np.array([[0, 0], [1, 1]])
    result = marginal_tvd(real, synthetic, domain, ways=(1, 2))
    assert result["per_marginal"][("x",)] == pytest.approx(0.25)
    # real y: 1/2 zeros, synthetic y: 1/2 zeros.
    assert result["per_marginal"][("y",)] == pytest.approx(0.0)
    # pairs: real (0,0)=1/2 (0,1)=1/4 (1,1)=1/4; synthetic (0,0)=1/2 (1,1)=1/2.
    assert result["per_marginal"][("x", "y")] == pytest.approx(0.25)
    assert result["1-way"]["mean"] == pytest.approx(0.125)
    assert result["1-way"]["worst"] == ("x",)
    assert "3-way" not in result


def test_tvd_sparse_path_matches_dense():
    # 60 x 60 x 60 cells exceed twice the row count, so the compacted path runs.
    domain = Domain(("p", "q", "r"), (60, 60, 60))
    real = random_codes(domain, 300, seed=2)
    synthetic = random_codes(domain, 200, seed=3)
    result = marginal_tvd(real, synthetic, domain, ways=(3,))

    index_real = np.ravel_multi_index(real.T, domain.sizes)
    index_synth = np.ravel_multi_index(synthetic.T, domain.sizes)
    dense_real = np.bincount(index_real, minlength=60**3) / 300
    dense_synth = np.bincount(index_synth, minlength=60**3) / 200
    expected = 0.5 * np.abs(dense_real - dense_synth).sum()
    assert result["3-way"]["mean"] == pytest.approx(expected)


def test_tvd_counts_triples_of_fourteen():
    domain = Domain(tuple(f"c{i}" for i in range(14)), (3,) * 14)
    codes = random_codes(domain, 200, seed=4)
    result = marginal_tvd(codes, codes[:100], domain)
    assert result["3-way"]["count"] == 364
    assert result["2-way"]["count"] == 91


def test_tvd_rejects_code_outside_domain(small_domain):
    codes = random_codes(small_domain, 20, seed=5)
    bad = codes.copy()
    bad[3, 2] = 4
    with pytest.raises(DataError, match="'c'"):
        marginal_tvd(codes, bad, small_domain)


def test_tvd_rejects_wrong_shape_and_order(small_domain):
    codes = random_codes(small_domain, 20, seed=6)
    with pytest.raises(DataError, match="shape"):
        marginal_tvd(codes[:, :2], codes, small_domain)
    with pytest.raises(ConfigError, match="order 4"):
        marginal_tvd(codes, codes, small_domain, ways=(4,))


def test_ml_efficacy_learnable_target():
    domain = Domain(("x0", "x1", "y"), (4, 5, 2))
    train = learnable_codes(3000, seed=7)
    test = learnable_codes(1000, seed=8)
    result = ml_efficacy(train, test, domain, target="y", seed=0, max_iter=50)
    assert result["auc"] > 0.8
    assert result["accuracy"] > 0.8
    assert result["test_rows"] == 1000


def test_ml_efficacy_shuffled_labels_near_half():
    domain = Domain(("x0", "x1", "y"), (4, 5, 2))
    train = learnable_codes(3000, seed=9)
    train[:, 2] = np.random.default_rng(10).permutation(train[:, 2])
    test = learnable_codes(2000, seed=11)
    test[:, 2] = np.random.default_rng(12).permutation(test[:, 2])
    result = ml_efficacy(train, test, domain, target="y", seed=0, max_iter=50)
    assert abs(result["auc"] - 0.5) < 0.06


def test_ml_efficacy_multiclass_macro_auc():
    rng = np.random.default_rng(12)
    x = rng.integers(0, 3, 3000)
    y = np.where(rng.random(3000) < 0.85, x, rng.integers(0, 3, 3000))
    codes = np.stack([x, rng.integers(0, 4, 3000), y], axis=1)
    domain = Domain(("x", "noise", "y"), (3, 4, 3))
    result = ml_efficacy(codes[:2000], codes[2000:], domain, target="y", seed=0, max_iter=50)
    assert result["classes"] == 3
    assert result["auc"] > 0.8


def test_ml_efficacy_single_class_training_rows():
    domain = Domain(("x0", "x1", "y"), (4, 5, 2))
    train = learnable_codes(200, seed=13)
    train[:, 2] = 0
    test = learnable_codes(200, seed=14)
    result = ml_efficacy(train, test, domain, target="y", seed=0)
    assert result["auc"] == pytest.approx(0.5)


def test_ml_efficacy_unknown_target(small_domain):
    codes = random_codes(small_domain, 50, seed=15)
    with pytest.raises(SchemaError, match="unknown attribute 'z'"):
        ml_efficacy(codes, codes, small_domain, target="z", seed=0)


def test_write_report_creates_files(tmp_path):
    domain = Domain(("x0", "x1", "y"), (4, 5, 2))
    real = learnable_codes(600, seed=16)
    synthetic = learnable_codes(500, seed=17)
    report = write_report(tmp_path / "out", real, synthetic, domain, target="y", extra={"epsilon": 1.0})

    assert report == tmp_path / "out" / "report.md"
    text = report.read_text()
    assert "3-way TVD" in text
    assert "AUC for y" in text
    assert "| epsilon | 1 |" in text
    for name in ("marginals.png", "pair_tvd.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ml_efficacy"]["auc"] > 0.7
    assert metrics["tvd"]["1-way"]["count"] == 3
