"""The daemon's measurement rounds: waiting, deadlines, resuming, adoption across real node processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2psynth.cli import main as cli_main
from p2psynth.client import Client
from p2psynth.identity import load_private_key, public_key_bytes
from p2psynth.localnet import LocalNetwork, create_local_network
from p2psynth.nodefolder import render_members_file
from p2psynth.release import decode_release
from p2psynth.store import Store

from nodeharness import DaemonHarness, api_client, make_node, wait_for, write_adult_parts, write_small_adult
from releasefactory import fixed_key

pytestmark = pytest.mark.slow

TIMEOUT_S = 240.0
ROWS_PER_NODE = 3000


def _set_round_wait(config_path: Path, seconds: float) -> None:
    text = config_path.read_text(encoding="utf-8")
    lines = [f"round_wait_s = {seconds!r}" if line.startswith("round_wait_s") else line for line in text.splitlines()]
    config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _own_releases(store_path: Path) -> list:
    with Store.open(store_path) as store:
        return [decode_release(stored.data) for stored in store.own_releases()]


def test_rounds_wait_block_second_epoch_resume(tmp_path, capsys, adult_data_path, adult_schema_path):
    data = write_small_adult(tmp_path / "adult-small.csv", adult_data_path, rows=2000)
    config = make_node(tmp_path / "alone", data_path=data, schema_path=adult_schema_path, strategy="rounds")
    own = public_key_bytes(load_private_key(config.key_file))
    absent = fixed_key(77).public_key().public_bytes_raw()
    (config.folder / "members.toml").write_text(render_members_file([("alone", own), ("absent", absent)]))
    _set_round_wait(config.path, 600.0)

    harness = DaemonHarness([config.path])
    (daemon,) = harness.start()
    try:
        with api_client(daemon) as client:
            first = client.post("/v1/publish", json={})
            assert first.status_code == 200, first.text
            assert first.json()["round"] == 1
            assert first.json()["rounds_to_follow"] == [2, 3]
            rounds = wait_for(
                lambda: (r := client.get("/v1/status").json()["rounds"])["state"] == "waiting" and r,
                timeout_s=30, what="round 2 to wait for the absent member",
            )
            assert rounds["round"] == 2
            assert rounds["waiting_for"] == ["absent"]

            again = client.post("/v1/publish", json={})
            assert again.status_code == 409
            assert "still in round 2" in again.json()["detail"]
            budget = client.get("/v1/budget").json()
            assert budget["releases"] == 1
    finally:
        harness.stop()

    # An offline MST release would start a new epoch and waste round 1's budget.
    assert cli_main(["measure", "--config", str(config.path)]) == 1
    assert "is in its measurement rounds" in capsys.readouterr().err
    assert len(_own_releases(config.store_file)) == 1

    # Restarted with a short wait, the node resumes epoch 1 and finishes it alone.
    _set_round_wait(config.path, 1.0)
    harness = DaemonHarness([config.path])
    (daemon,) = harness.start()
    try:
        with api_client(daemon) as client:
            wait_for(lambda: client.get("/v1/status").json()["rounds"]["state"] == "done"
                     and client.get("/v1/status").json()["rounds"]["round"] == 3,
                     timeout_s=60, what="the resumed epoch to finish")
            status = client.get("/v1/status").json()
            assert status["rounds"]["basis"] == {"2": "deadline", "3": "deadline"}
            budget = client.get("/v1/budget").json()
            assert budget["releases"] == 3
            assert budget["epsilon_spent"] == pytest.approx(config.privacy.release_epsilon, rel=1e-9)
    finally:
        harness.stop()

    releases = _own_releases(config.store_file)
    assert [r.round for r in releases] == [1, 2, 3]
    assert {r.epoch for r in releases} == {1}
    from p2psynth.release import release_id

    with Store.open(config.store_file) as store:
        ids = [release_id(s.data) for s in store.own_releases()]
    assert releases[1].basis == (ids[0],)
    assert set(releases[2].basis) == {ids[0], ids[1]}
    assert releases[2].grouping  # round 3 measures wide attributes in groups


@pytest.fixture(scope="module")
def three_node_files(tmp_path_factory, adult_data_path):
    root = tmp_path_factory.mktemp("rounds")
    return root, write_adult_parts(root, adult_data_path, parts=3, rows_per_part=ROWS_PER_NODE)


def test_late_member_adopts_the_plan_and_all_converge(three_node_files, adult_schema_path):
    root, paths = three_node_files
    # The early nodes wait this long for the late one. The late one then starts its epoch
    # within three waits of theirs, so their releases count as its network epoch.
    nodes = create_local_network(
        root / "nodes", data_paths=paths, schema_path=adult_schema_path, round_wait_s=10.0
    )
    with LocalNetwork(nodes, anti_entropy_s=(1.0, 2.0)) as net:
        net.start_all()
        net.wait_started(timeout_s=TIMEOUT_S)
        early, late = nodes[:2], nodes[2]
        for node in early:
            with Client.from_node_config(node.config_path) as client:
                assert client.publish()["round"] == 1

        def early_done() -> bool:
            states = [(n.status() or {}).get("rounds") or {} for n in early]
            return all(s.get("round") == 3 and s.get("state") == "done" for s in states)

        net.wait_until(early_done, timeout_s=TIMEOUT_S, what="the two early nodes to finish round 3")

        with Client.from_node_config(late.config_path) as client:
            client.publish()
        net.wait_until(lambda: net.converged(releases=9), timeout_s=TIMEOUT_S,
                       what="three nodes to hold 9 releases and one model")

        statuses = [n.status() for n in nodes]
        assert statuses[2]["rounds"]["basis"] == {"2": "adopted", "3": "adopted"}
        for status in statuses[:2]:
            assert set(status["rounds"]["basis"].values()) <= {"deadline", "adopted", "complete"}
        provenance = statuses[0]["model"]["provenance"]
        assert provenance["working_grouping"]
        assert len(provenance["selection_only"]) == 3
        assert provenance["left_out"] == {}
        assert len({s["model"]["model_id"] for s in statuses}) == 1

    third_rounds = [_own_releases(n.folder / "store.sqlite")[2] for n in nodes]
    assert len({r.basis for r in third_rounds}) == 1
    assert len({r.grouping for r in third_rounds}) == 1
    assert len({tuple(m.attributes for m in r.measurements) for r in third_rounds}) == 1


def test_node_killed_between_rounds_finishes_its_epoch(three_node_files, adult_schema_path):
    root, paths = three_node_files
    nodes = create_local_network(
        root / "crash", data_paths=paths[:2], schema_path=adult_schema_path, round_wait_s=600.0
    )
    first, second = nodes
    with LocalNetwork(nodes, anti_entropy_s=(1.0, 2.0)) as net:
        net.start_all()
        net.wait_started(timeout_s=TIMEOUT_S)
        with Client.from_node_config(first.config_path) as client:
            client.publish()
        net.wait_until(lambda: ((first.status() or {}).get("rounds") or {}).get("state") == "waiting",
                       timeout_s=TIMEOUT_S, what="the first node to wait in round 2")

        net.kill(first)
        net.start(first)
        net.wait_started([first], timeout_s=TIMEOUT_S)
        net.wait_until(lambda: ((first.status() or {}).get("rounds") or {}).get("state") == "waiting",
                       timeout_s=TIMEOUT_S, what="the restarted node to resume round 2")
        resumed = first.status()["rounds"]
        assert resumed["epoch"] == 1
        assert resumed["round"] == 2
        assert resumed["waiting_for"] == [second.name]

        with Client.from_node_config(second.config_path) as client:
            client.publish()
        net.wait_until(lambda: net.converged(releases=6), timeout_s=TIMEOUT_S,
                       what="both nodes to hold 6 releases and one model")
        with Client.from_node_config(first.config_path) as client:
            budget = client.budget()

    assert budget["releases"] == 3
    assert budget["epsilon_spent"] == pytest.approx(1.0, rel=1e-9)
    rounds = [r.round for r in _own_releases(first.folder / "store.sqlite")]
    assert rounds == [1, 2, 3]


def test_anti_entropy_fills_a_gap_in_an_epoch(three_node_files, adult_schema_path):
    """A node holding only round 3 of a member's epoch gets rounds 1 and 2 without a new publish."""
    root, paths = three_node_files
    nodes = create_local_network(root / "gap", data_paths=paths[:2], schema_path=adult_schema_path, round_wait_s=1.0)
    author, holder = nodes
    with LocalNetwork(nodes, anti_entropy_s=(1.0, 2.0)) as net:
        net.start(author)
        net.wait_started([author], timeout_s=TIMEOUT_S)
        with Client.from_node_config(author.config_path) as client:
            client.publish()
        net.wait_until(lambda: ((author.status() or {}).get("rounds") or {}).get("round") == 3
                       and author.status()["rounds"]["state"] == "done",
                       timeout_s=TIMEOUT_S, what="the author to publish three rounds alone")

        with Store.open(author.folder / "store.sqlite") as store:
            last = store.own_releases()[-1]
        with Store.open(holder.folder / "store.sqlite") as store:
            store.add_release(last.data, decode_release(last.data))

        net.start(holder)
        net.wait_until(lambda: ((holder.status() or {}).get("releases") or {}).get("stored") == 3,
                       timeout_s=TIMEOUT_S, what="the holder to fill rounds 1 and 2 in")
        net.wait_until(lambda: net.converged(releases=3), timeout_s=TIMEOUT_S, what="one model on both nodes")
