"""Tests of the discrete Gaussian sampler and its ChaCha20 random source.

Distribution tests compare 10**6 draws with the exact probability mass
function P[Y = y] proportional to exp(-y**2 / (2 * sigma**2)), computed here
from the sigma**2 the sampler reports. Seeds are fixed, so every test is
deterministic; the threshold p > 1e-4 is one that a correct sampler passes
for all but about one seed in ten thousand.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

import p2psynth.noise as noise
from p2psynth.errors import PrivacyError
from p2psynth.noise import (
    MAX_SIGMA,
    SecureRandom,
    discrete_gaussian,
    exact_sigma,
    rational_sigma_squared,
)

DRAWS = 10**6
P_VALUE_FLOOR = 1e-4


def seed(label: int) -> bytes:
    return label.to_bytes(32, "little")


def exact_pmf(sigma_squared: float, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (support, probabilities) of N_Z(0, sigma_squared) on [-half_width, half_width]."""
    support = np.arange(-half_width, half_width + 1)
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2.0 * sigma_squared))
    return support, weights / weights.sum()


def chi_square_p_value(
    draws: np.ndarray, support: np.ndarray, pmf: np.ndarray, *, min_expected: float = 5.0
) -> float:
    """Return the chi-square p-value of draws against pmf, pooling bins to expected >= min_expected."""
    assert draws.min() >= support[0]
    assert draws.max() <= support[-1]
    observed = np.bincount(draws - support[0], minlength=support.size).astype(np.float64)
    expected = pmf * draws.size

    # Pool neighbouring bins from left to right until each pool reaches
    # min_expected. A short remainder at the right end joins the last pool.
    cumulative_expected = np.cumsum(expected)
    cumulative_observed = np.cumsum(observed)
    edges = []
    last = 0.0
    for index, total in enumerate(cumulative_expected):
        if total - last >= min_expected:
            edges.append(index)
            last = total
    edges[-1] = support.size - 1
    pooled_expected = np.diff(np.concatenate([[0.0], cumulative_expected[edges]]))
    pooled_observed = np.diff(np.concatenate([[0.0], cumulative_observed[edges]]))
    assert pooled_expected.min() >= min_expected
    assert pooled_observed.sum() == draws.size

    statistic = float(np.sum((pooled_observed - pooled_expected) ** 2 / pooled_expected))
    return float(stats.chi2.sf(statistic, pooled_expected.size - 1))


@pytest.fixture(scope="module", params=[0.5, 3.0, 100.0, 1e4], ids=lambda s: f"sigma={s:g}")
def sample(request):
    sigma = request.param
    draws = discrete_gaussian(sigma=sigma, size=DRAWS, random=SecureRandom(seed=seed(7)))
    sigma_squared = float(rational_sigma_squared(sigma))
    support, pmf = exact_pmf(sigma_squared, math.ceil(40 * math.sqrt(sigma_squared)) + 10)
    return sigma, draws, support, pmf


def test_gaussian_frequencies_match_pmf(sample) -> None:
    sigma, draws, support, pmf = sample
    assert draws.dtype == np.int64
    assert draws.shape == (DRAWS,)
    assert chi_square_p_value(draws, support, pmf) > P_VALUE_FLOOR
    # Coarse pools have more power against a wrong scale when sigma is large.
    assert chi_square_p_value(draws, support, pmf, min_expected=2000.0) > P_VALUE_FLOOR


def test_gaussian_mean_and_variance(sample) -> None:
    sigma, draws, support, pmf = sample
    values = support.astype(np.float64)
    exact_variance = float(np.sum(values**2 * pmf))
    fourth_moment = float(np.sum(values**4 * pmf))

    # The exact variance is slightly below sigma**2 (much below for small sigma).
    assert exact_variance < sigma**2 * (1 + 1e-7)

    mean_error = math.sqrt(exact_variance / DRAWS)
    variance_error = math.sqrt((fourth_moment - exact_variance**2) / DRAWS)
    assert abs(draws.mean()) < 5 * mean_error
    assert abs(draws.var() - exact_variance) < 5 * variance_error


