"""Release wire format: canonical msgpack bytes signed with the author's Ed25519 key.

A release is everything a node ever sends about its data: noisy marginal counts
with their noise scale and the privacy cost they spent. The bytes are the
identity of a release (its id is the SHA-256 of the signed bytes), so they must
be canonical: one release has exactly one encoding. The decoder enforces that
by re-encoding what it parsed and comparing, which also rejects trailing bytes,
non-minimal integers and single-precision floats.

Layout (docs/protocol.md is the full specification)::

    envelope = [version: int, body: bin, signature: bin(64)]
    signature = Ed25519(author key, SIGNATURE_CONTEXT + body)
    body = [schema_fingerprint: str(64 hex), author: bin(32), sequence: int,
            epoch: int, created_at_ms: int, rho: float64,
            basis: [bin(32), ...], round: int,
            grouping: [[attribute: str, starts: [int, ...]], ...],
            measurements: [[attributes: [str, ...], shape: [int, ...],
                            sigma: float64, counts: bin(int64 little-endian)], ...]]

``grouping`` lists the attributes whose codes this release measures in groups
of consecutive codes, each by the first code of every group (sorted by
attribute name; an attribute left out is at full resolution). A measurement's
shape then has one entry per group. Measurement rounds use it: round 2 and 3
of the network's strategy measure pairs on grouped codes (docs/strategy.md).

Arrays rather than maps keep the field order fixed without a canonical map
ordering rule. Counts travel as raw little-endian int64 because a msgpack array
of integers is several times slower to decode and not smaller for counts that
mostly need more than one byte.

Decoding is strict and bounded before any allocation proportional to a
declared size: the byte length, the number of measurements, attributes and
cells are capped, and a declared shape must agree with the counts' length.
Every failure raises ``ReleaseFormatError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2psynth.domain import Domain, Measurement
from p2psynth.errors import ReleaseFormatError

FORMAT_VERSION = 2
SIGNATURE_CONTEXT = b"p2psynth/release/v1\x00"

# Limits of the decoder. A release of the 15-column Adult schema with all
# 1-way and 14 2-way marginals is about 0.3 MB; these leave room for wide
# schemas and 3-way marginals while bounding what a peer can make us allocate.
MAX_RELEASE_BYTES = 16 * 1024 * 1024
MAX_MEASUREMENTS = 4096
MAX_ATTRIBUTES_PER_MEASUREMENT = 8
MAX_CELLS_PER_MEASUREMENT = 1 << 21
MAX_BASIS_IDS = 4096
MAX_GROUPED_ATTRIBUTES = 1024
MAX_GROUPS_PER_ATTRIBUTE = 4096
# Round 0 is a release outside any round plan (such as a node's own MST
# selection); the network strategy uses rounds 1 to 3.
MAX_ROUND = 255
MAX_ATTRIBUTE_NAME_CHARS = 256
MAX_SEQUENCE = (1 << 63) - 1
# Noise scales outside this range are rejected: 1 / (2 sigma^2) must stay a
# finite, non-zero float, and no useful release has counts this exact or this noisy.
MIN_SIGMA = 1e-9
MAX_SIGMA = 1e12

_FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{64}")
_BODY_FIELDS = 10


class InvalidSignatureError(ReleaseFormatError):
    """The release parses but its signature does not verify under its author key."""


@dataclass(frozen=True, eq=False)
class Release:
    """One signed release: a node's noisy measurements and their privacy cost.

    ``epoch`` groups releases that belong together: the model uses every
    release of an author's highest epoch, so a second measurement round adds
    to the first, while a new epoch (for example after the data changed)
    replaces everything before it. ``basis`` lists the release ids that the
    choice of these measurements depended on (empty for a first round).
    ``round`` is the measurement round of the network strategy (0 outside
    it) and ``grouping`` maps grouped attributes to their group start codes.
    """

    schema_fingerprint: str
    author: bytes
    sequence: int
    epoch: int
    created_at_ms: int
    rho: float
    measurements: tuple[Measurement, ...]
    basis: tuple[bytes, ...] = ()
    round: int = 0
    grouping: tuple[tuple[str, tuple[int, ...]], ...] = ()
    version: int = FORMAT_VERSION

    @property
    def author_hex(self) -> str:
        return self.author.hex()

    def group_starts(self, attribute: str) -> tuple[int, ...] | None:
        """Return the group start codes of ``attribute``, or None when it is at full resolution."""
        for name, starts in self.grouping:
            if name == attribute:
                return starts
        return None

    def measurement_rho(self) -> float:
        """Return the zCDP cost of the noisy counts alone: each marginal has L2 sensitivity 1."""
        return sum(1.0 / (2.0 * m.sigma**2) for m in self.measurements)


def release_id(data: bytes) -> bytes:
    """Return the 32-byte id of a release: SHA-256 of its signed bytes."""
    return hashlib.sha256(data).digest()


def author_fingerprint(author: bytes) -> str:
    """Return a short, human-comparable fingerprint of an author's public key."""
    digest = hashlib.sha256(author).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def encode_release(release: Release, private_key: Ed25519PrivateKey) -> bytes:
    """Return the canonical signed bytes of ``release``.

    The author field must be the public key of ``private_key``; the result
    decodes back to an equal release with ``decode_release``.
    """
    public = private_key.public_key().public_bytes_raw()
    if public != release.author:
        raise ReleaseFormatError(
            "release author does not match the signing key: "
            f"author {author_fingerprint(release.author)}, key {author_fingerprint(public)}"
        )
    _check_fields(release)

    body = msgpack.packb(_body_fields(release), use_bin_type=True, use_single_float=False)
    signature = private_key.sign(SIGNATURE_CONTEXT + body)
    data = msgpack.packb([release.version, body, signature], use_bin_type=True)
    if len(data) > MAX_RELEASE_BYTES:
        raise ReleaseFormatError(
            f"release is {len(data)} bytes, over the limit of {MAX_RELEASE_BYTES}; "
            "measure fewer or smaller marginals"
        )

    # Peers run the decoder's checks; never produce bytes they would reject.
    decode_release(data)
    return data


