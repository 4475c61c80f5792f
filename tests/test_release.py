"""Release format: round trip, canonical bytes, strict decoding, fuzzing."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ReleaseFormatError
from p2psynth.release import (
    FORMAT_VERSION,
    MAX_CELLS_PER_MEASUREMENT,
    SIGNATURE_CONTEXT,
    Release,
    check_against_domain,
    decode_release,
    encode_release,
    release_id,
)
from releasefactory import FINGERPRINT, fixed_key, make_release

FUZZ_SETTINGS = settings(
    max_examples=4000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _resign(key, body_fields) -> bytes:
    """Sign arbitrary body fields the way an honest encoder would, to test the parser alone."""
    body = msgpack.packb(body_fields, use_bin_type=True)
    signature = key.sign(SIGNATURE_CONTEXT + body)
    return msgpack.packb([FORMAT_VERSION, body, signature], use_bin_type=True)


def _valid_fields(release: Release) -> list:
    return [
        release.schema_fingerprint,
        release.author,
        release.sequence,
        release.epoch,
        release.created_at_ms,
        release.rho,
        list(release.basis),
        release.round,
        [[name, list(starts)] for name, starts in release.grouping],
        [[list(m.attributes), list(m.counts.shape), m.sigma, m.counts.astype("<i8").tobytes()]
         for m in release.measurements],
    ]


def test_round_trip_keeps_every_field():
    data, release = make_release()
    decoded = decode_release(data)

    assert decoded.schema_fingerprint == release.schema_fingerprint
    assert decoded.author == release.author
    assert decoded.sequence == release.sequence
    assert decoded.epoch == release.epoch
    assert decoded.created_at_ms == release.created_at_ms
    assert decoded.rho == release.rho
    assert decoded.basis == release.basis
    assert len(decoded.measurements) == len(release.measurements)
    for got, expected in zip(decoded.measurements, release.measurements):
        assert got.attributes == expected.attributes
        assert got.sigma == expected.sigma
        np.testing.assert_array_equal(got.counts, expected.counts)


def test_encoding_is_deterministic():
    first, _ = make_release(seed=4)
    second, _ = make_release(seed=4)
    assert first == second
    assert release_id(first) == release_id(second)


def test_every_single_byte_flip_is_rejected():
    data, _ = make_release()
    for position in range(len(data)):
        for flip in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[position] ^= flip
            with pytest.raises(ReleaseFormatError):
                decode_release(bytes(mutated))


def test_signature_from_other_key_rejected():
    data, release = make_release()
    envelope = msgpack.unpackb(data)
    envelope[2] = fixed_key(9).sign(SIGNATURE_CONTEXT + envelope[1])
    with pytest.raises(ReleaseFormatError, match="invalid signature"):
        decode_release(msgpack.packb(envelope, use_bin_type=True))


def test_encoder_rejects_foreign_author():
    _, release = make_release()
    with pytest.raises(ReleaseFormatError, match="does not match the signing key"):
        encode_release(release, fixed_key(2))


def test_encoder_rejects_understated_rho():
    _, release = make_release()
    cheap = Release(**{**release.__dict__, "rho": release.measurement_rho() / 2})
    with pytest.raises(ReleaseFormatError, match="claims rho"):
        encode_release(cheap, fixed_key())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f[:-1], "array of 10 fields"),
        (lambda f: f + ["extra"], "array of 10 fields"),
        (lambda f: ["AB" * 32] + f[1:], "fingerprint"),
        (lambda f: [f[0], b"\x00" * 31] + f[2:], "author"),
        (lambda f: f[:2] + [0] + f[3:], "sequence"),
        (lambda f: f[:2] + [-1] + f[3:], "sequence"),
        (lambda f: f[:2] + [True] + f[3:], "sequence"),
        (lambda f: f[:3] + [-5] + f[4:], "epoch"),
        (lambda f: f[:5] + [1] + f[6:], "rho"),
        (lambda f: f[:5] + [float("nan")] + f[6:], "rho"),
        (lambda f: f[:5] + [float("inf")] + f[6:], "rho"),
        (lambda f: f[:6] + [[b"short"]] + f[7:], "basis"),
        (lambda f: f[:7] + [-1] + f[8:], "round"),
        (lambda f: f[:7] + [256] + f[8:], "round"),
        (lambda f: f[:8] + ["age"] + f[9:], "grouping must be an array"),
        (lambda f: f[:8] + [[["age"]]] + f[9:], "grouping entry"),
        (lambda f: f[:8] + [[["age", []]]] + f[9:], "group start"),
        (lambda f: f[:8] + [[["age", [1, 2]]]] + f[9:], "begin at 0"),
        (lambda f: f[:8] + [[["age", [0, 2, 2]]]] + f[9:], "strictly increase"),
        (lambda f: f[:8] + [[["age", [0, -2]]]] + f[9:], "group start"),
        (lambda f: f[:8] + [[["sex", [0]], ["age", [0, 2]]]] + f[9:], "sorted by name"),
        (lambda f: f[:8] + [[["age", [0]], ["age", [0, 2]]]] + f[9:], "no repeats"),
        (lambda f: f[:9] + [[]], "measurements"),
        (lambda f: f[:9] + [[[["age"], [4], 3.0, b"\x00" * 31]]], "counts must be 32 bytes"),
        (lambda f: f[:9] + [[[["age"], [5], 3.0, b"\x00" * 32]]], "counts must be 40 bytes"),
        (lambda f: f[:9] + [[[["age", "sex"], [4], 3.0, b"\x00" * 32]]], "one size per attribute"),
        (lambda f: f[:9] + [[[["age"], [-4], 3.0, b"\x00" * 32]]], "shape entry"),
        (lambda f: f[:9] + [[[["age"], [2**40], 3.0, b""]]], "shape entry"),
        (lambda f: f[:9] + [[[["a", "b"], [2**20, 2**20], 3.0, b""]]], "more than"),
        (lambda f: f[:9] + [[[["age", "age"], [2, 2], 3.0, b"\x00" * 32]]], "repeats"),
        (lambda f: f[:9] + [[[[""], [4], 3.0, b"\x00" * 32]]], "attribute name"),
        (lambda f: f[:9] + [[[["age"], [4], 0.0, b"\x00" * 32]]], "sigma"),
        (lambda f: f[:9] + [[[["age"], [4], -1.0, b"\x00" * 32]]], "sigma"),
        (lambda f: f[:9] + [[[["age"], [4], 3.0]]], "array of"),
        (lambda f: f[:9] + [[[["age"], [4], 3.0, [1, 2, 3, 4]]]], "counts must be"),
    ],
)
def test_hand_made_faults_rejected(mutate, message):
    key = fixed_key()
    _, release = make_release(key)
    data = _resign(key, mutate(_valid_fields(release)))
    with pytest.raises(ReleaseFormatError, match=message):
        decode_release(data)


def test_hand_made_envelope_faults_rejected():
    data, _ = make_release()
    version, body, signature = msgpack.unpackb(data)
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "trailing bytes": data + b"\x00",
        "unknown version": msgpack.packb([FORMAT_VERSION + 1, body, signature], use_bin_type=True),
        "version as string": msgpack.packb(["1", body, signature], use_bin_type=True),
        "extra envelope field": msgpack.packb([FORMAT_VERSION, body, signature, b""], use_bin_type=True),
        "short signature": msgpack.packb([FORMAT_VERSION, body, signature[:10]], use_bin_type=True),
        "map instead of array": msgpack.packb({"v": 1}, use_bin_type=True),
        "huge declared bin": b"\x93\x01\xc6\xff\xff\xff\xff",
        "huge declared array": b"\xdd\xff\xff\xff\xff",
    }
    for name, bad in cases.items():
        with pytest.raises(ReleaseFormatError):
            decode_release(bad)


def test_oversize_rejected_before_parsing():
    data, _ = make_release()
    with pytest.raises(ReleaseFormatError, match="over the limit"):
        decode_release(data, max_bytes=len(data) - 1)


def test_non_canonical_float_rejected():
    key = fixed_key()
    _, release = make_release(key)
    fields = _valid_fields(release)
    body = msgpack.packb(fields, use_bin_type=True, use_single_float=True)
    data = msgpack.packb([FORMAT_VERSION, body, key.sign(SIGNATURE_CONTEXT + body)], use_bin_type=True)
    with pytest.raises(ReleaseFormatError, match="canonical"):
        decode_release(data)


def test_domain_check_names_attribute():
    data, _ = make_release()
    release = decode_release(data)
    check_against_domain(release, Domain(("age", "sex"), (4, 2)))
    with pytest.raises(ReleaseFormatError, match="'sex'"):
        check_against_domain(release, Domain(("age",), (4,)))
    with pytest.raises(ReleaseFormatError, match="shape"):
        check_against_domain(release, Domain(("age", "sex"), (5, 2)))


def _grouped_release(key, *, starts=(0, 2)) -> Release:
    """A round-3 style release: age's 4 codes measured in groups, sex at full resolution."""
    groups = len(starts)
    measurements = (
        Measurement(("age",), np.arange(groups, dtype=np.int64) * 10, 2.0),
        Measurement(("sex", "age"), np.arange(2 * groups, dtype=np.int64).reshape(2, groups), 2.0),
    )
    return Release(
        schema_fingerprint=FINGERPRINT,
        author=key.public_key().public_bytes_raw(),
        sequence=3,
        epoch=1,
        created_at_ms=1_700_000_000_000,
        rho=0.25,
        measurements=measurements,
        basis=(b"\x01" * 32, b"\x02" * 32),
        round=3,
        grouping=(("age", tuple(starts)),),
    )