@pytest.mark.parametrize("sample", [0.5], indirect=True, ids=["sigma=0.5"])
def test_small_sigma_variance_below_sigma_squared(sample) -> None:
    sigma, draws, support, pmf = sample
    values = support.astype(np.float64)
    exact_variance = float(np.sum(values**2 * pmf))
    variance_error = math.sqrt((float(np.sum(values**4 * pmf)) - exact_variance**2) / DRAWS)

    # For sigma = 0.5 the gap to sigma**2 is about 0.035, far beyond sampling error,
    # so the variance check above would catch a sampler with variance sigma**2.
    assert sigma**2 - exact_variance > 50 * variance_error
    assert sigma**2 - draws.var() > 40 * variance_error


def test_gaussian_symmetric_around_zero(sample) -> None:
    sigma, draws, support, pmf = sample
    positive = int(np.count_nonzero(draws > 0))
    negative = int(np.count_nonzero(draws < 0))
    result = stats.binomtest(positive, positive + negative, 0.5)
    assert result.pvalue > P_VALUE_FLOOR


def test_exact_path_matches_pmf() -> None:
    # Route every proposal above t through the big-integer acceptance step
    # to check that it samples the same distribution as the int64 path.
    sigma = 3.0
    parameters = dataclasses.replace(noise._parameters(sigma), max_common_magnitude=noise._parameters(sigma).t)
    random = SecureRandom(seed=seed(11))
    chunks = []
    accepted = 0
    for _ in range(20):
        chunk = noise._gaussian_candidates(20_000, parameters, random)
        chunks.append(chunk)
        accepted += chunk.size
        if accepted >= 60_000:
            break
    draws = np.concatenate(chunks)
    assert draws.size >= 60_000
    assert np.count_nonzero(np.abs(draws) > parameters.t) > 5_000

    support, pmf = exact_pmf(float(rational_sigma_squared(sigma)), 200)
    assert chi_square_p_value(draws, support, pmf) > P_VALUE_FLOOR


def test_bernoulli_exp_exact_frequency() -> None:
    random = SecureRandom(seed=seed(12))
    gamma = Fraction(7, 3)
    trials = 40_000
    successes = sum(noise._bernoulli_exp_exact(gamma, random) for _ in range(trials))
    result = stats.binomtest(successes, trials, math.exp(-7 / 3))
    assert result.pvalue > P_VALUE_FLOOR


def test_bernoulli_exp_fraction_frequency() -> None:
    random = SecureRandom(seed=seed(13))
    trials = 200_000
    numerators = np.full(trials, 5, dtype=np.int64)
    successes = int(noise._bernoulli_exp_fraction(numerators, 8, random).sum())
    result = stats.binomtest(successes, trials, math.exp(-5 / 8))
    assert result.pvalue > P_VALUE_FLOOR


def test_geometric_frequencies() -> None:
    random = SecureRandom(seed=seed(14))
    draws = noise._geometric_exp_minus_one(200_000, random)
    # P[V = v] = (1 - e**-1) * e**-v.
    support = np.arange(0, 60)
    pmf = (1 - math.exp(-1)) * np.exp(-support.astype(np.float64))
    pmf /= pmf.sum()
    assert chi_square_p_value(draws, support, pmf) > P_VALUE_FLOOR


def test_same_seed_same_draws() -> None:
    first = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom(seed=seed(1)))
    second = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom(seed=seed(1)))
    np.testing.assert_array_equal(first, second)


def test_different_seeds_differ() -> None:
    first = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom(seed=seed(1)))
    second = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom(seed=seed(2)))
    assert not np.array_equal(first, second)


def test_unseeded_sources_differ() -> None:
    first = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom())
    second = discrete_gaussian(sigma=10.0, size=1000, random=SecureRandom())
    assert not np.array_equal(first, second)


def test_successive_draws_differ() -> None:
    random = SecureRandom(seed=seed(3))
    first = discrete_gaussian(sigma=10.0, size=1000, random=random)
    second = discrete_gaussian(sigma=10.0, size=1000, random=random)
    assert not np.array_equal(first, second)


