"""node.toml: one node's settings, and writing a fresh one for 'p2psynth init'.

Relative paths in node.toml are resolved against the folder of node.toml, so
a node folder can be moved or restored from backup as a whole. Unknown
sections and keys are errors rather than being ignored, because a typo in a
privacy setting must never fall back to a default silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2psynth.errors import ConfigError
from p2psynth.tomlfile import read_toml

DEFAULT_API_PORT = 8470


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Location of the private table and the options for reading it."""

    path: Path | None
    schema: Path | None
    header: str | bool = "auto"
    skip_rows: int = 0
    delimiter: str = ","


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """The lifetime budget and the default cost of one release."""

    lifetime_epsilon: float
    delta: float
    release_epsilon: float


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """libp2p settings: all addresses default to loopback."""

    network_id: str
    members_file: Path | None
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """The local HTTP API."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    token_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class PublishConfig:
    """When the daemon publishes without being asked; both off by default.

    Every release spends budget, so a schedule ends when the lifetime budget does.
    """

    interval_hours: float = 0.0  # 0: only on request (p2psynth publish, POST /v1/publish)
    on_data_change: bool = False  # publish when the data file's size or modification time changes
    # "rounds": the network's three-round strategy (docs/strategy.md); "mst": each node
    # selects its own MST pairs in one release. Every member must use the same strategy,
    # and for "rounds" the same focus_attributes.
    strategy: str = "rounds"
    round_wait_s: float = 300.0  # how long a round waits for the other members' previous round
    focus_attributes: tuple[str, ...] = ()  # paired with every other attribute in round 3


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """A node's settings with every path absolute."""

    path: Path
    name: str
    key_file: Path
    store_file: Path
    releases_dir: Path
    data: DataConfig
    privacy: PrivacyConfig
    network: NetworkConfig
    api: ApiConfig = field(default_factory=ApiConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    @property
    def folder(self) -> Path:
        return self.path.parent


STRATEGIES = ("rounds", "mst")

_SECTIONS: dict[str, set[str]] = {
    "node": {"name", "key_file", "store_file", "releases_dir"},
    "data": {"path", "schema", "header", "skip_rows", "delimiter"},
    "privacy": {"lifetime_epsilon", "delta", "release_epsilon"},
    "network": {"network_id", "members_file", "listen", "bootstrap"},
    "api": {"listen", "token_file"},
    "publish": {"interval_hours", "on_data_change", "strategy", "round_wait_s", "focus_attributes"},
}


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate node.toml; raise ConfigError naming the key and the fix."""
    path = Path(path).resolve()
    raw = read_toml(path, what="node config", missing_hint="create a node with 'p2psynth init DIR'")

    reader = _Reader(path, raw)
    folder = path.parent

    node = reader.section("node")
    data = reader.section("data")
    privacy = reader.section("privacy")
    network = reader.section("network")
    api = reader.section("api", required=False)
    publish = reader.section("publish", required=False)

    interval_hours = publish.get("interval_hours", 0.0)
    if isinstance(interval_hours, bool) or not isinstance(interval_hours, (int, float)) or not (
        interval_hours == 0 or 1 / 60 <= interval_hours < math.inf
    ):
        raise ConfigError(
            f"{path}: publish.interval_hours = {interval_hours!r}; use 0 (publish on request only) "
            "or a number of hours of at least 1/60"
        )
    on_data_change = publish.get("on_data_change", False)
    if not isinstance(on_data_change, bool):
        raise ConfigError(f"{path}: publish.on_data_change = {on_data_change!r}; use true or false")
    strategy = publish.get("strategy", "rounds")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"{path}: publish.strategy = {strategy!r}; use one of {', '.join(repr(s) for s in STRATEGIES)} "
            "(the same on every member)"
        )
    round_wait_s = publish.get("round_wait_s", 300.0)
    if isinstance(round_wait_s, bool) or not isinstance(round_wait_s, (int, float)) or not 0 < round_wait_s < math.inf:
        raise ConfigError(
            f"{path}: publish.round_wait_s = {round_wait_s!r}; use a positive number of seconds, such as 300"
        )
    focus_attributes = reader.string_list(publish, "publish", "focus_attributes", default=[])

    lifetime_epsilon = reader.positive_float(privacy, "privacy", "lifetime_epsilon")
    release_epsilon = reader.positive_float(privacy, "privacy", "release_epsilon")
    delta = reader.positive_float(privacy, "privacy", "delta")
    if delta >= 1e-3:
        raise ConfigError(
            f"{path}: privacy.delta = {delta:g} is too large; use at most 1e-3, "
            "and far less than 1 / (number of rows), e.g. 1e-9"
        )
    if release_epsilon > lifetime_epsilon:
        raise ConfigError(
            f"{path}: privacy.release_epsilon = {release_epsilon:g} exceeds "
            f"privacy.lifetime_epsilon = {lifetime_epsilon:g}; lower the release epsilon"
        )

    header = data.get("header", "auto")
    if header not in ("auto", True, False):
        raise ConfigError(f"{path}: data.header = {header!r}; use \"auto\", true or false")

    api_host, api_port = _parse_api_listen(path, api.get("listen", f"127.0.0.1:{DEFAULT_API_PORT}"))

    return NodeConfig(
        path=path,
        name=reader.string(node, "node", "name"),
        key_file=folder / reader.string(node, "node", "key_file", default="node.key"),
        store_file=folder / reader.string(node, "node", "store_file", default="store.sqlite"),
        releases_dir=folder / reader.string(node, "node", "releases_dir", default="releases"),
        data=DataConfig(
            path=reader.optional_path(data, "data", "path", folder),
            schema=reader.optional_path(data, "data", "schema", folder),
            header=header,
            skip_rows=reader.non_negative_int(data, "data", "skip_rows", default=0),
            delimiter=reader.string(data, "data", "delimiter", default=","),
        ),
        privacy=PrivacyConfig(lifetime_epsilon=lifetime_epsilon, delta=delta, release_epsilon=release_epsilon),
        network=NetworkConfig(
            network_id=reader.string(network, "network", "network_id"),
            members_file=reader.optional_path(network, "network", "members_file", folder),
            listen=tuple(reader.string_list(network, "network", "listen", default=["/ip4/127.0.0.1/tcp/0"])),
            bootstrap=tuple(reader.string_list(network, "network", "bootstrap", default=[])),
        ),
        publish=PublishConfig(
            interval_hours=float(interval_hours),
            on_data_change=on_data_change,
            strategy=strategy,
            round_wait_s=float(round_wait_s),
            focus_attributes=tuple(focus_attributes),
        ),
        api=ApiConfig(
            host=api_host,
            port=api_port,
            token_file=folder / reader.string(api, "api", "token_file", default="api.token"),
        ),
    )


def render_node_config(
    *,
    name: str,
    data_path: str,
    schema_path: str,
    network_id: str,
    lifetime_epsilon: float,
    release_epsilon: float,
    delta: float,
    api_port: int = DEFAULT_API_PORT,
    strategy: str = "rounds",
) -> str:
    """Return the text of a commented node.toml for 'p2psynth init'."""
    return f"""\
# p2psynth node configuration. Relative paths are resolved against this file's folder.

[node]
name = {_toml_string(name)}
key_file = "node.key"            # Ed25519 private key, mode 0600; also the libp2p identity
store_file = "store.sqlite"      # releases, budget ledger, peers; back it up with the key
releases_dir = "releases"        # copies of own releases written by 'p2psynth measure'

[data]
path = {_toml_string(data_path)}   # the private table (CSV or Parquet, optionally .gz)
schema = {_toml_string(schema_path)}   # the network's schema; every member uses the same file
header = "auto"                  # "auto", true or false: does the file start with column names?
skip_rows = 0                    # junk lines to skip before the header or first row
delimiter = ","

[privacy]
lifetime_epsilon = {lifetime_epsilon!r}   # total epsilon this node may ever spend
delta = {delta!r}                 # delta of the (epsilon, delta) guarantee
release_epsilon = {release_epsilon!r}    # epsilon of one release (releases compose under zCDP)

[network]
network_id = {_toml_string(network_id)}
members_file = "members.toml"    # public keys of the network's members
listen = ["/ip4/127.0.0.1/tcp/0"]   # loopback by default; open other addresses deliberately
bootstrap = []                   # multiaddrs of peers to dial, /ip4/.../tcp/.../p2p/<peer id>

[api]
listen = "127.0.0.1:{api_port}"   # the local HTTP API; keep it on loopback
token_file = "api.token"         # bearer token, mode 0600

[publish]
interval_hours = 0               # 0: publish only on request; else every N hours (each release spends budget)
on_data_change = false           # publish when the data file changes
strategy = {_toml_string(strategy)}             # "rounds" (three network-wide rounds) or "mst"; the same on every member
round_wait_s = 300               # a round waits this long for the other members' previous round
focus_attributes = []            # e.g. ["income"]: paired with every attribute in round 3; the same on every member
"""


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _parse_api_listen(path: Path, value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or value.count(":") < 1:
        raise ConfigError(f"{path}: api.listen = {value!r}; use HOST:PORT such as \"127.0.0.1:{DEFAULT_API_PORT}\"")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{path}: api.listen port {port_text!r} is invalid; use 0 to 65535")
    return host, port


class _Reader:
    """Typed access to the parsed TOML with errors naming file, section and key."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        unknown = set(raw) - set(_SECTIONS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown section(s) {sorted(unknown)}; known sections: {sorted(_SECTIONS)}"
            )
        self.raw = raw

    def section(self, name: str, *, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{self.path}: section [{name}] is missing")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        unknown = set(value) - _SECTIONS[name]
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown key(s) {sorted(unknown)} in [{name}]; "
                f"known keys: {sorted(_SECTIONS[name])}"
            )
        return value

    def string(self, table: dict, section: str, key: str, *, default: str | None = None) -> str:
        value = table.get(key, default)
        if value is None:
            raise ConfigError(f"{self.path}: {section}.{key} is missing")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.path}: {section}.{key} = {value!r}; expected a non-empty string")
        return value

    def optional_path(self, table: dict, section: str, key: str, folder: Path) -> Path | None:
        value = table.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{self.path}: {section}.{key} = {value!r}; expected a path string")
        return (folder / Path(value).expanduser()).resolve()

    def positive_float(self, table: dict, section: str, key: str) -> float:
        value = table.get(key)
        if value is None:
            raise ConfigError(f"{self.path}: {section}.{key} is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{self.path}: {section}.{key} = {value!r}; expected a positive number")
        return float(value)

    def non_negative_int(self, table: dict, section: str, key: str, *, default: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{self.path}: {section}.{key} = {value!r}; expected an integer >= 0")
        return value

    def string_list(self, table: dict, section: str, key: str, *, default: list[str]) -> list[str]:
        value = table.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.path}: {section}.{key} = {value!r}; expected a list of strings")
        return value