def test_grouped_release_round_trips_and_fits_its_domain():
    key = fixed_key()
    data = encode_release(_grouped_release(key), key)
    decoded = decode_release(data)
    assert decoded.round == 3
    assert decoded.grouping == (("age", (0, 2)),)
    assert decoded.group_starts("age") == (0, 2)
    assert decoded.group_starts("sex") is None
    assert decoded.measurements[1].counts.shape == (2, 2)
    check_against_domain(decoded, Domain(("age", "sex"), (4, 2)))


def test_grouped_release_domain_faults_named():
    key = fixed_key()
    decoded = decode_release(encode_release(_grouped_release(key), key))
    # Shapes follow the grouping, so a schema whose age has no third code still fits ...
    check_against_domain(decoded, Domain(("age", "sex"), (3, 2)))
    # ... but a grouping needs fewer groups than codes, all starting inside the domain.
    with pytest.raises(ReleaseFormatError, match="fewer groups than codes"):
        check_against_domain(decoded, Domain(("age", "sex"), (2, 2)))
    with pytest.raises(ReleaseFormatError, match="grouping names attribute 'age'"):
        check_against_domain(decoded, Domain(("sex", "race"), (2, 3)))
    wide = decode_release(encode_release(_grouped_release(key, starts=(0, 1, 3)), key))
    with pytest.raises(ReleaseFormatError, match="shape"):
        check_against_domain(wide, Domain(("age", "sex"), (5, 3)))


