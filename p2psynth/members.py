"""The members file: the public keys whose releases a network accepts.

members.toml lists one ``[[member]]`` table per organization::

    [[member]]
    name = "hospital-a"            # display name in logs and reports
    public_key = "54eb97…"         # 64 hex characters, the raw Ed25519 public key
    max_rows = 100000              # optional: a public upper bound on the member's table size

``max_rows`` feeds the plausibility check of releases: a release whose noisy
totals exceed it by more than the noise can explain is rejected. Leave it out
where no public bound is known.

Membership is about authorship, not transport: a release is accepted only if
a member signed it, but any connected peer may relay it, because the signature
travels with the bytes. Non-member peers are still disconnected by the network
layer, so that only members spend a node's bandwidth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from p2psynth.errors import ConfigError
from p2psynth.tomlfile import read_toml

_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Member:
    """One member of the network."""

    name: str
    public_key: bytes
    max_rows: int | None = None


@dataclass(frozen=True)
class Members:
    """The member list, indexed by public key."""

    by_key: dict[bytes, Member]

    def __contains__(self, public_key: object) -> bool:
        return public_key in self.by_key

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, public_key: bytes) -> Member | None:
        return self.by_key.get(public_key)

    def name_of(self, public_key: bytes) -> str:
        member = self.by_key.get(public_key)
        return member.name if member else f"non-member {public_key.hex()[:16]}"


def load_members(path: Path) -> Members:
    """Read members.toml; raise ConfigError naming the entry and the fix."""
    path = Path(path)
    raw = read_toml(path, what="members file", missing_hint="set network.members_file in node.toml")

    unknown = set(raw) - {"member"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; list members as [[member]] tables")
    entries = raw.get("member", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[member]] entries; list at least this node's own public key")

    by_key: dict[bytes, Member] = {}
    names: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        where = f"{path}: member {position}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        extra = set(entry) - {"name", "public_key", "max_rows"}
        if extra:
            raise ConfigError(f"{where} has unknown key(s) {sorted(extra)}; allowed: name, public_key, max_rows")

        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where} needs a non-empty name")
        key_text = entry.get("public_key")
        if not isinstance(key_text, str) or not _KEY_PATTERN.fullmatch(key_text.lower()):
            raise ConfigError(
                f"{where} ({name}) has public_key {key_text!r}; expected 64 hex characters "
                "as printed by 'p2psynth init'"
            )
        max_rows = entry.get("max_rows")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise ConfigError(f"{where} ({name}) has max_rows {max_rows!r}; expected a positive integer")

        key = bytes.fromhex(key_text)
        if key in by_key:
            raise ConfigError(f"{where} ({name}) repeats the public key of {by_key[key].name}")
        if name in names:
            raise ConfigError(f"{where} repeats the name {name!r}; names must be unique")
        names.add(name)
        by_key[key] = Member(name=name, public_key=key, max_rows=max_rows)
    return Members(by_key)
