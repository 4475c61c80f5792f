"""Builders of valid releases for tests, with hand-made counts (no private data)."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2psynth.domain import Measurement
from p2psynth.release import Release, encode_release

FINGERPRINT = "ab" * 32


def fixed_key(seed: int = 1) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def make_release(
    key: Ed25519PrivateKey | None = None,
    *,
    sequence: int = 1,
    epoch: int = 1,
    seed: int = 0,
    sigma: float = 3.0,
    fingerprint: str = FINGERPRINT,
) -> tuple[bytes, Release]:
    """Return (signed bytes, release) with one 1-way and one 2-way marginal."""
    key = key or fixed_key()
    generator = np.random.default_rng(seed)
    measurements = (
        Measurement(("age",), generator.integers(-5, 500, size=4).astype(np.int64), sigma),
        Measurement(("age", "sex"), generator.integers(-5, 300, size=(4, 2)).astype(np.int64), sigma),
    )
    rho = sum(1 / (2 * m.sigma**2) for m in measurements) * 1.5
    release = Release(
        schema_fingerprint=fingerprint,
        author=key.public_key().public_bytes_raw(),
        sequence=sequence,
        epoch=epoch,
        created_at_ms=1_700_000_000_000 + sequence,
        rho=rho,
        measurements=measurements,
        basis=(b"\x07" * 32,),
    )
    return encode_release(release, key), release
