"""Node folders of a simulated network: members file, bootstrap lists, topology.

``p2psynth.localnet.create_local_network`` initializes the folders (keys,
stores, node.toml, a members file listing everyone) and makes every node
bootstrap from every other. This module then rewrites what a scenario varies:

- the ``bootstrap`` list of each node.toml, which is the topology. A node
  dials only its bootstrap peers and accepts peers that dial it, because the
  network layer turns off the swarm's auto-connector and gossip peer exchange;
- ``max_rows`` in members.toml, when the scenario declares public table sizes.

A topology is a list of directed dials ``(a, b)``: node a lists node b. A
connection, once open, carries traffic both ways, so connectivity is the
undirected graph of the dials.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from p2psynth.localnet import LocalNode, create_local_network
from p2psynth.nodeconfig import load_node_config
from simulations.scenario import Scenario, ScenarioError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

_BOOTSTRAP_LINE = re.compile(r"^bootstrap = \[.*?\]", re.MULTILINE)


def topology_edges(kind: str, count: int, *, degree: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Return the directed dials ``(a, b)`` between node indices for a topology kind."""
    if count == 1:
        return []
    if kind == "full":
        return [(a, b) for a in range(count) for b in range(count) if a != b]
    if kind == "line":
        return [(i, i + 1) for i in range(count - 1)]
    if kind == "ring":
        edges = [(i, i + 1) for i in range(count - 1)]
        return edges + ([(count - 1, 0)] if count > 2 else [])

    # random: a ring in random order keeps the graph connected, then each node
    # dials random others until it has dialed ``degree`` peers.
    order = rng.permutation(count)
    edges = {(int(order[i]), int(order[(i + 1) % count])) for i in range(count)} if count > 2 else {(0, 1)}
    for a in range(count):
        others = [b for b in rng.permutation(count) if b != a]
        for b in others:
            if sum(1 for (x, _) in edges if x == a) >= min(degree, count - 1):
                break
            if (a, int(b)) not in edges and (int(b), a) not in edges:
                edges.add((a, int(b)))
    return sorted(edges)


def components(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[set[str]]:
    """Return the connected components of the undirected graph on ``names``."""
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for n in names:
        groups.setdefault(root(n), set()).add(n)
    return list(groups.values())


def build_nodes(
    scenario: Scenario,
    root: Path,
    *,
    data_paths: Sequence[Path],
    row_counts: Sequence[int],
    network_id: str,
) -> list[LocalNode]:
    """Initialize one node folder per data file and write the scenario's members file."""
    nodes = create_local_network(
        root,
        data_paths=data_paths,
        schema_path=scenario.data.schema,
        network_id=network_id,
        names=scenario.nodes.names,
        lifetime_epsilon=scenario.nodes.lifetime_epsilon,
        release_epsilon=max(scenario.nodes.release_epsilons),
        delta=scenario.nodes.delta,
        strategy=scenario.nodes.strategy,
        round_wait_s=scenario.nodes.round_wait_s,
    )
    max_rows = None
    if scenario.nodes.max_rows == "declared":
        max_rows = [int(np.ceil(rows * scenario.nodes.max_rows_margin)) for rows in row_counts]
    text = render_members(nodes, max_rows=max_rows)
    for node in nodes:
        (node.folder / "members.toml").write_text(text, encoding="utf-8")
    return nodes


def render_members(nodes: Sequence[LocalNode], *, max_rows: Sequence[int] | None = None,
                   extra: Sequence[tuple[str, bytes]] = ()) -> str:
    """Return members.toml text for ``nodes`` (with public ``max_rows`` if given) and ``extra`` keys."""
    lines = ["# Members of this simulated network, written by the simulator.", ""]
    for position, node in enumerate(nodes):
        lines += ["[[member]]", f'name = "{node.name}"', f'public_key = "{node.public_key.hex()}"']
        if max_rows is not None:
            lines.append(f"max_rows = {int(max_rows[position])}")
        lines.append("")
    for name, key in extra:
        lines += ["[[member]]", f'name = "{name}"', f'public_key = "{key.hex()}"', ""]
    return "\n".join(lines)


def set_bootstrap(node: LocalNode, addresses: Sequence[str]) -> None:
    """Replace the bootstrap list in ``node``'s node.toml and check that the file still loads."""
    text = node.config_path.read_text(encoding="utf-8")
    rendered = "bootstrap = [" + ", ".join(f'"{a}"' for a in addresses) + "]"
    text, replaced = _BOOTSTRAP_LINE.subn(lambda _: rendered, text, count=1)
    if replaced != 1:
        raise ScenarioError(f"{node.config_path} has no 'bootstrap = [...]' line to rewrite")
    node.config_path.write_text(text, encoding="utf-8")
    load_node_config(node.config_path)


def apply_topology(
    nodes: Sequence[LocalNode],
    edges: Sequence[tuple[int, int]],
    *,
    address_of: Callable[[LocalNode, LocalNode], str],
) -> None:
    """Write each node's bootstrap list from the directed dials; ``address_of(a, b)`` is how a reaches b."""
    for index, node in enumerate(nodes):
        targets = [nodes[b] for (a, b) in edges if a == index]
        set_bootstrap(node, [address_of(node, target) for target in targets])


def direct_address(_source: LocalNode, target: LocalNode) -> str:
    return target.address
