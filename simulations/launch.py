"""How the simulator starts node processes and reaches their APIs.

``DirectLauncher`` runs every node as a ``p2psynth node run`` process on the
host's loopback through ``p2psynth.localnet.LocalNetwork``; nodes dial each
other's real listen addresses. It cannot partition the network.
``simulations.partition.NamespaceLauncher`` has the same interface and puts
each node in its own network namespace joined by a relay the simulator
controls; the runner picks it only for scenarios with partition events.
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

    supports_partition = False

    def __init__(self, nodes: Sequence[LocalNode], *, anti_entropy_s: tuple[float, float]) -> None:
        self.network = LocalNetwork(list(nodes), anti_entropy_s=anti_entropy_s, log_level="INFO")

    def address_of(self, source: LocalNode, target: LocalNode) -> str:
        """Return the address ``source`` dials to reach ``target``."""
        return target.address

    def add_node(self, node: LocalNode, *, dials: Sequence[LocalNode] = ()) -> None:
        """Track a node created after the network (an outsider) so that it is stopped at the end."""
        self.network.nodes.append(node)

    def start(self, nodes: Sequence[LocalNode], *, timeout_s: float) -> float:
        for node in nodes:
            self.network.start(node)
        return self.network.wait_started(nodes, timeout_s=timeout_s)

    def kill(self, node: LocalNode) -> None:
        self.network.kill(node)

    def stop(self, node: LocalNode) -> None:
        self.network.stop(node)

    def is_running(self, node: LocalNode) -> bool:
        return node.process is not None and node.process.poll() is None

    def client(self, node: LocalNode) -> Client:
        return Client.from_node_config(node.config_path, timeout_s=300.0)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        raise ScenarioError(
            "this launcher cannot partition the network; partition events run with network namespaces "
            "(root and the 'ip' command are needed)"
        )

    def heal(self) -> None:
        self.partition(())

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