def test_output_shapes() -> None:
    random = SecureRandom(seed=seed(4))
    matrix = discrete_gaussian(sigma=2.0, size=(3, 4, 5), random=random)
    assert matrix.shape == (3, 4, 5)
    assert matrix.dtype == np.int64
    assert discrete_gaussian(sigma=2.0, size=0, random=random).shape == (0,)
    assert discrete_gaussian(sigma=2.0, size=(2, 0), random=random).shape == (2, 0)
    assert discrete_gaussian(sigma=np.float64(2.0), size=np.int64(3), random=random).shape == (3,)


@pytest.mark.parametrize("sigma", [1e5, 1e7, MAX_SIGMA])
def test_large_sigma_draws(sigma: float) -> None:
    draws = discrete_gaussian(sigma=sigma, size=20_000, random=SecureRandom(seed=seed(5)))
    sigma_used = exact_sigma(sigma)
    assert abs(draws.mean()) < 5 * sigma_used / math.sqrt(draws.size)
    assert draws.std() == pytest.approx(sigma_used, rel=0.05)
    # Integers far beyond float64's exact range would show rounding: none here.
    assert np.all(np.abs(draws) < 20 * sigma_used)


def test_tiny_sigma_rounds_up() -> None:
    sigma = 1e-12
    used = exact_sigma(sigma)
    assert used >= sigma
    assert used < 1e-8
    draws = discrete_gaussian(sigma=sigma, size=1000, random=SecureRandom(seed=seed(6)))
    assert np.all(draws == 0)


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 3.0, 10.0, 100.0, 12345.678, 1e5, 4e7, MAX_SIGMA])
def test_exact_sigma_rounds_up(sigma: float) -> None:
    used = exact_sigma(sigma)
    variance = rational_sigma_squared(sigma)
    assert variance >= Fraction(sigma) ** 2
    assert Fraction(used) ** 2 <= variance
    assert Fraction(math.nextafter(used, math.inf)) ** 2 > variance
    assert used >= sigma
    assert used / sigma - 1 < 3e-8


def test_exact_sigma_sweep_bounded() -> None:
    for sigma in np.geomspace(0.25, MAX_SIGMA, 400):
        ratio = exact_sigma(float(sigma)) / float(sigma)
        assert 1.0 <= ratio < 1 + 3e-8
    for sigma in np.geomspace(0.01, 0.25, 100):
        ratio = exact_sigma(float(sigma)) / float(sigma)
        assert 1.0 <= ratio < 1 + 4e-7


@pytest.mark.parametrize(
    "sigma", [0.0, -1.0, math.nan, math.inf, -math.inf, MAX_SIGMA * 1.0001, 1e9, "3", None, True]
)
def test_bad_sigma_raises(sigma) -> None:
    with pytest.raises(PrivacyError) as info:
        discrete_gaussian(sigma=sigma, size=3, random=SecureRandom(seed=seed(8)))
    assert "sigma" in str(info.value)
    assert repr(sigma) in str(info.value)
    with pytest.raises(PrivacyError):
        exact_sigma(sigma)


@pytest.mark.parametrize("size", [-1, 2.5, (2, -1), "3", [3], (2, 2.0)])
def test_bad_size_raises(size) -> None:
    with pytest.raises(ValueError, match="size"):
        discrete_gaussian(sigma=1.0, size=size, random=SecureRandom(seed=seed(8)))


def test_non_secure_random_rejected() -> None:
    with pytest.raises(PrivacyError, match="SecureRandom"):
        discrete_gaussian(sigma=1.0, size=3, random=np.random.default_rng(0))


@pytest.mark.parametrize("bad_seed", [b"", bytes(31), bytes(33), "x" * 32, 12345])
def test_bad_seed_raises(bad_seed) -> None:
    with pytest.raises(PrivacyError, match="seed"):
        SecureRandom(seed=bad_seed)


def test_keystream_matches_chacha20_vector() -> None:
    # ChaCha20 with an all-zero key, nonce and counter: the first keystream
    # block of RFC 8439, appendix A.1, test vector 1.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    assert SecureRandom(seed=bytes(32)).random_bytes(64) == expected


