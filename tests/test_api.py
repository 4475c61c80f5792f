"""Contract of the local HTTP API, against real daemons on 127.0.0.1.

Two single-node daemons run in this process for the whole module (see
``nodeharness``): ``ready`` publishes one release through the API when the
module starts and fits its model from it; ``empty`` never publishes, so it
has no model. ``ready``'s lifetime budget (epsilon 1.2) admits exactly one
release of epsilon 1, so its second publish must fail with 409.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nodeharness import DaemonHarness, api_client, make_node, wait_for_model, write_small_adult
from p2psynth.schema import load_schema

RELEASE_EPSILON = 1.0
READY_LIFETIME_EPSILON = 1.2  # one release of epsilon 1 fits; a second does not
SAMPLE_ENDPOINTS = [
    ("GET", "/v1/status", None),
    ("GET", "/v1/budget", None),
    ("GET", "/v1/model", None),
    ("POST", "/v1/publish", {}),
    ("GET", "/v1/sample?rows=5", None),
    ("POST", "/v1/sample", {"rows": 5}),
]


@pytest.fixture(scope="module")
def schema(adult_schema_path):
    return load_schema(adult_schema_path)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, adult_data_path, adult_schema_path):
    """Start ``ready`` and ``empty``; publish on ``ready`` through the API; yield both."""
    root = tmp_path_factory.mktemp("api")
    data = write_small_adult(root / "adult-small.csv", adult_data_path, rows=3000)
    ready = make_node(
        root / "ready", data_path=data, schema_path=adult_schema_path,
        lifetime_epsilon=READY_LIFETIME_EPSILON, release_epsilon=RELEASE_EPSILON,
    )
    empty = make_node(root / "empty", data_path=data, schema_path=adult_schema_path, lifetime_epsilon=1.0)
    harness = DaemonHarness([ready.path, empty.path])
    ready_daemon, empty_daemon = harness.start()
    ready_client = api_client(ready_daemon)
    empty_client = api_client(empty_daemon)
    try:
        published = ready_client.post("/v1/publish", json={})
        assert published.status_code == 200, published.text
        model = wait_for_model(ready_client)
        yield {
            "ready": ready_client,
            "empty": empty_client,
            "ready_daemon": ready_daemon,
            "published": published.json(),
            "model": model,
        }
    finally:
        ready_client.close()
        empty_client.close()
        harness.stop()


@pytest.fixture(scope="module")
def ready(nodes):
    return nodes["ready"]


@pytest.fixture(scope="module")
def empty(nodes):
    return nodes["empty"]


def error_text(response) -> str:
    """Flatten an error body to text, with FastAPI's validation locations joined by dots."""
    detail = response.json()["detail"]
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in detail)
    return detail


def read_csv(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content), keep_default_na=False, na_values=[""])


# OpenAPI and authorization -------------------------------------------------------


def test_openapi_lists_endpoints(ready):
    response = ready.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/v1/sample"]) == {"get", "post"}
    assert "post" in paths["/v1/publish"]
    for path in ("/v1/status", "/v1/budget", "/v1/model"):
        assert "get" in paths[path]
    parameters = {p["name"] for p in paths["/v1/sample"]["get"]["parameters"]}
    assert parameters == {"rows", "seed", "format", "where"}


@pytest.mark.parametrize(("method", "url", "body"), SAMPLE_ENDPOINTS, ids=lambda v: str(v))
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-enough-length", "Basic dXNlcjpwYXNz", "wrong-token-of-enough-length"],
    ids=["missing", "wrong-token", "basic-scheme", "no-scheme"],
)
def test_unauthorized_gets_401(nodes, method, url, body, authorization):
    daemon = nodes["ready_daemon"]
    token = daemon.config.api.token_file.read_text().strip()
    headers = {} if authorization is None else {"Authorization": authorization}
    with api_client(daemon, token=token) as client:
        client.headers.pop("Authorization")
        response = client.request(method, url, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]
    assert token not in response.text


def test_every_listed_endpoint_needs_token(nodes, ready):
    # Endpoints added later are covered too: the list comes from the served schema.
    paths = ready.get("/openapi.json").json()["paths"]
    operations = [(method.upper(), path) for path, methods in paths.items() for method in methods]
    assert len(operations) >= 6
    with api_client(nodes["ready_daemon"], token="x" * 43) as intruder:
        for method, path in operations:
            response = intruder.request(method, path, json={} if method in ("POST", "PUT") else None)
            assert response.status_code == 401, (method, path)


