"""Exact discrete Gaussian noise over the integers, from a ChaCha20 random source.

Why not floating point. Mironov (2012, "On Significance of the Least
Significant Bits for Differential Privacy") showed that Laplace noise drawn
with floating-point arithmetic leaks: the set of floats the textbook sampler
can output depends on the true value, so an attacker who observes a released
float can sometimes rule out neighbouring inputs and the privacy guarantee
fails entirely. Rounding or snapping continuous noise fixes this only with
care and a loss in the guarantee. Counts are integers, so this module adds
integer noise drawn with exact integer and rational arithmetic: no float
ever touches a released value, and the output distribution is exactly the
discrete Gaussian with the rational sigma**2 that `rational_sigma_squared`
returns.

The sampler. Canonne, Kamath and Steinke (2020, "The Discrete Gaussian for
Differential Privacy", Algorithms 1 to 3; CKS below) sample N_Z(0, sigma**2), the
distribution with P[Y = y] proportional to exp(-y**2 / (2 * sigma**2)) on the
integers, by rejection from a discrete Laplace proposal:

1. Bernoulli(p) for a rational p = n/d: a uniform integer below d is < n.
2. Bernoulli(exp(-gamma)) for a rational gamma in [0, 1] (their Algorithm 1):
   draw A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first A_k = 0.
   The result is 1 when that k is odd.
3. Discrete Laplace with integer scale t (their Algorithm 2): U uniform in
   [0, t) kept with probability exp(-U/t), V geometric with
   P[V >= v] = exp(-v), X = U + t*V, and a random sign (a negative zero is
   rejected so that 0 is not counted twice).
4. With t = floor(sigma) + 1, a Laplace draw Y is accepted with probability
   exp(-(|Y| - sigma**2/t)**2 / (2 * sigma**2)) (their Algorithm 3).

Step 4 needs Bernoulli(exp(-gamma)) for a gamma whose exact numerator and
denominator exceed 64 bits once sigma is large. To keep the common path in
vectorized int64 arithmetic, sigma is represented as sigma * sqrt(2) = q / L
with integers q and L. Then sqrt(gamma) = |w| / c exactly, with
w = 2*L**2*t*|Y| - q**2 and c = 2*L*t*q. With j = ceil(|w| / c), the
acceptance probability is exp(-gamma / j**2) ** (j**2), and each of the j**2
factors is Bernoulli(exp(-(|w|/(c*j))**2)), drawn by Algorithm 1 with
Bernoulli((|w|/(c*j))**2 / k) as the product of two independent
Bernoulli(|w|/(c*j)) draws and one Bernoulli(1/k) draw. Every integer here
fits in int64 for |Y| up to a bound (`_Parameters.max_common_magnitude`,
at least 64*t for every supported sigma). A proposal beyond it, which has
probability at most exp(-64), is decided by the same step 4 in Python
fractions and big integers, so the output stays exact.

Which way each approximation errs (each one adds noise, so the privacy loss
computed from the requested sigma is overstated, never understated):

- sigma * sqrt(2) is rounded *up* to q / L. The relative increase of sigma
  is at most 1/q. q lies in [2**25, 2**26] for 0.25 < sigma < 4.7e7
  (increase below 3e-8). Below 0.25, q is about 2.7e8 * sigma (increase
  below 4e-7 down to sigma = 0.01), and above 4.7e7 it is about
  1.4 * sigma. A sigma below about 3.7e-9 becomes 3.7e-9, the finest step
  of the grid.
- `exact_sigma(sigma)` returns the largest float not above the sigma that
  is actually used, which is never below the requested one. Record that
  value: rho computed from it is at least the true rho.
- No other rounding happens: all draws use exact integer comparisons.

Randomness comes from one explicit `SecureRandom` object: a ChaCha20
keystream (the `cryptography` package, OpenSSL underneath) keyed from
os.urandom, or from a fixed 32-byte seed for reproducible tests. Uniform
integers below n use masking and rejection, so they carry no modulo bias.
numpy's global generator and Mersenne Twister are not used: their state can
be recovered from outputs, and a shared global state breaks reproducibility.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from p2psynth.errors import PrivacyError

logger = logging.getLogger(__name__)

# Largest supported sigma. The int64 bounds of the vectorized path hold up to
# about 1e9 (c = 2*L*t*q, about 2.8 * sigma**2 there, must stay below 2**62);
# the limit is set lower, far beyond the noise scale of any useful count.
MAX_SIGMA = 1e8

SEED_BYTES = 32

# Every rejection loop here ends with probability 1 after a few rounds on
# average. The cap only turns a broken random source into an error.
_MAX_ROUNDS = 10_000

# ChaCha20 (RFC 8439) has a 32-bit block counter, 256 GiB of keystream per
# nonce. The stream moves to the next nonce long before the counter wraps.
_BYTES_PER_NONCE = 1 << 36

# int64 headroom: every product of the common path stays below this.
_INT64_LIMIT = 1 << 62

# Targets for the rational representation sigma * sqrt(2) = q / L.
_Q_TARGET = 1 << 26
_SCALE_LIMIT_SQUARED = 1 << 55

# Number of Gaussian candidates drawn in one vectorized batch (memory bound).
_MAX_BATCH = 1 << 20


class SecureRandom:
    """Cryptographically secure random source: a ChaCha20 keystream.

    With ``seed=None`` the 32-byte key comes from os.urandom. A fixed seed
    makes every draw reproducible and is meant for tests only. The stream is
    not thread-safe: give each thread its own instance.
    """

    def __init__(self, *, seed: bytes | None = None) -> None:
        if seed is None:
            key = os.urandom(SEED_BYTES)
        elif not isinstance(seed, (bytes, bytearray)):
            raise PrivacyError(
                f"seed must be bytes or None, got {type(seed).__name__}; "
                "pass None in production so the key comes from os.urandom"
            )
        elif len(seed) != SEED_BYTES:
            raise PrivacyError(
                f"seed must be exactly {SEED_BYTES} bytes, got {len(seed)} bytes"
            )
        else:
            key = bytes(seed)
        self._key = key
        # Index of the current nonce and the keystream bytes used under it.
        self._nonce_index = 0
        self._bytes_used = 0
        self._encryptor = self._new_encryptor()

    def random_bytes(self, n_bytes: int) -> bytes:
        """Return the next n_bytes bytes of the keystream."""
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, numbers.Integral) or n_bytes < 0:
            raise ValueError(f"n_bytes must be an int >= 0, got {n_bytes!r}")
        chunks = []
        remaining = int(n_bytes)
        while remaining > 0:
            if self._bytes_used == _BYTES_PER_NONCE:
                self._nonce_index += 1
                self._bytes_used = 0
                self._encryptor = self._new_encryptor()
            take = min(remaining, _BYTES_PER_NONCE - self._bytes_used)
            chunks.append(self._encryptor.update(bytes(take)))
            self._bytes_used += take
            remaining -= take
        return b"".join(chunks)

    def randbelow(
        self, upper: int | np.ndarray, *, size: int | tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Draw uniform integers in [0, upper) as an int64 array, without bias.

        ``upper`` is an int or an integer array with every value in
        [1, 2**63 - 1]. For an int, ``size`` gives the shape (default: a
        0-d array). For an array, the result has its shape and ``size`` must
        be None.
        """
        bounds = _check_upper(upper, size)
        return self._below(bounds.ravel()).reshape(bounds.shape)

    def randbelow_int(self, upper: int) -> int:
        """Draw one uniform integer in [0, upper) for an int of any size."""
        if isinstance(upper, bool) or not isinstance(upper, numbers.Integral) or upper < 1:
            raise ValueError(f"upper must be an int >= 1, got {upper!r}")
        upper = int(upper)
        bits = (upper - 1).bit_length()
        n_bytes = (bits + 7) // 8
        mask = (1 << bits) - 1
        for _ in range(_MAX_ROUNDS):
            candidate = int.from_bytes(self.random_bytes(n_bytes), "little") & mask
            if candidate < upper:
                return candidate
        raise RuntimeError("uniform sampling did not finish: the random source is broken")

    def _below(self, bounds: np.ndarray) -> np.ndarray:
        """Draw uniform integers in [0, bounds) for a flat int64 array of bounds >= 1."""
        if bounds.size == 0:
            return np.empty(0, dtype=np.int64)

        # Work in uint32 when every bound fits: half the keystream per draw.
        word_type = np.uint32 if int(bounds.max()) <= 0xFFFF_FFFF else np.uint64
        limits = bounds.astype(word_type)
        masks = _bit_masks(limits - word_type(1))

        # Mask each draw to the bits of bound - 1, then redraw values >= bound.
        # Each try is accepted with probability above 1/2.
        values = self._words(bounds.size, word_type) & masks
        pending = np.flatnonzero(values >= limits)
        for _ in range(_MAX_ROUNDS):
            if pending.size == 0:
                return values.astype(np.int64)
            retry = self._words(pending.size, word_type) & masks[pending]
            accepted = retry < limits[pending]
            values[pending[accepted]] = retry[accepted]
            pending = pending[~accepted]
        raise RuntimeError("uniform sampling did not finish: the random source is broken")

    def _words(self, count: int, word_type: type) -> np.ndarray:
        """Return count random words of the given unsigned numpy type."""
        size = np.dtype(word_type).itemsize
        data = self.random_bytes(size * count)
        return np.frombuffer(data, dtype=np.dtype(word_type).newbyteorder("<"))

    def _new_encryptor(self):
        # cryptography's ChaCha20 takes 16 bytes: the 4-byte little-endian
        # block counter (starting at 0), then the 12-byte RFC 8439 nonce.
        nonce = bytes(4) + self._nonce_index.to_bytes(12, "little")
        return Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()

    def __repr__(self) -> str:
        # Never show the key.
        return f"{type(self).__name__}(nonce_index={self._nonce_index})"