def test_keystream_split_reads_match() -> None:
    whole = SecureRandom(seed=seed(9)).random_bytes(1000)
    random = SecureRandom(seed=seed(9))
    parts = random.random_bytes(1) + random.random_bytes(0) + random.random_bytes(500)
    parts += random.random_bytes(499)
    assert parts == whole


def test_keystream_moves_to_next_nonce(monkeypatch) -> None:
    monkeypatch.setattr(noise, "_BYTES_PER_NONCE", 128)
    key = seed(10)
    data = SecureRandom(seed=key).random_bytes(300)

    def keystream(nonce_index: int, length: int) -> bytes:
        nonce = bytes(4) + nonce_index.to_bytes(12, "little")
        return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(length))

    assert data[:128] == keystream(0, 128)
    assert data[128:256] == keystream(1, 128)
    assert data[256:] == keystream(2, 44)


def test_randbelow_uniform_small() -> None:
    random = SecureRandom(seed=seed(20))
    draws = random.randbelow(3, size=300_000)
    assert draws.dtype == np.int64
    counts = np.bincount(draws, minlength=3)
    assert counts.size == 3
    assert stats.chisquare(counts).pvalue > P_VALUE_FLOOR


def test_randbelow_uniform_wide() -> None:
    # A bound above 2**32 takes the 64-bit path; a bound just above a power
    # of two rejects almost half the words.
    random = SecureRandom(seed=seed(21))
    upper = (1 << 40) + 7
    draws = random.randbelow(upper, size=200_000)
    assert draws.min() >= 0
    assert draws.max() < upper
    deciles = np.bincount((draws // (upper // 10 + 1)).astype(np.int64), minlength=10)
    assert stats.chisquare(deciles).pvalue > P_VALUE_FLOOR


def test_randbelow_largest_bound() -> None:
    random = SecureRandom(seed=seed(22))
    upper = np.iinfo(np.int64).max
    draws = random.randbelow(upper, size=10_000)
    assert draws.min() >= 0
    assert np.count_nonzero(draws > upper // 2) > 4_000


def test_randbelow_array_bounds() -> None:
    random = SecureRandom(seed=seed(23))
    bounds = np.tile(np.array([1, 2, 3, 7, 1000, (1 << 33) + 1], dtype=np.int64), 20_000)
    draws = random.randbelow(bounds)
    assert draws.shape == bounds.shape
    assert np.all(draws >= 0)
    assert np.all(draws < bounds)
    assert np.all(draws[bounds == 1] == 0)
    sevens = draws[bounds == 7]
    assert stats.chisquare(np.bincount(sevens, minlength=7)).pvalue > P_VALUE_FLOOR


def test_randbelow_shapes() -> None:
    random = SecureRandom(seed=seed(24))
    assert random.randbelow(5).shape == ()
    assert random.randbelow(5, size=(2, 3)).shape == (2, 3)
    assert random.randbelow(np.array([[2, 3]], dtype=np.uint32)).shape == (1, 2)
    assert random.randbelow(np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize(
    ("upper", "size"),
    [
        (0, None),
        (-3, None),
        (1 << 63, None),
        (2.0, None),
        (True, None),
        (np.array([1, 0]), None),
        (np.array([1.0, 2.0]), None),
        (np.array([2, 3]), 2),
        (3, -1),
    ],
)
def test_randbelow_bad_arguments(upper, size) -> None:
    with pytest.raises(ValueError):
        SecureRandom(seed=seed(25)).randbelow(upper, size=size)


def test_randbelow_int_big_bounds() -> None:
    random = SecureRandom(seed=seed(26))
    upper = (1 << 100) + 3
    draws = [random.randbelow_int(upper) for _ in range(4000)]
    assert all(0 <= value < upper for value in draws)
    deciles = np.bincount([value * 10 // upper for value in draws], minlength=10)
    assert stats.chisquare(deciles).pvalue > P_VALUE_FLOOR
    assert random.randbelow_int(1) == 0
    with pytest.raises(ValueError):
        random.randbelow_int(0)


def test_repr_hides_key() -> None:
    key = bytes(range(32))
    assert key.hex() not in repr(SecureRandom(seed=key))
    assert str(list(key)) not in repr(SecureRandom(seed=key))