def test_release_of_format_version_one_names_the_versions():
    data, _ = make_release()
    _, body, signature = msgpack.unpackb(data)
    with pytest.raises(ReleaseFormatError, match=f"version 1; this node reads version {FORMAT_VERSION}"):
        decode_release(msgpack.packb([1, body, signature], use_bin_type=True))


def test_encoder_rejects_oversized_measurement():
    key = fixed_key()
    big = Measurement(("a",), np.zeros(MAX_CELLS_PER_MEASUREMENT + 1, dtype=np.int64), 5.0)
    release = Release(FINGERPRINT, key.public_key().public_bytes_raw(), 1, 1, 0, 1.0, (big,))
    with pytest.raises(ReleaseFormatError):
        encode_release(release, key)


# Fuzzing: only ReleaseFormatError may escape, whatever the bytes.


@FUZZ_SETTINGS
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    try:
        decode_release(data)
    except ReleaseFormatError:
        pass


_VALID, _ = make_release()


@FUZZ_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8
    ),
    st.integers(0, len(_VALID)),
    st.binary(max_size=64),
)
def test_fuzz_mutated_release(flips, cut, insert):
    mutated = bytearray(_VALID)
    for position, value in flips:
        mutated[position] ^= value
    mutated = mutated[:cut] + insert + mutated[cut:] if insert else mutated
    if bytes(mutated) == _VALID:
        return  # flips that cancel each other leave the valid release
    with pytest.raises(ReleaseFormatError):
        decode_release(bytes(mutated))


_MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=9) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=30,
)


@settings(max_examples=2500, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_MSGPACK_VALUES)
def test_fuzz_structured_bodies(fields):
    """Well-formed msgpack with a valid signature but arbitrary structure reaches the field checks."""
    key = fixed_key()
    try:
        body = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError):
        return  # integers msgpack cannot encode are not decoder input
    data = msgpack.packb([FORMAT_VERSION, body, key.sign(SIGNATURE_CONTEXT + body)], use_bin_type=True)
    with pytest.raises(ReleaseFormatError):
        decode_release(data)


@pytest.mark.parametrize("sigma", [1e-200, 5e-324, 1e200, 1.7e308])
def test_extreme_sigma_rejected(sigma):
    key = fixed_key()
    _, release = make_release(key)
    fields = _valid_fields(release)
    fields[5] = 1e300  # a rho large enough for any sigma: only the sigma check may fail
    fields[9][0][2] = sigma
    with pytest.raises(ReleaseFormatError, match="sigma"):
        decode_release(_resign(key, fields))
