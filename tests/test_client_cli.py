"""The Python client and ``p2psynth sample/publish/status`` against real daemons.

Three single-node daemons run in this process for the whole module (see
``nodeharness``): ``ready`` publishes one release when the module starts,
``empty`` never publishes, and ``stopped`` is stopped right after it
started, so its status file records that it is not running. Errors of the daemon
must reach the user as one clear message: a ``ClientError`` with the HTTP
status for the Python client, and exit status 1 with ``error: …`` on stderr
for the CLI.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from nodeharness import DaemonHarness, api_client, make_node, wait_for, wait_for_model, write_small_adult
from p2psynth.cli import main
from p2psynth.client import Client, ClientError
from p2psynth.daemon import read_status
from p2psynth.errors import ConfigError
from p2psynth.localnet import free_loopback_ports
from p2psynth.nodefolder import init_node
from p2psynth.schema import load_schema


@pytest.fixture(scope="module")
def schema(adult_schema_path):
    return load_schema(adult_schema_path)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, adult_data_path, adult_schema_path):
    """Start ``ready``, ``empty`` and ``stopped``; publish on ``ready``; stop ``stopped``."""
    root = tmp_path_factory.mktemp("client")
    data = write_small_adult(root / "adult-small.csv", adult_data_path, rows=3000)
    configs = {
        name: make_node(root / name, data_path=data, schema_path=adult_schema_path, lifetime_epsilon=2.0)
        for name in ("ready", "empty", "stopped")
    }
    harness = DaemonHarness([config.path for config in configs.values()])
    ready_daemon, _, stopped_daemon = harness.start()
    try:
        harness.call(stopped_daemon.stop)
        wait_for(
            lambda: read_status(configs["stopped"].path).get("running") is False,
            timeout_s=30, what="the stopped daemon to record that it stopped",
        )
        with api_client(ready_daemon) as client:
            assert client.post("/v1/publish", json={}).status_code == 200
            wait_for_model(client)
        yield {name: config.path for name, config in configs.items()}
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def ready(nodes) -> Path:
    return nodes["ready"]


@pytest.fixture(scope="module")
def empty(nodes) -> Path:
    return nodes["empty"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``p2psynth ARGS`` in this process; return the exit status, stdout and stderr."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# Python client -----------------------------------------------------------------


def test_client_status_budget_model(ready):
    with Client.from_node_config(ready) as client:
        status = client.status()
        budget = client.budget()
        model = client.model()
    assert status["running"] is True
    assert status["node"] == "ready"
    assert budget["releases"] >= 1
    assert model["model_id"] == status["model"]["model_id"]
    assert model["model_id"] is not None


def test_client_sample_dataframe(ready, schema):
    with Client.from_node_config(ready) as client:
        frame = client.sample(rows=250, seed=1)
        again = client.sample(rows=250, seed=1)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(schema.names)
    assert len(frame) == 250
    assert isinstance(frame["income"].dtype, pd.CategoricalDtype)
    assert list(frame["income"].cat.categories) == ["<=50K", ">50K"]
    assert pd.api.types.is_integer_dtype(frame["age"])
    pd.testing.assert_frame_equal(frame, again)


def test_client_sample_with_condition(ready):
    with Client.from_node_config(ready) as client:
        frame = client.sample(rows=200, seed=2, where={"income": [">50K"], "sex": ["Male"]})
    assert len(frame) == 200
    assert set(frame["income"]) == {">50K"}
    assert set(frame["sex"]) == {"Male"}


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_client_sample_to_file(ready, schema, tmp_path, suffix):
    path = tmp_path / "out" / f"rows.{suffix}"
    with Client.from_node_config(ready) as client:
        written = client.sample_to_file(path, rows=300, seed=3)
    assert written == path
    if suffix == "csv":
        frame = pd.read_csv(path)
    elif suffix == "json":
        frame = pd.DataFrame(json.loads(path.read_text()))
    else:
        frame = pd.read_parquet(path)
    assert list(frame.columns) == list(schema.names)
    assert len(frame) == 300


def test_client_explicit_format_overrides_suffix(ready, tmp_path):
    path = tmp_path / "rows.data"
    with Client.from_node_config(ready) as client:
        client.sample_to_file(path, rows=10, seed=4, format="json")
    assert len(json.loads(path.read_text())) == 10


def test_client_no_model_yet(empty):
    with Client.from_node_config(empty) as client:
        with pytest.raises(ClientError) as raised:
            client.sample(rows=10)
    assert raised.value.status_code == 503
    assert "no model yet" in str(raised.value)


def test_client_unknown_column(ready):
    with Client.from_node_config(ready) as client:
        with pytest.raises(ClientError) as raised:
            client.sample(rows=10, where={"salary": ["high"]})
    assert raised.value.status_code == 400
    assert "unknown column 'salary'" in str(raised.value)


def test_client_unknown_value(ready, tmp_path):
    with Client.from_node_config(ready) as client:
        with pytest.raises(ClientError) as raised:
            client.sample_to_file(tmp_path / "rows.csv", rows=10, where={"income": ["rich"]})
    assert raised.value.status_code == 400
    assert "unknown value 'rich' for column 'income'" in str(raised.value)
    assert not (tmp_path / "rows.csv").exists()


def test_client_bad_rows_names_parameter(ready):
    with Client.from_node_config(ready) as client:
        with pytest.raises(ClientError) as raised:
            client.sample(rows=-5)
    assert raised.value.status_code == 422
    assert "rows:" in str(raised.value)


def test_client_wrong_token(nodes, ready):
    with Client.from_node_config(ready) as good:
        base_url = good.base_url
    with Client(base_url, "not-the-token-of-this-node") as client:
        with pytest.raises(ClientError) as raised:
            client.status()
    assert raised.value.status_code == 401
    assert "bearer token" in str(raised.value)


def test_client_daemon_unreachable(ready):
    (port,) = free_loopback_ports(1)
    with Client(f"http://127.0.0.1:{port}", "some-token-value-1234") as client:
        with pytest.raises(ClientError) as raised:
            client.status()
    assert raised.value.status_code is None
    assert "cannot reach the node API" in str(raised.value)
    assert "is the daemon running?" in str(raised.value)


def _serve_cut_response(listener: socket.socket) -> None:
    """Answer one request with the start of a chunked CSV body, then close the connection."""
    connection, _ = listener.accept()
    with connection:
        connection.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length:
            body += connection.recv(65536)
        connection.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n"
            b"e\r\nage,workclass\n\r\n"
        )


@pytest.fixture
def cut_response_url():
    """URL of a loopback server that cuts its one response short, as a daemon failing mid-stream does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    server = threading.Thread(target=_serve_cut_response, args=(listener,), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.join(timeout=30)
        listener.close()


def test_client_cut_stream_writes_nothing(cut_response_url, tmp_path):
    path = tmp_path / "rows.csv"
    with Client(cut_response_url, "some-token-value-1234") as client:
        with pytest.raises(ClientError) as raised:
            client.sample_to_file(path, rows=1000)
    message = str(raised.value)
    assert "failed after it was sent" in message
    assert f"nothing was written to {path}" in message
    assert "is the daemon running" not in message
    assert list(tmp_path.iterdir()) == []


def test_client_cut_response_message(cut_response_url):
    with Client(cut_response_url, "some-token-value-1234") as client:
        with pytest.raises(ClientError) as raised:
            client.sample(rows=1000)
    assert "failed after it was sent" in str(raised.value)
    assert "see the daemon's log" in str(raised.value)


def test_client_stopped_daemon(nodes):
    with pytest.raises(ClientError) as raised:
        Client.from_node_config(nodes["stopped"])
    assert "is not running" in str(raised.value)
    assert "p2psynth node run" in str(raised.value)


def test_client_never_started_node(tmp_path, adult_schema_path):
    config = init_node(tmp_path / "fresh", schema_path=str(adult_schema_path), api_port=0)
    with pytest.raises(ConfigError) as raised:
        Client.from_node_config(config.path)
    assert "has not run in this folder" in str(raised.value)


# CLI -----------------------------------------------------------------------------


def test_cli_status(capsys, ready):
    code, out, err = run_cli(capsys, "status", "--config", str(ready))
    assert code == 0, err
    assert "node ready (running" in out
    assert "model:       " in out
    assert "model:       none" not in out


def test_cli_status_json(capsys, ready):
    code, out, _ = run_cli(capsys, "status", "--config", str(ready), "--json")
    assert code == 0
    status = json.loads(out)
    assert status["running"] is True
    assert status["process_alive"] is True
    assert status["releases"]["stored"] >= 1


def test_cli_status_stopped(capsys, nodes):
    code, out, _ = run_cli(capsys, "status", "--config", str(nodes["stopped"]))
    assert code == 0
    assert "not running" in out


def test_cli_status_never_started(capsys, tmp_path, adult_schema_path):
    config = init_node(tmp_path / "fresh", schema_path=str(adult_schema_path), api_port=0)
    code, _, err = run_cli(capsys, "status", "--config", str(config.path))
    assert code == 1
    assert err.startswith("error: no status at")
    assert "p2psynth node run" in err


def test_cli_sample_with_conditions(capsys, ready, tmp_path):
    out_path = tmp_path / "rows.csv"
    code, out, err = run_cli(
        capsys, "sample", "--config", str(ready), "--rows", "150", "--seed", "5",
        "--where", "income=>50K", "--where", "race in {White, Black}", "--out", str(out_path),
    )
    assert code == 0, err
    assert f"150 synthetic rows written to {out_path} (csv" in out
    frame = pd.read_csv(out_path)
    assert len(frame) == 150
    assert set(frame["income"]) == {">50K"}
    assert set(frame["race"]) <= {"White", "Black"}


def test_cli_sample_parquet(capsys, ready, schema, tmp_path):
    out_path = tmp_path / "rows.parquet"
    code, out, err = run_cli(capsys, "sample", "--config", str(ready), "--rows", "40", "--out", str(out_path))
    assert code == 0, err
    frame = pd.read_parquet(out_path)
    assert list(frame.columns) == list(schema.names)
    assert len(frame) == 40


@pytest.mark.parametrize(("where", "message"), [
    ("salary=high", "unknown column 'salary'"),
    ("income=rich", "unknown value 'rich' for column 'income'"),
    ("income", "condition 'income' is invalid"),
    ("age=500", "outside the bounds"),
])
def test_cli_sample_bad_condition(capsys, ready, tmp_path, where, message):
    out_path = tmp_path / "rows.csv"
    code, _, err = run_cli(
        capsys, "sample", "--config", str(ready), "--rows", "10", "--where", where, "--out", str(out_path),
    )
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err
    assert not out_path.exists()


def test_cli_sample_no_model(capsys, empty, tmp_path):
    code, _, err = run_cli(capsys, "sample", "--config", str(empty), "--rows", "10", "--out", str(tmp_path / "r.csv"))
    assert code == 1
    assert "returned 503: no model yet" in err


def test_cli_sample_wrong_token(capsys, ready, tmp_path):
    # A copy of the node's config next to a different token: the daemon must reject it.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ready, copy / "node.toml")
    shutil.copy(ready.parent / "status.json", copy / "status.json")
    token = copy / "api.token"
    token.write_text("a-different-token-of-enough-length\n")
    token.chmod(0o600)
    code, _, err = run_cli(
        capsys, "sample", "--config", str(copy / "node.toml"), "--rows", "10", "--out", str(tmp_path / "r.csv"),
    )
    assert code == 1
    assert "returned 401" in err
    assert "bearer token" in err


def test_cli_sample_stopped_daemon(capsys, nodes, tmp_path):
    code, _, err = run_cli(
        capsys, "sample", "--config", str(nodes["stopped"]), "--rows", "10", "--out", str(tmp_path / "r.csv"),
    )
    assert code == 1
    assert "is not running" in err


def test_cli_publish_stopped_daemon(capsys, nodes):
    code, _, err = run_cli(capsys, "publish", "--config", str(nodes["stopped"]))
    assert code == 1
    assert "is not running" in err
    assert "p2psynth node run" in err


def test_cli_sample_crashed_daemon(capsys, nodes, tmp_path):
    # A daemon killed with SIGKILL leaves "running": true behind; its pid is gone.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    copy = tmp_path / "crashed"
    copy.mkdir()
    shutil.copy(nodes["ready"], copy / "node.toml")
    status = json.loads((nodes["ready"].parent / "status.json").read_text())
    status.update(running=True, pid=int(finished.stdout))
    (copy / "status.json").write_text(json.dumps(status))
    code, out, err = run_cli(capsys, "status", "--config", str(copy / "node.toml"))
    assert code == 0
    assert "not running" in out
    code, _, err = run_cli(
        capsys, "sample", "--config", str(copy / "node.toml"), "--rows", "10", "--out", str(tmp_path / "r.csv"),
    )
    assert code == 1
    assert "is not running" in err


def test_cli_sample_nothing_listening(capsys, tmp_path, adult_schema_path):
    (port,) = free_loopback_ports(1)
    config = init_node(tmp_path / "fixed", schema_path=str(adult_schema_path), api_port=port)
    code, _, err = run_cli(
        capsys, "sample", "--config", str(config.path), "--rows", "10", "--out", str(tmp_path / "r.csv"),
    )
    assert code == 1
    assert "cannot reach the node API" in err
    assert "is the daemon running?" in err


def test_cli_publish_over_budget(capsys, empty):
    code, _, err = run_cli(capsys, "publish", "--config", str(empty), "--epsilon", "5")
    assert code == 1
    assert "returned 409: privacy budget exhausted" in err
    assert "requests epsilon 5" in err


def test_cli_publish(capsys, ready):
    with Client.from_node_config(ready) as client:
        before = client.budget()["releases"]
    code, out, err = run_cli(capsys, "publish", "--config", str(ready), "--epsilon", "0.5")
    assert code == 0, err
    assert out.startswith("published release ")
    assert f"(sequence {before + 1}," in out
    with Client.from_node_config(ready) as client:
        assert client.budget()["releases"] == before + 1


# Example configuration -------------------------------------------------------------


def test_example_configs_load():
    from p2psynth.members import load_members
    from p2psynth.nodeconfig import load_node_config

    folder = Path(__file__).resolve().parent.parent / "node_config"
    config = load_node_config(folder / "example-node.toml")
    assert config.network.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert all("/p2p/12D3KooW" in address for address in config.network.bootstrap)
    assert config.api.host == "127.0.0.1"
    members = load_members(folder / "example-members.toml")
    assert len(members) == 3
    names = sorted(member.name for member in members.by_key.values())
    assert names == ["hospital-a", "hospital-b", "insurer-c"]
