"""How the simulator starts node processes and reaches their APIs.

``DirectLauncher`` runs every node as a ``p2psynth node run`` process on the
host's loopback through ``p2psynth.localnet.LocalNetwork``; nodes dial each
other's real listen addresses. It partitions the network through each node's
API (``PUT /v1/peers/blocked``): a node refuses sync and gossip with the
blocked member keys and disconnects them. The block list lives in the daemon's
memory, so the launcher sets it again on every node it starts while a
partition lasts. ``simulations.partition.NamespaceLauncher`` has the same
interface and cuts connections below the nodes instead, in a relay between
network namespaces; scenarios choose it with ``partition = "namespaces"``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

from p2psynth.client import Client
from p2psynth.identity import load_private_key, public_key_bytes
from p2psynth.localnet import LocalNetwork, LocalNode, free_loopback_ports
from p2psynth.network import peer_id_from_public_key
from p2psynth.nodeconfig import load_node_config
from simulations.scenario import ScenarioError

log = logging.getLogger(__name__)

_LISTEN_LINE = re.compile(r'^listen = \["/ip4/127\.0\.0\.1/tcp/\d+"\]', re.MULTILINE)


class DirectLauncher:
    """Node processes on the host's loopback; no partitions."""

    def __init__(self, nodes: Sequence[LocalNode], *, anti_entropy_s: tuple[float, float]) -> None:
        self.network = LocalNetwork(list(nodes), anti_entropy_s=anti_entropy_s, log_level="INFO")
        # Node names per group of the current partition; empty when the network is whole.
        self._groups: list[set[str]] = []

    def address_of(self, source: LocalNode, target: LocalNode) -> str:
        """Return the address ``source`` dials to reach ``target``."""
        return target.address

    def add_node(self, node: LocalNode, *, dials: Sequence[LocalNode] = ()) -> None:
        """Track a node created after the network (an outsider) so that it is stopped at the end."""
        self.network.nodes.append(node)

    def start(self, nodes: Sequence[LocalNode], *, timeout_s: float) -> float:
        for node in nodes:
            self.network.start(node)
        seconds = self.network.wait_started(nodes, timeout_s=timeout_s)
        if self._groups:
            for node in nodes:
                self._apply_blocks(node)
        return seconds

    def kill(self, node: LocalNode) -> None:
        self.network.kill(node)

    def stop(self, node: LocalNode) -> None:
        self.network.stop(node)

    def is_running(self, node: LocalNode) -> bool:
        return node.process is not None and node.process.poll() is None

    def client(self, node: LocalNode) -> Client:
        return Client.from_node_config(node.config_path, timeout_s=300.0)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        self._groups = [set(group) for group in groups]
        for node in self.network.running():
            self._apply_blocks(node)

    def heal(self) -> None:
        self._groups = []
        for node in self.network.running():
            self._apply_blocks(node)

    def _apply_blocks(self, node: LocalNode) -> None:
        """Block every member outside ``node``'s group (nothing when the network is whole)."""
        own = next((group for group in self._groups if node.name in group), None)
        if self._groups and own is None:
            return  # an outsider belongs to no group
        blocked = [other.public_key for other in self.network.nodes
                   if self._groups and other.name not in own and any(other.name in g for g in self._groups)]
        with self.client(node) as client:
            client.set_blocked(blocked)

    def close(self) -> None:
        self.network.stop_all()


def local_node(folder: Path, *, port: int | None = None) -> LocalNode:
    """Describe an initialized node folder as a ``LocalNode``, with a loopback listen port."""
    config = load_node_config(folder / "node.toml")
    public = public_key_bytes(load_private_key(config.key_file))
    port = port if port is not None else free_loopback_ports(1)[0]
    node = LocalNode(config.name, config.folder, public, str(peer_id_from_public_key(public)), port)
    set_listen_port(node, port)
    return node


def set_listen_port(node: LocalNode, port: int) -> None:
    """Point node.toml's listen address at 127.0.0.1:``port``."""
    text = node.config_path.read_text(encoding="utf-8")
    text, replaced = _LISTEN_LINE.subn(f'listen = ["/ip4/127.0.0.1/tcp/{port}"]', text, count=1)
    if replaced != 1:
        raise ScenarioError(f"{node.config_path} has no loopback 'listen = [...]' line to rewrite")
    node.config_path.write_text(text, encoding="utf-8")
    node.port = port
    load_node_config(node.config_path)