def discrete_gaussian(
    *, sigma: float, size: int | tuple[int, ...], random: SecureRandom
) -> np.ndarray:
    """Draw exact discrete Gaussian noise N_Z(0, sigma**2) as an int64 array.

    The sigma actually used is exact_sigma(sigma), which is at least sigma
    (see the module docstring); record that value with the release. Raises
    PrivacyError for sigma outside (0, MAX_SIGMA] or not finite.
    """
    parameters = _parameters(_check_sigma(sigma))
    shape = _check_size(size)
    if not isinstance(random, SecureRandom):
        raise PrivacyError(
            f"random must be a SecureRandom, got {type(random).__name__}; "
            "noise must come from the cryptographic source"
        )

    total = math.prod(shape)
    logger.debug("drawing %d discrete Gaussian values with sigma %r", total, sigma)
    output = np.empty(total, dtype=np.int64)
    filled = 0
    for _ in range(_MAX_ROUNDS):
        if filled == total:
            return output.reshape(shape)
        # A third (sigma < 1) to a half of all candidates are accepted, so
        # draw 2.25 times the remainder to finish in few rounds.
        needed = total - filled
        batch = min(2 * needed + needed // 4 + 16, _MAX_BATCH)
        accepted = _gaussian_candidates(batch, parameters, random)
        take = min(accepted.size, needed)
        output[filled : filled + take] = accepted[:take]
        filled += take
    raise RuntimeError("discrete Gaussian sampling did not finish: the random source is broken")


def exact_sigma(sigma: float) -> float:
    """Return the largest float not above the sigma that discrete_gaussian uses.

    The result is >= sigma. Use it for accounting: rho computed from it is at
    least the rho of the noise actually added.
    """
    parameters = _parameters(_check_sigma(sigma))
    variance = parameters.sigma_squared
    result = math.sqrt(float(variance))
    for _ in range(64):
        if Fraction(result) ** 2 <= variance:
            break
        result = math.nextafter(result, 0.0)
    for _ in range(64):
        larger = math.nextafter(result, math.inf)
        if Fraction(larger) ** 2 > variance:
            break
        result = larger
    return result


def rational_sigma_squared(sigma: float) -> Fraction:
    """Return the exact sigma**2 that discrete_gaussian uses for this sigma."""
    return _parameters(_check_sigma(sigma)).sigma_squared


@dataclass(frozen=True)
class _Parameters:
    """Integer constants of the sampler for sigma * sqrt(2) = q / scale."""

    q: int
    scale: int
    # Laplace scale t = floor(sigma) + 1 of the proposal.
    t: int
    # w = coefficient * |Y| - q_squared and c = 2 * scale * t * q.
    coefficient: int
    q_squared: int
    c: int
    # Largest |Y| for which every int64 product of the common path is exact.
    max_common_magnitude: int

    @property
    def sigma_squared(self) -> Fraction:
        return Fraction(self.q_squared, 2 * self.scale * self.scale)


@lru_cache(maxsize=256)
def _parameters(sigma: float) -> _Parameters:
    # Choose the scale L so that q is near _Q_TARGET, unless that would make
    # 2 * L**2 * t too large for |Y| up to 64 * t. Any L >= 1 is correct: L
    # only sets the resolution of the rounding.
    t_estimate = math.floor(sigma) + 1
    scale_by_q = math.floor(min(_Q_TARGET / (sigma * math.sqrt(2.0)), float(_INT64_LIMIT)))
    scale_by_range = math.isqrt(_SCALE_LIMIT_SQUARED // (t_estimate * t_estimate))
    scale = max(1, min(scale_by_q, scale_by_range))

    # q = ceil(sqrt(2 * sigma**2 * L**2)), computed exactly from the float.
    target = 2 * Fraction(sigma) ** 2 * scale * scale
    ceiling = math.ceil(target)
    q = math.isqrt(ceiling - 1) + 1 if ceiling > 0 else 1
    q_squared = q * q
    sigma_squared = Fraction(q_squared, 2 * scale * scale)

    # t = floor(sigma) + 1 for the rounded sigma; floor(sqrt(r)) = isqrt(floor(r)).
    t = math.isqrt(math.floor(sigma_squared)) + 1
    coefficient = 2 * scale * scale * t
    c = 2 * scale * t * q
    max_magnitude = _INT64_LIMIT // coefficient
    if c > _INT64_LIMIT or q_squared > _INT64_LIMIT or max_magnitude < 64 * t:
        raise PrivacyError(
            f"sigma={sigma!r} is outside the range the sampler supports exactly; "
            f"use a sigma in (0, {MAX_SIGMA:g}]"
        )
    return _Parameters(
        q=q,
        scale=scale,
        t=t,
        coefficient=coefficient,
        q_squared=q_squared,
        c=c,
        max_common_magnitude=max_magnitude,
    )


def _gaussian_candidates(
    count: int, parameters: _Parameters, random: SecureRandom
) -> np.ndarray:
    """Run count discrete Laplace proposals through the Gaussian acceptance step."""
    t = parameters.t

    # Discrete Laplace (CKS Algorithm 2): U kept with probability exp(-U/t).
    u = random._below(np.full(count, t, dtype=np.int64))
    u = u[_bernoulli_exp_fraction(u, t, random)]

    # V counts Bernoulli(exp(-1)) successes before the first failure.
    v = _geometric_exp_minus_one(u.size, random)
    magnitude = u + t * v

    # A random sign; a negative zero is rejected so P[0] is not doubled.
    negative = (random._words(magnitude.size, np.uint32) & np.uint32(1)) == 1
    keep = ~(negative & (magnitude == 0))
    magnitude, negative = magnitude[keep], negative[keep]

    # Gaussian acceptance (CKS Algorithm 3), vectorized where int64 suffices.
    accepted = np.empty(magnitude.size, dtype=bool)
    common = magnitude <= parameters.max_common_magnitude
    accepted[common] = _accept_gaussian_int64(magnitude[common], parameters, random)
    for index in np.flatnonzero(~common):
        accepted[index] = _accept_gaussian_exact(int(magnitude[index]), parameters, random)

    values = np.where(negative, -magnitude, magnitude)
    return values[accepted]


def _bernoulli_exp_fraction(
    numerators: np.ndarray, denominator: int, random: SecureRandom
) -> np.ndarray:
    """Draw Bernoulli(exp(-n/d)) for each n in numerators, 0 <= n <= d (CKS Algorithm 1)."""
    result = np.zeros(numerators.size, dtype=bool)
    k = np.ones(numerators.size, dtype=np.int64)
    active = np.arange(numerators.size)
    for _ in range(_MAX_ROUNDS):
        if active.size == 0:
            return result
        # A ~ Bernoulli(n / (d * k)); the loop stops at the first A = 0.
        a = random._below(denominator * k[active]) < numerators[active]
        stopped = active[~a]
        result[stopped] = (k[stopped] % 2) == 1
        active = active[a]
        k[active] += 1
    raise RuntimeError("Bernoulli(exp(-gamma)) sampling did not finish: the random source is broken")


def _geometric_exp_minus_one(count: int, random: SecureRandom) -> np.ndarray:
    """Draw V with P[V >= v] = exp(-v): Bernoulli(exp(-1)) successes before a failure."""
    v = np.zeros(count, dtype=np.int64)
    active = np.arange(count)
    ones = np.ones(count, dtype=np.int64)
    for _ in range(_MAX_ROUNDS):
        if active.size == 0:
            return v
        success = _bernoulli_exp_fraction(ones[: active.size], 1, random)
        active = active[success]
        v[active] += 1
    raise RuntimeError("geometric sampling did not finish: the random source is broken")


def _accept_gaussian_int64(
    magnitude: np.ndarray, parameters: _Parameters, random: SecureRandom
) -> np.ndarray:
    """Draw the Gaussian acceptance Bernoulli(exp(-(|w|/c)**2)) in int64.

    Requires magnitude <= parameters.max_common_magnitude, which keeps |w|,
    c * j and every bound of randbelow below 2**63.
    """
    w = np.abs(parameters.coefficient * magnitude - parameters.q_squared)
    c = parameters.c
    j = (w + (c - 1)) // c
    # exp(-gamma) = exp(-gamma / j**2) ** (j**2): j**2 trials that must all succeed.
    trials_left = j * j
    c_times_j = c * j

    accepted = trials_left == 0
    k = np.ones(magnitude.size, dtype=np.int64)
    active = np.flatnonzero(trials_left > 0)
    for _ in range(_MAX_ROUNDS):
        if active.size == 0:
            return accepted
        # A ~ Bernoulli((w / (c*j))**2 / k) as a product of three draws.
        bound = c_times_j[active]
        a = (
            (random._below(bound) < w[active])
            & (random._below(bound) < w[active])
            & (random._below(k[active]) == 0)
        )
        continuing = active[a]
        k[continuing] += 1

        # A trial ends at the first A = 0 and succeeds when k is odd.
        ended = active[~a]
        succeeded = ended[(k[ended] % 2) == 1]
        trials_left[succeeded] -= 1
        k[succeeded] = 1
        finished = succeeded[trials_left[succeeded] == 0]
        accepted[finished] = True
        still_trying = succeeded[trials_left[succeeded] > 0]
        active = np.concatenate([continuing, still_trying])
    raise RuntimeError("Gaussian acceptance did not finish: the random source is broken")


def _accept_gaussian_exact(magnitude: int, parameters: _Parameters, random: SecureRandom) -> bool:
    """Draw the Gaussian acceptance for one large |Y| with exact fractions."""
    sigma_squared = parameters.sigma_squared
    gamma = (magnitude - sigma_squared / parameters.t) ** 2 / (2 * sigma_squared)
    return _bernoulli_exp_exact(gamma, random)


def _bernoulli_exp_exact(gamma: Fraction, random: SecureRandom) -> bool:
    """Draw Bernoulli(exp(-gamma)) for a rational gamma >= 0 with big integers."""
    # exp(-gamma) = exp(-1) ** floor(gamma) * exp(-(gamma - floor(gamma))).
    whole = math.floor(gamma)
    for _ in range(whole):
        if not _bernoulli_exp_fraction_exact(Fraction(1), random):
            return False
    return _bernoulli_exp_fraction_exact(gamma - whole, random)


def _bernoulli_exp_fraction_exact(gamma: Fraction, random: SecureRandom) -> bool:
    k = 1
    for _ in range(_MAX_ROUNDS):
        # A ~ Bernoulli(gamma / k).
        if random.randbelow_int(gamma.denominator * k) >= gamma.numerator:
            return k % 2 == 1
        k += 1
    raise RuntimeError("Bernoulli(exp(-gamma)) sampling did not finish: the random source is broken")


def _bit_masks(values: np.ndarray) -> np.ndarray:
    """Return, for each unsigned value, the mask of all bits up to its highest set bit."""
    masks = values.copy()
    word_type = values.dtype.type
    for shift in (1, 2, 4, 8, 16, 32)[: 5 if word_type is np.uint32 else 6]:
        masks |= masks >> word_type(shift)
    return masks


def _check_upper(upper: object, size: object) -> np.ndarray:
    if isinstance(upper, np.ndarray):
        if size is not None:
            raise ValueError("size must be None when upper is an array")
        if upper.dtype.kind not in "iu":
            raise ValueError(f"upper must be an integer array, got dtype {upper.dtype}")
        bounds = upper.astype(np.int64, copy=False)
        if bounds.size and int(bounds.min()) < 1:
            raise ValueError(f"every upper bound must be >= 1, got minimum {int(bounds.min())}")
        return bounds
    if isinstance(upper, bool) or not isinstance(upper, numbers.Integral):
        raise ValueError(f"upper must be an int or an integer array, got {upper!r}")
    if not 1 <= int(upper) <= np.iinfo(np.int64).max:
        raise ValueError(f"upper must be in [1, 2**63 - 1], got {upper!r}")
    shape = () if size is None else _check_size(size)
    return np.full(shape, int(upper), dtype=np.int64)


def _check_size(size: object) -> tuple[int, ...]:
    dimensions = (size,) if isinstance(size, numbers.Integral) else size
    if not isinstance(dimensions, tuple) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in dimensions
    ):
        raise ValueError(f"size must be an int >= 0 or a tuple of them, got {size!r}")
    return tuple(int(d) for d in dimensions)


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise PrivacyError(f"sigma must be a real number, got {sigma!r}")
    value = float(sigma)
    if not (math.isfinite(value) and 0.0 < value <= MAX_SIGMA):
        raise PrivacyError(
            f"sigma must be finite and in (0, {MAX_SIGMA:g}], got {sigma!r}; "
            "a larger sigma means a rho too small to be useful"
        )
    return value