def test_unauthorized_publish_spends_nothing(nodes, ready):
    before = ready.get("/v1/budget").json()
    with api_client(nodes["ready_daemon"], token="x" * 43) as intruder:
        assert intruder.post("/v1/publish", json={"epsilon": 0.01}).status_code == 401
    assert ready.get("/v1/budget").json() == before


# Status, budget, model, publish -------------------------------------------------


def test_publish_returns_release(nodes):
    published = nodes["published"]
    assert len(published["release_id"]) == 64
    int(published["release_id"], 16)
    assert published["sequence"] == 1
    assert published["rho"] > 0
    assert published["size_bytes"] > 1000


def test_budget_reflects_publish(nodes, ready):
    budget = ready.get("/v1/budget").json()
    rho = nodes["published"]["rho"]
    assert budget["releases"] == 1
    assert budget["rho_spent"] == pytest.approx(rho)
    assert budget["epsilon_spent"] == pytest.approx(RELEASE_EPSILON, rel=1e-6)
    assert budget["lifetime_epsilon"] == READY_LIFETIME_EPSILON
    assert budget["rho_remaining"] > 0
    assert budget["error"] is None


def test_status_reports_node(nodes, ready):
    status = ready.get("/v1/status").json()
    assert status["running"] is True
    assert status["releases"]["stored"] == 1
    assert status["releases"]["latest_sequence_by_member"] == {"ready": 1}
    assert status["model"]["model_id"] == nodes["model"]["model_id"]
    assert status["api"]["port"] == nodes["ready_daemon"].api_port
    assert status["budget"]["releases"] == 1
    assert status["rejections"]["by_reason"] == {}


def test_model_lists_provenance(nodes, ready):
    model = ready.get("/v1/model").json()
    assert model["releases"] == [nodes["published"]["release_id"]]
    members = model["provenance"]["members"]
    own_key = nodes["ready_daemon"].public_key.hex()
    assert list(members) == [own_key]
    assert members[own_key]["releases"] == 1
    assert members[own_key]["epsilon_at_delta_1e-09"] == pytest.approx(RELEASE_EPSILON, rel=1e-6)
    assert 2000 < model["estimated_rows"] < 4000


def test_budget_exhausted_gets_409(ready):
    before = ready.get("/v1/budget").json()
    response = ready.post("/v1/publish", json={})
    assert response.status_code == 409
    body = response.json()
    assert "spent epsilon 1" in body["detail"]
    assert "remaining epsilon" in body["detail"]
    assert "requests epsilon 1" in body["detail"]
    assert body["requested_epsilon"] == RELEASE_EPSILON
    assert body["budget"]["releases"] == 1
    assert body["budget"]["rho_remaining"] < body["budget"]["rho_spent"]
    assert ready.get("/v1/budget").json() == before


def test_publish_above_lifetime_gets_409(empty):
    response = empty.post("/v1/publish", json={"epsilon": 2.0})
    assert response.status_code == 409
    assert "requests epsilon 2" in response.json()["detail"]
    budget = empty.get("/v1/budget").json()
    assert budget["releases"] == 0
    assert budget["rho_spent"] == 0


@pytest.mark.parametrize("body", [{"epsilon": -1}, {"epsilon": 0}, {"epsilon": "abc"}])
def test_publish_rejects_bad_epsilon(empty, body):
    response = empty.post("/v1/publish", json=body)
    assert response.status_code == 422
    assert "epsilon" in error_text(response)
    assert empty.get("/v1/budget").json()["releases"] == 0


# No model yet ------------------------------------------------------------------


def test_model_without_releases(empty):
    model = empty.get("/v1/model").json()
    assert model["model_id"] is None
    assert model["error"] == "no model fitted yet"


@pytest.mark.parametrize(("method", "url", "body"), [
    ("GET", "/v1/sample?rows=10", None),
    ("POST", "/v1/sample", {"rows": 10}),
])
def test_sample_without_model_gets_503(empty, method, url, body):
    response = empty.request(method, url, json=body)
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("no model yet")
    assert "try again" in detail


# Bad parameters ----------------------------------------------------------------


