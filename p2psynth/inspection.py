"""Verify a release file and summarize it for people (``p2psynth inspect``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2psynth.accounting import epsilon_from_rho
from p2psynth.errors import ReleaseFormatError
from p2psynth.release import (
    MAX_RELEASE_BYTES,
    Release,
    author_fingerprint,
    check_against_domain,
    decode_release,
    release_id,
)

# Epsilon is reported at this delta when the release alone is summarized; the
# release records rho, which is what composes.
SUMMARY_DELTA = 1e-9


@dataclass(frozen=True)
class ReleaseSummary:
    """The verified facts of one release."""

    path: Path
    release_id: str
    size_bytes: int
    release: Release
    schema_checked: bool

    def as_dict(self) -> dict[str, Any]:
        r = self.release
        return {
            "file": str(self.path),
            "release_id": self.release_id,
            "size_bytes": self.size_bytes,
            "signature": "valid",
            "format_version": r.version,
            "author_public_key": r.author.hex(),
            "author_fingerprint": author_fingerprint(r.author),
            "schema_fingerprint": r.schema_fingerprint,
            "schema_checked": self.schema_checked,
            "sequence": r.sequence,
            "epoch": r.epoch,
            "created_at": _iso_time(r.created_at_ms),
            "rho": r.rho,
            "epsilon_at_delta_1e-9": epsilon_from_rho(r.rho, SUMMARY_DELTA),
            "basis": [b.hex() for b in r.basis],
            "round": r.round,
            "grouping": {name: list(starts) for name, starts in r.grouping},
            "measurements": [
                {
                    "attributes": list(m.attributes),
                    "shape": list(m.counts.shape),
                    "sigma": m.sigma,
                    "noisy_total": m.total,
                }
                for m in r.measurements
            ],
        }

    def as_text(self) -> str:
        facts = self.as_dict()
        lines = [
            f"release {facts['release_id']}",
            f"  file:        {facts['file']} ({facts['size_bytes']} bytes)",
            "  signature:   valid (Ed25519)",
            f"  author:      {facts['author_fingerprint']} (public key {facts['author_public_key']})",
            f"  schema:      {facts['schema_fingerprint']}"
            + (" (matches the given schema)" if self.schema_checked else ""),
            f"  sequence:    {facts['sequence']}, epoch {facts['epoch']}, created {facts['created_at']}",
            f"  privacy:     rho {facts['rho']:.6g} = epsilon {facts['epsilon_at_delta_1e-9']:.4g} at delta 1e-9",
            f"  basis:       {len(facts['basis'])} earlier release(s)",
            f"  round:       {facts['round'] or 'none (a release outside the round strategy)'}",
            f"  grouping:    {_grouping_text(facts['grouping'])}",
            f"  measurements ({len(facts['measurements'])}):",
        ]
        for m in facts["measurements"]:
            shape = "x".join(str(n) for n in m["shape"])
            lines.append(
                f"    {', '.join(m['attributes'])}: {shape} cells, sigma {m['sigma']:.4g}, noisy total {m['noisy_total']}"
            )
        return "\n".join(lines)


def summarize_release_file(path: Path, *, schema_path: Path | None = None) -> ReleaseSummary:
    """Read, verify and summarize a release file; raise ReleaseFormatError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_RELEASE_BYTES:
            raise ReleaseFormatError(f"{path} is {size} bytes, over the release limit of {MAX_RELEASE_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReleaseFormatError(f"release file {path} not found") from None
    except IsADirectoryError:
        raise ReleaseFormatError(f"{path} is a folder; pass a release file") from None

    try:
        release = decode_release(data)
    except ReleaseFormatError as exc:
        raise ReleaseFormatError(f"{path} is not a valid release: {exc}") from exc

    checked = False
    if schema_path is not None:
        from p2psynth.schema import load_schema

        schema = load_schema(schema_path)
        if schema.fingerprint != release.schema_fingerprint:
            raise ReleaseFormatError(
                f"{path} was made for schema {release.schema_fingerprint[:16]}…, "
                f"but {schema_path} has fingerprint {schema.fingerprint[:16]}…"
            )
        check_against_domain(release, schema.domain)
        checked = True
    return ReleaseSummary(path, release_id(data).hex(), len(data), release, checked)


def _iso_time(milliseconds: int) -> str:
    try:
        return dt.datetime.fromtimestamp(milliseconds / 1000, tz=dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{milliseconds} ms since the epoch (out of the calendar's range)"


def _grouping_text(grouping: dict[str, list[int]]) -> str:
    if not grouping:
        return "none (every attribute at full resolution)"
    return "; ".join(f"{name} in {len(starts)} groups" for name, starts in grouping.items())
