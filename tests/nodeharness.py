"""Real node daemons inside the test process, for the API and client tests.

``DaemonHarness`` runs one or more ``NodeDaemon`` objects in a single trio
event loop on a background thread, each with its libp2p host on 127.0.0.1
and its HTTP API on an ephemeral loopback port. The tests talk to them over
HTTP from the main thread, as a user would. One process imports libp2p once
for all daemons, which is far cheaper on a small machine than one node
process per daemon (each import takes several seconds).

Each node is alone in its network (its members file lists only itself), so
no daemon dials another.
"""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import httpx
import trio

from p2psynth.daemon import DaemonOptions, NodeDaemon
from p2psynth.nodeconfig import NodeConfig, load_node_config
from p2psynth.nodefolder import init_node

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def write_adult_parts(root: Path, adult_data_path: Path, *, parts: int, rows_per_part: int) -> list[Path]:
    """Write consecutive blocks of the raw adult.data rows as one CSV file per node; return the paths."""
    with gzip.open(adult_data_path, "rt", encoding="utf-8") as source:
        lines = [line for line in source if line.strip()]
    paths = []
    for index in range(parts):
        path = root / f"part-{index + 1}.csv"
        path.write_text("".join(lines[index * rows_per_part : (index + 1) * rows_per_part]), encoding="utf-8")
        paths.append(path)
    return paths


def write_small_adult(path: Path, adult_data_path: Path, *, rows: int) -> Path:
    """Write the first ``rows`` rows of the raw adult.data file as a CSV file of a user."""
    with gzip.open(adult_data_path, "rt", encoding="utf-8") as source:
        lines = [next(source) for _ in range(rows)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def make_node(
    folder: Path,
    *,
    data_path: Path,
    schema_path: Path,
    lifetime_epsilon: float = 4.0,
    release_epsilon: float = 1.0,
    strategy: str = "mst",
) -> NodeConfig:
    """Create a node folder whose API listens on an ephemeral port of 127.0.0.1.

    The default strategy is "mst" (one release per publish), which the API
    tests count on; tests of the measurement rounds pass "rounds".
    """
    return init_node(
        folder,
        name=folder.name,
        data_path=str(data_path),
        schema_path=str(schema_path),
        network_id=f"api-test-{folder.name}",
        lifetime_epsilon=lifetime_epsilon,
        release_epsilon=release_epsilon,
        api_port=0,
        strategy=strategy,
    )


class DaemonHarness:
    """Runs daemons for the given node.toml files on a trio thread until ``stop()``."""

    def __init__(self, config_paths: Sequence[Path]) -> None:
        self._config_paths = list(config_paths)
        self.daemons: list[NodeDaemon] = []
        # Set once every daemon serves its API, or the start failed.
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_requested: trio.Event | None = None
        self._thread = threading.Thread(target=self._run_thread, name="daemon-harness", daemon=True)

    def start(self) -> list[NodeDaemon]:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise AssertionError(f"the daemons did not start within {START_TIMEOUT_S:.0f} s")
        if self._error is not None:
            raise AssertionError(f"a daemon failed to start: {self._error!r}") from self._error
        return self.daemons

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop_requested.set, trio_token=self._token)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise AssertionError(f"the daemons did not stop within {STOP_TIMEOUT_S:.0f} s")
        if self._error is not None:
            raise AssertionError(f"a daemon failed: {self._error!r}") from self._error

    def call(self, function: Callable[[], object]) -> object:
        """Run a synchronous function inside the daemons' event loop."""
        return trio.from_thread.run_sync(function, trio_token=self._token)

    def _run_thread(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test thread by start() and stop()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop_requested = trio.Event()
        async with trio.open_nursery() as nursery:
            for path in self._config_paths:
                daemon = NodeDaemon(
                    load_node_config(path),
                    options=DaemonOptions(status_interval_s=0.2, shutdown_timeout_s=5.0, network_seed=1),
                )
                await nursery.start(daemon.run)
                self.daemons.append(daemon)
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop_requested.wait()
            for daemon in self.daemons:
                daemon.stop()


def api_client(daemon: NodeDaemon, *, token: str | None = None) -> httpx.Client:
    """Return an httpx client for the daemon's API, with its token unless ``token`` is given."""
    secret = token if token is not None else daemon.config.api.token_file.read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{daemon.api_port}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120.0,
        trust_env=False,
    )


def wait_for(condition: Callable[[], object], *, timeout_s: float, what: str, poll_s: float = 0.1) -> object:
    """Poll ``condition`` until it returns a true value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_for_model(client: httpx.Client, *, timeout_s: float = 60.0) -> dict:
    """Wait until the node reports a fitted model; return the /v1/model body."""

    def fitted() -> dict | None:
        body = client.get("/v1/model").json()
        return body if body.get("model_id") else None

    return wait_for(fitted, timeout_s=timeout_s, what="the node to fit its model")
