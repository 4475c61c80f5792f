"""Daemons as separate processes on 127.0.0.1: publish, converge, late join, crash and restart.

One network of four real node processes (libp2p, SQLite files in a temporary
folder) is shared by the tests of this module, which run in order: the
first three nodes publish and converge, the fourth joins late and catches up
from history, then publishes itself, then one node is killed and restarted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2psynth.client import Client
from p2psynth.localnet import LocalNetwork, create_local_network

from nodeharness import write_adult_parts

pytestmark = pytest.mark.slow

TIMEOUT_S = 240.0
ROWS_PER_NODE = 4000


@pytest.fixture(scope="module")
def network(tmp_path_factory, adult_data_path, adult_schema_path):
    root = tmp_path_factory.mktemp("network")
    paths = write_adult_parts(root, adult_data_path, parts=4, rows_per_part=ROWS_PER_NODE)
    nodes = create_local_network(root / "nodes", data_paths=paths, schema_path=adult_schema_path, strategy="mst")
    with LocalNetwork(nodes, anti_entropy_s=(1.0, 2.0)) as net:
        yield net


def _publish(node) -> dict:
    with Client.from_node_config(node.config_path) as client:
        return client.publish()


def _budget(node) -> dict:
    with Client.from_node_config(node.config_path) as client:
        return client.budget()


def _stored(node) -> int:
    return ((node.status() or {}).get("releases") or {}).get("stored", 0)


def test_three_nodes_publish_and_converge(network):
    first_three = network.nodes[:3]
    for node in first_three:
        network.start(node)
    network.wait_started(first_three, timeout_s=TIMEOUT_S)
    for node in first_three:
        _publish(node)

    network.wait_until(
        lambda: network.converged(first_three, releases=3), timeout_s=TIMEOUT_S, what="three nodes to converge"
    )
    ids = set(network.model_ids(first_three))
    assert len(ids) == 1


def test_late_joiner_catches_up_without_publish(network):
    late = network.nodes[3]
    network.start(late)
    network.wait_started([late], timeout_s=TIMEOUT_S)
    network.wait_until(lambda: _stored(late) == 3, timeout_s=TIMEOUT_S, what="the late joiner to pull history")
    network.wait_until(lambda: network.converged(releases=3), timeout_s=TIMEOUT_S, what="one model id")
    assert len(set(network.model_ids())) == 1


def test_four_nodes_hold_all_releases(network):
    _publish(network.nodes[3])
    network.wait_until(lambda: network.converged(releases=4), timeout_s=TIMEOUT_S, what="four releases everywhere")
    statuses = [node.status() for node in network.nodes]
    ids = {s["model"]["model_id"] for s in statuses}
    assert len(ids) == 1
    provenance = statuses[0]["model"]["provenance"]
    assert len(provenance["members"]) == 4
    for status in statuses:
        # Gossip and anti-entropy may both fetch one release: a counted, harmless replay.
        assert set(status["rejections"]["by_reason"]) <= {"replay"}, status["rejections"]


def test_killed_node_restarts_and_catches_up(network):
    victim = network.nodes[1]
    budget_before = _budget(victim)
    network.kill(victim)

    # The others go on: a new release spreads while the victim is down.
    _publish(network.nodes[0])
    survivors = [n for n in network.nodes if n is not victim]
    network.wait_until(
        lambda: network.converged(survivors, releases=5), timeout_s=TIMEOUT_S, what="survivors to converge"
    )

    network.start(victim)
    network.wait_started([victim], timeout_s=TIMEOUT_S)
    network.wait_until(lambda: network.converged(releases=5), timeout_s=TIMEOUT_S, what="the restarted node")
    budget_after = _budget(victim)
    assert budget_after["rho_spent"] == budget_before["rho_spent"]
    assert budget_after["releases"] == budget_before["releases"] == 1


def test_sigterm_stops_every_node(network):
    for node in network.nodes:
        assert network.stop(node, timeout_s=20.0) == 0
    for node in network.nodes:
        status = json.loads(Path(node.folder / "status.json").read_text())
        assert status["running"] is False
