"""A node's folder: creating it, opening its parts, and publishing a release from it.

``p2psynth init DIR`` lays out::

    DIR/node.toml      settings (nodeconfig)
    DIR/node.key       Ed25519 private key, mode 0600: signs releases, libp2p identity
    DIR/store.sqlite   releases, budget ledger, peers (store, ledger)
    DIR/members.toml   the network's members; starts with this node alone
    DIR/api.token      bearer token of the local HTTP API, mode 0600
    DIR/releases/      copies of own releases, one file each

The functions here are shared by the CLI and the daemon, so that both publish
through the same ledger path.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2psynth.accounting import rho_from_epsilon
from p2psynth.errors import ConfigError, PrivacyError, RoundInProgressError
from p2psynth.identity import create_private_key, load_private_key, public_key_bytes
from p2psynth.ledger import BudgetLedger
from p2psynth.measurement import MeasurementResult, measure_marginals, measure_mst
from p2psynth.noise import SecureRandom
from p2psynth.nodeconfig import NodeConfig, load_node_config, render_node_config
from p2psynth.release import Release, release_id
from p2psynth.store import Store

if TYPE_CHECKING:
    from p2psynth.strategy import RoundPlan

log = logging.getLogger(__name__)

RELEASE_SUFFIX = ".p2pr"


@dataclass(frozen=True)
class OpenNode:
    """A node's configuration, key, store and ledger, opened together."""

    config: NodeConfig
    key: Ed25519PrivateKey
    store: Store
    ledger: BudgetLedger

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "OpenNode":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class PublishedRelease:
    """A release that was debited, stored and written to a file."""

    data: bytes
    release: Release
    path: Path
    load_summary: str
    selected_pairs: tuple[tuple[str, str], ...]