@pytest.mark.parametrize(("query", "status", "named"), [
    ("rows=-1", 422, "rows"),
    ("rows=abc", 422, "rows"),
    ("rows=1.5", 422, "rows"),
    ("rows=100000001", 422, "rows"),
    ("", 422, "rows"),
    ("rows=5&seed=-3", 422, "seed"),
    ("rows=5&format=xml", 422, "format"),
    ("rows=5&where=unknown=1", 400, "unknown column 'unknown'"),
    ("rows=5&where=income=bogus", 400, "unknown value 'bogus' for column 'income'"),
    ("rows=5&where=income", 400, "condition 'income' is invalid"),
    ("rows=5&where=age=200", 400, "outside the bounds"),
    ("rows=5&where=age=old", 400, "numeric column 'age'"),
])
def test_sample_rejects_bad_query(ready, query, status, named):
    response = ready.get(f"/v1/sample?{query}")
    assert response.status_code == status
    assert named in error_text(response)


@pytest.mark.parametrize(("body", "status", "named"), [
    ({"rows": -1}, 422, "rows"),
    ({"rows": "many"}, 422, "rows"),
    ({}, 422, "rows"),
    ({"rows": 5, "format": "xml"}, 422, "format"),
    ({"rows": 5, "where": {"income": ">50K"}}, 422, "where.income"),
    ({"rows": 5, "where": {"nope": ["1"]}}, 400, "unknown column 'nope'"),
    ({"rows": 5, "where": {"income": []}}, 400, "lists no values"),
    ({"rows": 5, "where": {"sex": ["Other"]}}, 400, "unknown value 'Other'"),
])
def test_sample_rejects_bad_body(ready, body, status, named):
    response = ready.post("/v1/sample", json=body)
    assert response.status_code == status
    assert named in error_text(response)


