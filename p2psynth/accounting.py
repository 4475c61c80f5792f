"""Zero-concentrated differential privacy (zCDP) accounting.

Every release is charged in rho (Bun and Steinke, 2016: "Concentrated
Differential Privacy: Simplifications, Extensions, and Lower Bounds"). zCDP
composes by adding rho, and a Gaussian or discrete Gaussian mechanism with
noise scale sigma on a query of L2 sensitivity Delta is
``Delta**2 / (2 * sigma**2)``-zCDP (Canonne, Kamath and Steinke, 2020, show
this for the discrete Gaussian). Operators state budgets as (epsilon, delta),
so this module converts between the two.

Conversion rho -> (epsilon, delta). Canonne, Kamath and Steinke (2020, "The
Discrete Gaussian for Differential Privacy", Corollary 13) show that a
rho-zCDP mechanism is (epsilon, delta)-DP for

    delta = inf over alpha > 1 of
            exp((alpha - 1) * (alpha * rho - epsilon)) / (alpha - 1)
            * (1 - 1/alpha) ** alpha.

Solving for epsilon at a fixed order alpha = 1 + t gives

    epsilon(t) = (1 + t) * rho + log(1/delta) / t - log1p(t) / t
                 - log1p(1/t),

and *every* t > 0 yields a valid epsilon, so the tight value is the infimum
over t. It is never larger than the classic bound
``rho + 2 * sqrt(rho * log(1/delta))`` (Bun and Steinke, 2016), which is
the minimum of the first two terms alone (the last two are negative).

Which way each approximation errs (every one overstates the privacy loss):

- The infimum is searched numerically (a grid over log t, then golden-section
  refinement). A search that misses the optimum returns epsilon(t) at a
  worse t, which is still a valid, only looser, bound.
- epsilon(t) is evaluated in float64 at the same float t in every term.
  Each of the four terms is computed to within a few units in the last
  place and summed with math.fsum, so the rounding error is below about
  1e-15 of the sum of the terms' magnitudes. The result is raised by 1e-12
  of that sum, which covers the rounding error with a wide margin. In this
  form the terms cancel little unless epsilon is close to 0, so the slack
  is a small multiple of 1e-12 * epsilon.
- A negative epsilon (possible when delta is close to 1) is clamped up to 0.
- rho_from_epsilon bisects for the largest rho whose *computed*
  epsilon_from_rho is at most the target. The invariant is checked on the
  returned value itself, so it never exceeds the budget.
- rho_of_gaussian computes Delta**2 / (2 * sigma**2) exactly with fractions
  and rounds the float result up. sigma_for_rho rounds sigma up until that
  exact rho is at most the requested one.

OpenDP's ``cdp_epsilon`` implements the same conversion with a bisection on
alpha; this module is written independently and evaluates the t form above.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

from p2psynth.errors import PrivacyError

# Relative slack added to a float evaluation of epsilon(t), as a fraction of
# the sum of the magnitudes of its terms (see the module docstring).
_EVALUATION_SLACK = 1e-12

# Grid over u = log(t) for the first stage of the search: centred on the
# optimum of the classic bound, +-_GRID_HALF_WIDTH in natural-log units.
_GRID_HALF_WIDTH = 30.0
_GRID_STEP = 0.25
_GOLDEN_ITERATIONS = 120

# Bounds on the bisection in rho_from_epsilon.
_MAX_DOUBLINGS = 2_000
_MAX_BISECTIONS = 2_000


def epsilon_from_rho(rho: float, delta: float) -> float:
    """Convert rho-zCDP to the smallest epsilon found for (epsilon, delta)-DP.

    Uses the conversion of Canonne, Kamath and Steinke (2020, Corollary 13).
    The result is an upper bound on the exact infimum, never below it.
    Raises PrivacyError unless rho is finite and >= 0 and 0 < delta < 1.
    """
    rho = _check_rho(rho)
    delta = _check_delta(delta)
    if rho == 0.0:
        return 0.0

    epsilon, _ = _minimize_epsilon(rho, delta)
    return epsilon


def rho_from_epsilon(epsilon: float, delta: float) -> float:
    """Return the largest rho whose epsilon_from_rho(rho, delta) is <= epsilon.

    Bisection keeps the invariant ``epsilon_from_rho(low, delta) <= epsilon``,
    so the returned rho never buys more than the stated (epsilon, delta).
    Raises PrivacyError unless epsilon is finite and > 0 and 0 < delta < 1.
    """
    epsilon = _check_positive("epsilon", epsilon)
    delta = _check_delta(delta)

    # Lower end: the classic bound inverted. The tight epsilon is never larger
    # than the classic one, so this rho is admissible; the check guards the
    # float evaluation all the same.
    log_inverse_delta = -math.log(delta)
    classic_rho = (math.sqrt(log_inverse_delta + epsilon) - math.sqrt(log_inverse_delta)) ** 2
    low = classic_rho if epsilon_from_rho(classic_rho, delta) <= epsilon else 0.0

    # Upper end: double until the epsilon exceeds the target.
    high = max(2.0 * low, epsilon, math.ulp(0.0))
    for _ in range(_MAX_DOUBLINGS):
        if epsilon_from_rho(high, delta) > epsilon:
            break
        low = high
        high *= 2.0
    else:
        raise PrivacyError(
            f"cannot find a rho for epsilon={epsilon!r}, delta={delta!r}: "
            "the conversion does not exceed epsilon for any finite rho"
        )

    # Bisect until low and high are adjacent floats.
    for _ in range(_MAX_BISECTIONS):
        middle = low + (high - low) / 2.0
        if middle <= low or middle >= high:
            break
        if epsilon_from_rho(middle, delta) <= epsilon:
            low = middle
        else:
            high = middle
    return low


def rho_of_gaussian(*, sigma: float, l2_sensitivity: float) -> float:
    """Return the zCDP rho of Gaussian noise: l2_sensitivity**2 / (2 * sigma**2).

    Holds for the continuous and the discrete Gaussian. The value is computed
    exactly from the two floats and rounded up to the next float.
    Raises PrivacyError unless both arguments are finite and > 0.
    """
    sigma = _check_positive("sigma", sigma)
    l2_sensitivity = _check_positive("l2_sensitivity", l2_sensitivity)

    exact = Fraction(l2_sensitivity) ** 2 / (2 * Fraction(sigma) ** 2)
    return _float_at_least(exact)


def sigma_for_rho(*, rho: float, l2_sensitivity: float) -> float:
    """Return the smallest float sigma whose rho_of_gaussian is at most rho.

    That is sigma = l2_sensitivity / sqrt(2 * rho), rounded up so that the
    exact l2_sensitivity**2 / (2 * sigma**2) does not exceed rho.
    Raises PrivacyError unless both arguments are finite and > 0.
    """
    rho = _check_positive("rho", rho)
    l2_sensitivity = _check_positive("l2_sensitivity", l2_sensitivity)

    sigma = l2_sensitivity / math.sqrt(2.0 * rho)
    if not math.isfinite(sigma) or sigma == 0.0:
        raise PrivacyError(
            f"sigma for rho={rho!r} and l2_sensitivity={l2_sensitivity!r} is "
            f"{sigma!r}, outside the float range: choose values whose ratio is moderate"
        )

    # Exact check: l2**2 <= 2 * rho * sigma**2. Move sigma up one float at a
    # time while it fails and down while the next smaller float still passes.
    rho_exact = Fraction(rho)
    l2_squared = Fraction(l2_sensitivity) ** 2

    def admissible(candidate: float) -> bool:
        return l2_squared <= 2 * rho_exact * Fraction(candidate) ** 2

    for _ in range(64):
        if admissible(sigma):
            break
        sigma = math.nextafter(sigma, math.inf)
    else:
        raise PrivacyError(f"failed to round sigma={sigma!r} for rho={rho!r} upward")
    for _ in range(64):
        smaller = math.nextafter(sigma, 0.0)
        if smaller <= 0.0 or not admissible(smaller):
            break
        sigma = smaller
    return sigma


def epsilon_at_order(rho: float, delta: float, order_minus_one: float) -> float:
    """Return the epsilon bound at Renyi order alpha = 1 + order_minus_one.

    Any order_minus_one > 0 gives a valid (epsilon, delta)-DP guarantee for a
    rho-zCDP mechanism. The float result is raised by a slack that covers its
    rounding error and clamped at 0, so it is never below the exact bound.
    """
    rho = _check_rho(rho)
    delta = _check_delta(delta)
    if not (order_minus_one > 0.0 and math.isfinite(order_minus_one)):
        raise PrivacyError(
            f"order_minus_one must be finite and > 0, got {order_minus_one!r}"
        )
    return _epsilon_at(rho, -math.log(delta), order_minus_one)


def _epsilon_at(rho: float, log_inverse_delta: float, t: float) -> float:
    # log(t) - (1 + 1/t) * log1p(t) rewritten as -log1p(1/t) - log1p(t)/t,
    # which avoids cancelling two terms of about log(t) when t is large.
    terms = (
        (1.0 + t) * rho,
        log_inverse_delta / t,
        -math.log1p(t) / t,
        -math.log1p(1.0 / t),
    )
    value = math.fsum(terms)
    slack = _EVALUATION_SLACK * math.fsum(abs(term) for term in terms)
    return max(0.0, value + slack)


def _minimize_epsilon(rho: float, delta: float) -> tuple[float, float]:
    """Return (epsilon, t) with epsilon = _epsilon_at(..., t) near its infimum."""
    log_inverse_delta = -math.log(delta)

    def objective(u: float) -> float:
        return _epsilon_at(rho, log_inverse_delta, math.exp(u))

    # Stage 1: a coarse grid over u = log t around the classic optimum
    # t = sqrt(log(1/delta) / rho), which the tight optimum lies close to.
    centre = 0.5 * (math.log(log_inverse_delta) - math.log(rho))
    steps = int(2 * _GRID_HALF_WIDTH / _GRID_STEP)
    grid = [centre - _GRID_HALF_WIDTH + i * _GRID_STEP for i in range(steps + 1)]
    values = [objective(u) for u in grid]
    best = min(range(len(grid)), key=values.__getitem__)

    # Stage 2: golden-section search between the grid neighbours of the best
    # point. It only ever keeps a point it has evaluated, so it cannot return
    # anything worse than the grid minimum.
    low = grid[max(best - 1, 0)]
    high = grid[min(best + 1, len(grid) - 1)]
    best_u, best_value = grid[best], values[best]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    left = high - ratio * (high - low)
    right = low + ratio * (high - low)
    left_value, right_value = objective(left), objective(right)
    for _ in range(_GOLDEN_ITERATIONS):
        if left_value <= right_value:
            high, right, right_value = right, left, left_value
            left = high - ratio * (high - low)
            left_value = objective(left)
        else:
            low, left, left_value = left, right, right_value
            right = low + ratio * (high - low)
            right_value = objective(right)
        for u, value in ((left, left_value), (right, right_value)):
            if value < best_value:
                best_u, best_value = u, value
    return best_value, math.exp(best_u)


def _float_at_least(value: Fraction) -> float:
    """Return the smallest float >= value (value must be within float range)."""
    result = float(value)
    if Fraction(result) < value:
        result = math.nextafter(result, math.inf)
    return result


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise PrivacyError(f"{name} must be finite, got {value!r}")
    return result


def _check_rho(rho: object) -> float:
    result = _check_number("rho", rho)
    if result < 0.0:
        raise PrivacyError(f"rho must be >= 0, got {rho!r}")
    return result


def _check_delta(delta: object) -> float:
    result = _check_number("delta", delta)
    if not 0.0 < result < 1.0:
        raise PrivacyError(
            f"delta must be in the open interval (0, 1), got {delta!r}; "
            "typical values are below 1/rows, such as 1e-9"
        )
    return result


def _check_positive(name: str, value: object) -> float:
    result = _check_number(name, value)
    if result <= 0.0:
        raise PrivacyError(f"{name} must be > 0, got {value!r}")
    return result