def init_node(
    folder: Path,
    *,
    name: str | None = None,
    data_path: str = "",
    schema_path: str = "",
    network_id: str = "p2psynth-local",
    lifetime_epsilon: float = 4.0,
    release_epsilon: float = 1.0,
    delta: float = 1e-9,
    api_port: int = 8470,
    strategy: str = "rounds",
) -> NodeConfig:
    """Create a node folder with a new key, an empty store and a node.toml."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in (folder / "node.toml", folder / "node.key", folder / "store.sqlite") if p.exists()]
    if existing:
        raise ConfigError(
            f"{folder} already contains a node ({', '.join(existing)}); choose an empty folder. "
            "Never re-initialize a node that has published: its ledger records the budget spent."
        )
    if release_epsilon > lifetime_epsilon:
        raise ConfigError(
            f"release epsilon {release_epsilon:g} exceeds the lifetime epsilon {lifetime_epsilon:g}"
        )
    rho_from_epsilon(lifetime_epsilon, delta)  # validates epsilon and delta

    node_name = name or folder.resolve().name
    key = create_private_key(folder / "node.key")
    Store.create(folder / "store.sqlite", node_public_key=public_key_bytes(key)).close()
    (folder / "releases").mkdir(exist_ok=True)
    _write_private_file(folder / "api.token", secrets.token_urlsafe(32) + "\n")
    (folder / "members.toml").write_text(render_members_file([(node_name, public_key_bytes(key))]), encoding="utf-8")
    (folder / "node.toml").write_text(
        render_node_config(
            name=node_name,
            data_path=data_path,
            schema_path=schema_path,
            network_id=network_id,
            lifetime_epsilon=lifetime_epsilon,
            release_epsilon=release_epsilon,
            delta=delta,
            api_port=api_port,
            strategy=strategy,
        ),
        encoding="utf-8",
    )
    return load_node_config(folder / "node.toml")


def render_members_file(members: list[tuple[str, bytes]]) -> str:
    """Return members.toml text listing ``(display name, public key)`` pairs."""
    lines = [
        "# Members of the network: only releases signed by these keys are accepted.",
        "# Exchange public keys out of band (p2psynth status prints this node's key).",
        "",
    ]
    for name, key in members:
        lines += ["[[member]]", f'name = "{name}"', f'public_key = "{key.hex()}"', ""]
    return "\n".join(lines)


def open_node(config_path: Path) -> OpenNode:
    """Load node.toml, the key and the store; verify that they belong together."""
    config = load_node_config(config_path)
    key = load_private_key(config.key_file)
    store = Store.open(config.store_file, node_public_key=public_key_bytes(key))
    ledger = BudgetLedger(
        store, node_key=key, epsilon=config.privacy.lifetime_epsilon, delta=config.privacy.delta
    )
    return OpenNode(config=config, key=key, store=store, ledger=ledger)


def measure_and_publish(
    node: OpenNode,
    *,
    epsilon: float | None = None,
    data_path: Path | None = None,
    out_path: Path | None = None,
    random: SecureRandom | None = None,
) -> PublishedRelease:
    """Encode the node's table, measure it MST style, debit the ledger and write the release.

    The budget is checked before the data is read, and again inside the
    ledger transaction that stores the release.
    """
    config = node.config
    epsilon = config.privacy.release_epsilon if epsilon is None else float(epsilon)
    rho = rho_from_epsilon(epsilon, config.privacy.delta)
    _raise_if_rounds_unfinished(node)
    node.ledger.check_affordable(rho)

    schema, encoded = _read_table(node, data_path)
    result: MeasurementResult = measure_mst(
        encoded.codes, schema.domain, rho=rho, random=random if random is not None else SecureRandom()
    )
    data, release = node.ledger.publish(
        schema_fingerprint=schema.fingerprint,
        measurements=list(result.measurements),
        rho=result.rho,
        epoch=node.store.max_own_epoch() + 1,
    )
    return _write_release(node, data, release, out_path, encoded, result.selected_pairs)


def measure_round_and_publish(
    node: OpenNode,
    plan: "RoundPlan",
    *,
    epoch: int,
    basis: tuple[bytes, ...] = (),
    reserve_rho: float | None = None,
    data_path: Path | None = None,
    random: SecureRandom | None = None,
) -> PublishedRelease:
    """Measure one round of the network strategy on the node's table and publish it.

    The marginals of ``plan`` are measured on its grouping (grouped codes,
    one cell per group) with the plan's rho. ``reserve_rho``, given for round
    1, is the whole epoch's rho: the rounds start only if all of them fit in
    the budget.
    """
    node.ledger.check_affordable(plan.rho if reserve_rho is None else reserve_rho)
    schema, encoded = _read_table(node, data_path)

    codes, domain, grouping = encoded.codes, schema.domain, ()
    if plan.grouping is not None:
        codes, domain, grouping = plan.grouping.group_codes(codes), plan.grouping.working, plan.grouping.starts()
    measurements = measure_marginals(
        codes, domain, plan.attribute_sets, rho=plan.rho, random=random if random is not None else SecureRandom()
    )
    data, release = node.ledger.publish(
        schema_fingerprint=schema.fingerprint,
        measurements=measurements,
        rho=plan.rho,
        epoch=epoch,
        basis=tuple(basis),
        round=plan.round,
        grouping=grouping,
    )
    pairs = tuple(s for s in plan.attribute_sets if len(s) == 2)
    return _write_release(node, data, release, None, encoded, pairs)


def _raise_if_rounds_unfinished(node: OpenNode) -> None:
    """Raise RoundInProgressError while the node's latest epoch has measurement rounds to go.

    An MST release starts a new epoch, which would replace the unfinished
    one in every model and waste the budget its rounds already spent.
    """
    from p2psynth.release import decode_release

    epoch = node.store.max_own_epoch()
    rounds = {
        decode_release(stored.data).round for stored in node.store.own_releases() if stored.epoch == epoch
    }
    if 1 in rounds and 3 not in rounds:
        raise RoundInProgressError(
            f"epoch {epoch} of this node is in its measurement rounds (published: {sorted(rounds)}); "
            "a release now would start a new epoch and waste the budget of those rounds. Start the daemon "
            f"('p2psynth node run --config {node.config.path}') to finish the epoch, then publish"
        )


def _read_table(node: OpenNode, data_path: Path | None):
    """Return (schema, encoded table) of the node's data file; raise when it has no rows."""
    # Deferred imports: the schema and encoding modules pull in pandas.
    from p2psynth.encoding import encode_file
    from p2psynth.schema import load_schema

    config = node.config
    data_path = Path(data_path) if data_path is not None else config.data.path
    if data_path is None:
        raise ConfigError(f"{config.path}: data.path is not set; set it or pass --data FILE")
    if config.data.schema is None:
        raise ConfigError(f"{config.path}: data.schema is not set; point it at the network's schema TOML")
    schema = load_schema(config.data.schema)
    encoded = encode_file(
        data_path,
        schema,
        header=config.data.header,
        skip_rows=config.data.skip_rows,
        delimiter=config.data.delimiter,
    )
    if len(encoded.codes) == 0:
        raise PrivacyError(f"{data_path} has no rows to measure")
    return schema, encoded


def _write_release(node: OpenNode, data: bytes, release: Release, out_path, encoded, pairs) -> PublishedRelease:
    # The release is committed to the ledger: only now may its bytes leave memory.
    path = Path(out_path) if out_path is not None else default_release_path(node.config, data, release)
    write_file_atomically(path, data)
    return PublishedRelease(data, release, path, encoded.report.summary(), tuple(pairs))


def default_release_path(config: NodeConfig, data: bytes, release: Release) -> Path:
    return config.releases_dir / f"release-{release.sequence:06d}-{release_id(data).hex()[:16]}{RELEASE_SUFFIX}"


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