def decode_release(data: bytes, *, max_bytes: int = MAX_RELEASE_BYTES) -> Release:
    """Parse, bound-check and verify release bytes; raise ReleaseFormatError on any fault."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ReleaseFormatError(f"release must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ReleaseFormatError(f"release is {len(data)} bytes, over the limit of {max_bytes}")

    envelope = _unpack(data, "envelope", max_bytes)
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise ReleaseFormatError("release envelope must be an array of [version, body, signature]")
    version, body, signature = envelope
    if type(version) is not int or version != FORMAT_VERSION:
        raise ReleaseFormatError(
            f"unknown release format version {version!r}; this node reads version {FORMAT_VERSION}"
        )
    if not isinstance(body, bytes):
        raise ReleaseFormatError("release body must be a msgpack bin")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise ReleaseFormatError("release signature must be 64 bytes of bin")

    release = _parse_body(_unpack(body, "body", max_bytes))

    # Canonical form: re-encoding must give back the exact bytes.
    canonical_body = msgpack.packb(_body_fields(release), use_bin_type=True, use_single_float=False)
    if canonical_body != body:
        raise ReleaseFormatError("release body is not in canonical encoding")
    if msgpack.packb([version, body, signature], use_bin_type=True) != data:
        raise ReleaseFormatError("release envelope is not in canonical encoding")

    try:
        Ed25519PublicKey.from_public_bytes(release.author).verify(signature, SIGNATURE_CONTEXT + body)
    except InvalidSignature:
        raise InvalidSignatureError(
            f"invalid signature on release from author {author_fingerprint(release.author)}"
        ) from None
    except ValueError as exc:
        raise InvalidSignatureError(f"invalid author public key: {exc}") from exc
    return release


def check_against_domain(release: Release, domain: Domain) -> None:
    """Raise ReleaseFormatError unless the grouping and every measurement fit ``domain``."""
    groups: dict[str, int] = {}
    for attribute, starts in release.grouping:
        if attribute not in domain:
            raise ReleaseFormatError(f"grouping names attribute {attribute!r}, which is not in the schema")
        size = domain.size(attribute)
        if starts[-1] >= size or len(starts) >= size:
            raise ReleaseFormatError(
                f"grouping of {attribute!r} has group starts up to {starts[-1]} in {len(starts)} groups; "
                f"the schema gives {size} codes, so a grouping needs fewer groups than codes, all below {size}"
            )
        groups[attribute] = len(starts)
    for index, m in enumerate(release.measurements):
        for attribute in m.attributes:
            if attribute not in domain:
                raise ReleaseFormatError(
                    f"measurement {index} uses attribute {attribute!r}, which is not in the schema"
                )
        expected = tuple(groups.get(a, domain.size(a)) for a in m.attributes)
        if m.counts.shape != expected:
            raise ReleaseFormatError(
                f"measurement {index} over {m.attributes} has shape {m.counts.shape}; "
                f"the schema and the release's grouping give {expected}"
            )


def _body_fields(release: Release) -> list[Any]:
    measurements = [
        [
            list(m.attributes),
            [int(n) for n in m.counts.shape],
            float(m.sigma),
            np.ascontiguousarray(m.counts, dtype="<i8").tobytes(),
        ]
        for m in release.measurements
    ]
    return [
        release.schema_fingerprint,
        release.author,
        int(release.sequence),
        int(release.epoch),
        int(release.created_at_ms),
        float(release.rho),
        list(release.basis),
        int(release.round),
        [[name, [int(code) for code in starts]] for name, starts in release.grouping],
        measurements,
    ]


def _unpack(data: bytes, what: str, max_bytes: int) -> Any:
    # The max_*_len limits stop msgpack from allocating for a declared size
    # larger than the input; extra bytes after one object are an error.
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=MAX_ATTRIBUTE_NAME_CHARS * 4 + 64,
            max_array_len=max(MAX_MEASUREMENTS, MAX_BASIS_IDS) + 1,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise ReleaseFormatError(f"release {what} has trailing bytes after the msgpack object") from None
    except (ValueError, msgpack.UnpackException, OverflowError, RecursionError) as exc:
        raise ReleaseFormatError(f"release {what} is not valid msgpack: {exc}") from exc


def _parse_body(fields: Any) -> Release:
    if not isinstance(fields, list) or len(fields) != _BODY_FIELDS:
        count = len(fields) if isinstance(fields, list) else type(fields).__name__
        raise ReleaseFormatError(f"release body must be an array of {_BODY_FIELDS} fields, got {count}")
    fingerprint, author, sequence, epoch, created_at_ms, rho, basis, round_, raw_grouping, raw_measurements = fields

    if not isinstance(fingerprint, str) or not _FINGERPRINT_PATTERN.fullmatch(fingerprint):
        raise ReleaseFormatError("schema fingerprint must be 64 lowercase hex characters")
    if not isinstance(author, bytes) or len(author) != 32:
        raise ReleaseFormatError("author must be a 32-byte Ed25519 public key")
    _check_int("sequence", sequence, minimum=1)
    _check_int("epoch", epoch, minimum=0)
    _check_int("created_at_ms", created_at_ms, minimum=0)
    if type(rho) is not float or not math.isfinite(rho) or rho <= 0:
        raise ReleaseFormatError(f"rho must be a positive finite float64, got {rho!r}")

    if not isinstance(basis, list) or len(basis) > MAX_BASIS_IDS:
        raise ReleaseFormatError(f"basis must be an array of at most {MAX_BASIS_IDS} release ids")
    for item in basis:
        if not isinstance(item, bytes) or len(item) != 32:
            raise ReleaseFormatError("every basis entry must be a 32-byte release id")
    _check_int("round", round_, minimum=0, maximum=MAX_ROUND)
    grouping = _parse_grouping(raw_grouping)

    if not isinstance(raw_measurements, list) or not 1 <= len(raw_measurements) <= MAX_MEASUREMENTS:
        raise ReleaseFormatError(f"measurements must be an array of 1 to {MAX_MEASUREMENTS} entries")
    measurements = tuple(_parse_measurement(i, m) for i, m in enumerate(raw_measurements))

    release = Release(
        schema_fingerprint=fingerprint,
        author=author,
        sequence=sequence,
        epoch=epoch,
        created_at_ms=created_at_ms,
        rho=rho,
        measurements=measurements,
        basis=tuple(basis),
        round=round_,
        grouping=grouping,
    )
    _check_fields(release)
    return release


def _parse_grouping(raw: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(raw, list) or len(raw) > MAX_GROUPED_ATTRIBUTES:
        raise ReleaseFormatError(
            f"grouping must be an array of at most {MAX_GROUPED_ATTRIBUTES} [attribute, starts] pairs"
        )
    grouping = []
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ReleaseFormatError("every grouping entry must be an array of [attribute, starts]")
        name, starts = entry
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_ATTRIBUTE_NAME_CHARS:
            raise ReleaseFormatError(f"grouping has an invalid attribute name {name!r}")
        if not isinstance(starts, list) or not 1 <= len(starts) <= MAX_GROUPS_PER_ATTRIBUTE:
            raise ReleaseFormatError(
                f"grouping of {name!r} must list 1 to {MAX_GROUPS_PER_ATTRIBUTE} group start codes"
            )
        for code in starts:
            _check_int(f"group start of {name!r}", code, minimum=0)
        grouping.append((name, tuple(starts)))
    return tuple(grouping)


def _parse_measurement(index: int, raw: Any) -> Measurement:
    if not isinstance(raw, list) or len(raw) != 4:
        raise ReleaseFormatError(f"measurement {index} must be an array of [attributes, shape, sigma, counts]")
    attributes, shape, sigma, counts = raw

    if not isinstance(attributes, list) or not 1 <= len(attributes) <= MAX_ATTRIBUTES_PER_MEASUREMENT:
        raise ReleaseFormatError(
            f"measurement {index} must name 1 to {MAX_ATTRIBUTES_PER_MEASUREMENT} attributes"
        )
    for name in attributes:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_ATTRIBUTE_NAME_CHARS:
            raise ReleaseFormatError(f"measurement {index} has an invalid attribute name {name!r}")
    if len(set(attributes)) != len(attributes):
        raise ReleaseFormatError(f"measurement {index} repeats an attribute: {attributes}")

    if not isinstance(shape, list) or len(shape) != len(attributes):
        raise ReleaseFormatError(f"measurement {index} shape must have one size per attribute")
    cells = 1
    for size in shape:
        _check_int(f"measurement {index} shape entry", size, minimum=1, maximum=MAX_CELLS_PER_MEASUREMENT)
        cells *= size
        if cells > MAX_CELLS_PER_MEASUREMENT:
            raise ReleaseFormatError(
                f"measurement {index} declares more than {MAX_CELLS_PER_MEASUREMENT} cells"
            )

    if type(sigma) is not float or not math.isfinite(sigma) or not MIN_SIGMA <= sigma <= MAX_SIGMA:
        raise ReleaseFormatError(
            f"measurement {index} sigma must be a float64 in [{MIN_SIGMA:g}, {MAX_SIGMA:g}], got {sigma!r}"
        )
    if not isinstance(counts, bytes) or len(counts) != cells * 8:
        length = len(counts) if isinstance(counts, bytes) else type(counts).__name__
        raise ReleaseFormatError(
            f"measurement {index} counts must be {cells * 8} bytes for shape {shape}, got {length}"
        )

    array = np.frombuffer(counts, dtype="<i8").astype(np.int64).reshape(shape)
    return Measurement(attributes=tuple(attributes), counts=array, sigma=sigma)


def _check_int(name: str, value: Any, *, minimum: int, maximum: int = MAX_SEQUENCE) -> None:
    if type(value) is not int or not minimum <= value <= maximum:
        raise ReleaseFormatError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")


def _check_fields(release: Release) -> None:
    """Check the cross-field rules that both the encoder and the decoder enforce."""
    # The privacy cost claimed must cover at least the cost of the noisy counts;
    # a release claiming less would let its author understate its spending.
    needed = release.measurement_rho()
    if release.rho < needed * (1 - 1e-9):
        raise ReleaseFormatError(
            f"release claims rho {release.rho:.6g} but its measurements alone cost rho {needed:.6g}"
        )
    if not 1 <= release.sequence <= MAX_SEQUENCE:
        raise ReleaseFormatError(f"sequence must be in [1, {MAX_SEQUENCE}], got {release.sequence}")
    if release.schema_fingerprint != release.schema_fingerprint.lower():
        raise ReleaseFormatError("schema fingerprint must be lowercase hex")
    if not 0 <= release.round <= MAX_ROUND:
        raise ReleaseFormatError(f"round must be in [0, {MAX_ROUND}], got {release.round}")
    names = [name for name, _ in release.grouping]
    if names != sorted(set(names)):
        raise ReleaseFormatError(
            f"grouping attributes {names} must be sorted by name with no repeats (one encoding per release)"
        )
    for name, starts in release.grouping:
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ReleaseFormatError(
                f"group starts of {name!r} are {list(starts)[:8]}; they must begin at 0 and strictly increase"
            )
