"""Tests of zCDP accounting against values computed independently here.

The reference values use the delta form of the conversion of Canonne,
Kamath and Steinke (2020, Corollary 13),

    delta(alpha, epsilon) = exp((alpha - 1) * (alpha * rho - epsilon))
                            / (alpha - 1) * (1 - 1/alpha) ** alpha,

evaluated with 60-digit decimals, and a brute-force float search over alpha
of the same bound solved for epsilon. The module evaluates a third,
rearranged form, so an algebra slip in any of them shows up as a mismatch.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest

from p2psynth.accounting import (
    _minimize_epsilon,
    epsilon_at_order,
    epsilon_from_rho,
    rho_from_epsilon,
    rho_of_gaussian,
    sigma_for_rho,
)
from p2psynth.errors import PrivacyError

CASES = [
    (1e-12, 1e-9),
    (1e-6, 1e-6),
    (1e-3, 1e-9),
    (0.015, 1e-9),
    (0.1, 1e-5),
    (0.5, 1e-9),
    (1.0, 1e-3),
    (10.0, 1e-12),
    (1e4, 1e-300),
    (0.3, 0.5),
    (5.0, 0.9),
]


def delta_at(rho: float, epsilon: float, alpha: Decimal) -> Decimal:
    """Return the delta of Corollary 13 at order alpha, with 60-digit decimals."""
    with localcontext() as context:
        context.prec = 60
        rho_d, epsilon_d = Decimal(rho), Decimal(epsilon)
        exponent = (alpha - 1) * (alpha * rho_d - epsilon_d) + alpha * (1 - 1 / alpha).ln()
        return exponent.exp() / (alpha - 1)


def brute_force_epsilon(rho: float, delta: float) -> float:
    """Return the minimum over a fine grid of alpha of the bound solved for epsilon."""
    log_inverse_delta = math.log(1.0 / delta)
    best = math.inf
    # t = alpha - 1 from 1e-10 to 1e10, 2000 points per decade. log1p keeps
    # log(1 - 1/alpha) and log(alpha) accurate for alpha near 1 and large.
    for i in range(20 * 2000 + 1):
        t = 10.0 ** (-10.0 + i / 2000.0)
        alpha = 1.0 + t
        epsilon = alpha * rho + (
            log_inverse_delta + t * math.log1p(-1.0 / alpha) - math.log1p(t)
        ) / t
        best = min(best, epsilon)
    return max(best, 0.0)


def classic_epsilon(rho: float, delta: float) -> float:
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


@pytest.mark.parametrize(("rho", "delta"), CASES)
def test_epsilon_is_valid_at_its_order(rho: float, delta: float) -> None:
    epsilon, order_minus_one = _minimize_epsilon(rho, delta)
    assert epsilon == epsilon_from_rho(rho, delta)

    # The returned epsilon must satisfy Corollary 13 with delta to spare,
    # evaluated without float rounding.
    alpha = 1 + Decimal(order_minus_one)
    assert delta_at(rho, epsilon, alpha) <= Decimal(delta)


@pytest.mark.parametrize(("rho", "delta"), CASES)
def test_epsilon_matches_brute_force(rho: float, delta: float) -> None:
    epsilon = epsilon_from_rho(rho, delta)
    reference = brute_force_epsilon(rho, delta)

    # The optimizer finds the infimum at least as well as a fine grid, up to
    # the slack it adds on purpose (1e-12 relative).
    assert epsilon <= reference * (1 + 1e-9) + 1e-15
    assert epsilon >= reference * (1 - 1e-6) - 1e-12


@pytest.mark.parametrize(("rho", "delta"), CASES)
def test_epsilon_below_classic_bound(rho: float, delta: float) -> None:
    assert epsilon_from_rho(rho, delta) <= classic_epsilon(rho, delta)


def test_epsilon_known_values() -> None:
    # rho = 0.5, delta = 1e-9: the classic bound gives 6.938; the tight one
    # is lower. Reference computed by brute_force_epsilon above.
    assert epsilon_from_rho(0.5, 1e-9) == pytest.approx(brute_force_epsilon(0.5, 1e-9), rel=1e-6)
    assert 6.3 < epsilon_from_rho(0.5, 1e-9) < 6.6

    # rho-zCDP with rho = 0 is 0-DP for any delta.
    assert epsilon_from_rho(0.0, 1e-9) == 0.0
    assert epsilon_from_rho(0, 0.5) == 0.0


def test_epsilon_clamped_at_zero() -> None:
    # With delta close to 1 the bound goes negative; the result stays at 0.
    assert epsilon_from_rho(1e-4, 0.9) == 0.0


def test_epsilon_at_order_is_upper_bound() -> None:
    rho, delta = 0.2, 1e-7
    best = epsilon_from_rho(rho, delta)
    for order_minus_one in (1e-3, 0.1, 1.0, 3.0, 10.0, 1e3):
        assert epsilon_at_order(rho, delta, order_minus_one) >= best


def test_epsilon_monotone_in_rho() -> None:
    rhos = [10.0 ** (k / 8.0) for k in range(-80, 33)]
    epsilons = [epsilon_from_rho(rho, 1e-9) for rho in rhos]
    for smaller, larger in zip(epsilons, epsilons[1:]):
        assert smaller < larger


def test_epsilon_monotone_in_delta() -> None:
    deltas = [10.0 ** (-k / 4.0) for k in range(4, 80)]
    epsilons = [epsilon_from_rho(0.1, delta) for delta in deltas]
    for looser, tighter in zip(epsilons, epsilons[1:]):
        assert looser < tighter


@pytest.mark.parametrize(
    ("epsilon", "delta"),
    [(0.01, 1e-9), (0.1, 1e-6), (1.0, 1e-9), (3.0, 1e-5), (10.0, 1e-12), (50.0, 1e-300), (0.5, 0.6)],
)
def test_rho_from_epsilon_round_trip(epsilon: float, delta: float) -> None:
    rho = rho_from_epsilon(epsilon, delta)
    assert rho > 0.0

    spent = epsilon_from_rho(rho, delta)
    assert spent <= epsilon
    assert spent >= epsilon * (1 - 1e-9)

    # Largest: the next float up already exceeds the target.
    assert epsilon_from_rho(math.nextafter(rho, math.inf), delta) > epsilon


def test_rho_from_epsilon_beats_classic() -> None:
    # The tight conversion buys more rho than inverting the classic bound.
    epsilon, delta = 1.0, 1e-9
    log_inverse_delta = math.log(1.0 / delta)
    classic_rho = (math.sqrt(log_inverse_delta + epsilon) - math.sqrt(log_inverse_delta)) ** 2
    assert classic_epsilon(classic_rho, delta) == pytest.approx(epsilon)
    assert rho_from_epsilon(epsilon, delta) > classic_rho * 1.2


def test_rho_from_epsilon_monotone() -> None:
    rhos = [rho_from_epsilon(epsilon, 1e-9) for epsilon in (0.1, 0.5, 1.0, 2.0, 8.0)]
    assert rhos == sorted(rhos)
    assert len(set(rhos)) == len(rhos)


@pytest.mark.parametrize(
    ("sigma", "l2_sensitivity"), [(1.0, 1.0), (3.3, 1.4142135623730951), (1e4, 2.0), (0.1, 7.0)]
)
def test_rho_of_gaussian_rounds_up(sigma: float, l2_sensitivity: float) -> None:
    rho = rho_of_gaussian(sigma=sigma, l2_sensitivity=l2_sensitivity)
    exact = Fraction(l2_sensitivity) ** 2 / (2 * Fraction(sigma) ** 2)
    assert Fraction(rho) >= exact
    assert Fraction(math.nextafter(rho, 0.0)) < exact


@pytest.mark.parametrize(
    ("rho", "l2_sensitivity"), [(0.1, 1.0), (0.015, 1.4142135623730951), (1e-6, 2.0), (3.0, 7.0)]
)
def test_sigma_for_rho_is_smallest_admissible(rho: float, l2_sensitivity: float) -> None:
    sigma = sigma_for_rho(rho=rho, l2_sensitivity=l2_sensitivity)
    assert sigma == pytest.approx(l2_sensitivity / math.sqrt(2 * rho), rel=1e-15)

    def exact_rho(candidate: float) -> Fraction:
        return Fraction(l2_sensitivity) ** 2 / (2 * Fraction(candidate) ** 2)

    assert exact_rho(sigma) <= Fraction(rho)
    assert exact_rho(math.nextafter(sigma, 0.0)) > Fraction(rho)
    assert rho_of_gaussian(sigma=sigma, l2_sensitivity=l2_sensitivity) <= rho


@pytest.mark.parametrize(
    ("call", "bad_text"),
    [
        (lambda: epsilon_from_rho(-0.1, 1e-9), "-0.1"),
        (lambda: epsilon_from_rho(math.nan, 1e-9), "nan"),
        (lambda: epsilon_from_rho(math.inf, 1e-9), "inf"),
        (lambda: epsilon_from_rho(True, 1e-9), "True"),
        (lambda: epsilon_from_rho("0.1", 1e-9), "'0.1'"),
        (lambda: epsilon_from_rho(0.1, 0.0), "(0, 1)"),
        (lambda: epsilon_from_rho(0.1, 1.0), "(0, 1)"),
        (lambda: epsilon_from_rho(0.1, -1e-9), "-1e-09"),
        (lambda: epsilon_from_rho(0.1, math.nan), "nan"),
        (lambda: rho_from_epsilon(0.0, 1e-9), "epsilon must be > 0"),
        (lambda: rho_from_epsilon(-1.0, 1e-9), "-1.0"),
        (lambda: rho_from_epsilon(math.inf, 1e-9), "inf"),
        (lambda: rho_from_epsilon(1.0, 2.0), "(0, 1)"),
        (lambda: rho_of_gaussian(sigma=0.0, l2_sensitivity=1.0), "sigma must be > 0"),
        (lambda: rho_of_gaussian(sigma=1.0, l2_sensitivity=-1.0), "l2_sensitivity"),
        (lambda: rho_of_gaussian(sigma=math.nan, l2_sensitivity=1.0), "nan"),
        (lambda: sigma_for_rho(rho=0.0, l2_sensitivity=1.0), "rho must be > 0"),
        (lambda: sigma_for_rho(rho=0.1, l2_sensitivity=math.inf), "inf"),
        (lambda: epsilon_at_order(0.1, 1e-9, 0.0), "order_minus_one"),
    ],
)
def test_invalid_inputs_raise(call, bad_text: str) -> None:
    with pytest.raises(PrivacyError) as info:
        call()
    assert bad_text in str(info.value)