def test_sample_rejects_invalid_json(ready):
    response = ready.post("/v1/sample", content=b"{rows: 5", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in error_text(response)


# Formats and conditions --------------------------------------------------------


def test_csv_json_parquet_agree(ready, schema):
    frames = {}
    for fmt in ("csv", "json", "parquet"):
        response = ready.get(f"/v1/sample?rows=500&seed=3&format={fmt}")
        assert response.status_code == 200
        assert f'filename="synthetic.{fmt}"' in response.headers["content-disposition"]
        assert response.headers["x-p2psynth-seed"] == "3"
        if fmt == "csv":
            assert response.headers["content-type"].startswith("text/csv")
            frames[fmt] = read_csv(response.content)
        elif fmt == "json":
            assert response.headers["content-type"] == "application/json"
            frames[fmt] = pd.DataFrame(json.loads(response.content))
        else:
            frames[fmt] = pq.read_table(io.BytesIO(response.content)).to_pandas()
    for fmt, frame in frames.items():
        assert list(frame.columns) == list(schema.names), fmt
        assert len(frame) == 500, fmt
    # One seed, one set of rows, whatever the encoding.
    incomes = {fmt: frame["income"].astype("object").fillna("<NA>").tolist() for fmt, frame in frames.items()}
    assert incomes["csv"] == incomes["json"] == incomes["parquet"]
    ages = {fmt: frame["age"].astype("float64").to_numpy() for fmt, frame in frames.items()}
    assert np.array_equal(ages["csv"], ages["json"], equal_nan=True)
    assert np.array_equal(ages["csv"], ages["parquet"], equal_nan=True)


def test_sample_values_inside_schema(ready, schema):
    frame = read_csv(ready.get("/v1/sample?rows=2000&seed=4").content)
    for column in schema.columns:
        values = frame[column.name].dropna()
        if hasattr(column, "categories"):
            assert set(values) <= set(column.categories), column.name
        else:
            low, high = column.bounds
            assert values.between(low, high).all(), column.name


def test_same_seed_same_rows(ready):
    first = ready.get("/v1/sample?rows=300&seed=11")
    second = ready.post("/v1/sample", json={"rows": 300, "seed": 11})
    third = ready.get("/v1/sample?rows=300&seed=12")
    assert first.content == second.content
    assert first.content != third.content


def test_model_id_header(nodes, ready):
    response = ready.get("/v1/sample?rows=1")
    assert response.headers["x-p2psynth-model-id"] == nodes["model"]["model_id"]
    assert int(response.headers["x-p2psynth-seed"]) >= 0


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_zero_rows(ready, schema, fmt):
    response = ready.get(f"/v1/sample?rows=0&format={fmt}")
    assert response.status_code == 200
    if fmt == "csv":
        assert response.text.strip() == ",".join(schema.names)
    elif fmt == "json":
        assert json.loads(response.content) == []
    else:
        table = pq.read_table(io.BytesIO(response.content))
        assert table.num_rows == 0
        assert table.column_names == list(schema.names)


def test_conditions_in_query(ready):
    response = ready.get("/v1/sample", params=[
        ("rows", 400), ("seed", 5), ("where", "income=>50K"), ("where", "sex=Female"),
    ])
    assert response.status_code == 200
    frame = read_csv(response.content)
    assert len(frame) == 400
    assert set(frame["income"]) == {">50K"}
    assert set(frame["sex"]) == {"Female"}


def test_condition_set_and_alias(ready):
    response = ready.get("/v1/sample", params=[
        ("rows", 400), ("seed", 6), ("where", "race in {Black, Asian-Pac-Islander}"), ("where", "income=<=50K."),
    ])
    assert response.status_code == 200
    frame = read_csv(response.content)
    assert set(frame["race"]) <= {"Black", "Asian-Pac-Islander"}
    assert frame["race"].nunique() == 2
    assert set(frame["income"]) == {"<=50K"}


def test_numeric_condition_selects_bin(ready):
    frame = read_csv(ready.get("/v1/sample", params={"rows": 300, "seed": 7, "where": "age=37"}).content)
    assert frame["age"].between(35, 39).all()


def test_missing_value_condition(ready):
    frame = read_csv(ready.get("/v1/sample", params={"rows": 200, "seed": 8, "where": "workclass=?"}).content)
    assert len(frame) == 200
    assert frame["workclass"].isna().all()


def test_conditions_in_body(ready):
    response = ready.post("/v1/sample", json={
        "rows": 300, "seed": 9, "format": "json",
        "where": {"education": ["Bachelors", "Masters"], "income": [">50K"]},
    })
    assert response.status_code == 200
    frame = pd.DataFrame(response.json())
    assert len(frame) == 300
    assert set(frame["education"]) <= {"Bachelors", "Masters"}
    assert set(frame["income"]) == {">50K"}


# Large samples -----------------------------------------------------------------


def test_large_sample_streams(ready, schema):
    rows = 300_000
    chunks = 0
    received = bytearray()
    with ready.stream("GET", f"/v1/sample?rows={rows}&seed=21") as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        for chunk in response.iter_raw():
            chunks += 1
            received += chunk
    assert chunks > 1
    lines = bytes(received).rstrip(b"\n").split(b"\n")
    assert lines[0].decode() == ",".join(schema.names)
    assert len(lines) == rows + 1
    # Rows from every sampling chunk, not repeats of the first one.
    frame = read_csv(bytes(received))
    assert len(frame) == rows
    assert not frame.iloc[:100_000].reset_index(drop=True).equals(frame.iloc[100_000:200_000].reset_index(drop=True))


# Blocking peers ----------------------------------------------------------------


def _require_blocking(ready) -> None:
    if "/v1/peers/blocked" not in ready.get("/openapi.json").json()["paths"]:
        pytest.skip("this build has no /v1/peers/blocked endpoint")


def test_blocked_peers_rejects_bad_key(ready):
    _require_blocking(ready)
    response = ready.put("/v1/peers/blocked", json={"public_keys": ["abc"]})
    assert response.status_code == 422
    assert "public_keys" in error_text(response)
    assert "'abc'" in error_text(response)


def test_blocked_peers_set_and_lift(ready):
    _require_blocking(ready)
    key = "ab" * 32
    blocked = ready.put("/v1/peers/blocked", json={"public_keys": [key]})
    assert blocked.status_code == 200
    assert blocked.json()["blocked"] == [key]
    lifted = ready.put("/v1/peers/blocked", json={"public_keys": []})
    assert lifted.status_code == 200
    assert lifted.json()["blocked"] == []


def test_api_port_in_use_one_line_error(tmp_path, adult_data_path, adult_schema_path):
    import socket
    import subprocess
    import sys

    config = make_node(tmp_path / "busy", data_path=adult_data_path, schema_path=adult_schema_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config.path.read_text(encoding="utf-8").replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        config.path.write_text(text, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "p2psynth", "node", "run", "--config", str(config.path)],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1
    assert f"api.listen 127.0.0.1:{port} cannot be used" in result.stderr
    assert "--api-port" in result.stderr
    assert "Traceback" not in result.stderr
