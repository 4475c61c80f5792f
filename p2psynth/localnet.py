"""Networks of real node processes on one machine, for the demo, tests and simulations.

``create_local_network`` initializes N node folders whose members file lists
all of them, gives each a fixed loopback TCP port and makes every node
bootstrap from the others. ``LocalNetwork`` starts each node as a separate
``p2psynth node run`` process (logs in ``node.log`` of its folder), waits on
the status files, and stops every process it started, with SIGKILL after a
bounded wait, also when the caller is interrupted.

Every address is on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from p2psynth.errors import ConfigError, P2PSynthError
from p2psynth.identity import load_private_key, public_key_bytes
from p2psynth.nodeconfig import load_node_config
from p2psynth.nodefolder import init_node, render_members_file

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class LocalNetworkError(P2PSynthError):
    """A local network did not start or converge in time."""


@dataclass
class LocalNode:
    """One node folder of a local network and its process, if running."""

    name: str
    folder: Path
    public_key: bytes
    peer_id: str
    port: int
    process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.folder / "node.toml"

    @property
    def address(self) -> str:
        return f"/ip4/{LOOPBACK}/tcp/{self.port}/p2p/{self.peer_id}"

    def status(self) -> dict | None:
        path = self.folder / "status.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def free_loopback_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind((LOOPBACK, 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def create_local_network(
    root: Path,
    *,
    data_paths: Sequence[Path],
    schema_path: Path,
    network_id: str = "local-demo",
    names: Sequence[str] | None = None,
    lifetime_epsilon: float = 4.0,
    release_epsilon: float = 1.0,
    delta: float = 1e-9,
    extra_members: Sequence[tuple[str, bytes]] = (),
    strategy: str = "rounds",
    round_wait_s: float | None = None,
) -> list[LocalNode]:
    """Initialize one node folder per data file under ``root``, all members of one network.

    ``strategy`` and ``round_wait_s`` go to each node's [publish] section
    (``round_wait_s`` None keeps the default).
    """
    root = Path(root)
    count = len(data_paths)
    names = list(names) if names else [f"node-{i + 1}" for i in range(count)]
    ports = free_loopback_ports(count)

    nodes = []
    for name, data_path, port in zip(names, data_paths, ports):
        config = init_node(
            root / name,
            name=name,
            data_path=str(Path(data_path).resolve()),
            schema_path=str(Path(schema_path).resolve()),
            network_id=network_id,
            lifetime_epsilon=lifetime_epsilon,
            release_epsilon=release_epsilon,
            delta=delta,
            api_port=0,
            strategy=strategy,
        )
        if round_wait_s is not None:
            _set_round_wait(config.path, round_wait_s)
        public = public_key_bytes(load_private_key(config.key_file))
        nodes.append(LocalNode(name, config.folder, public, _peer_id(public), port))

    members = render_members_file([(n.name, n.public_key) for n in nodes] + list(extra_members))
    for node in nodes:
        (node.folder / "members.toml").write_text(members, encoding="utf-8")
        bootstrap = [other.address for other in nodes if other is not node]
        _set_network_addresses(node, listen=f"/ip4/{LOOPBACK}/tcp/{node.port}", bootstrap=bootstrap)
    return nodes


def _peer_id(public_key: bytes) -> str:
    from p2psynth.network import peer_id_from_public_key

    return str(peer_id_from_public_key(public_key))


def _set_round_wait(config_path: Path, seconds: float) -> None:
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace("round_wait_s = 300 ", f"round_wait_s = {float(seconds)!r} "), encoding="utf-8")
    if load_node_config(config_path).publish.round_wait_s != float(seconds):
        raise ConfigError(f"{config_path}: could not set publish.round_wait_s; the file's layout changed")


def _set_network_addresses(node: LocalNode, *, listen: str, bootstrap: Sequence[str]) -> None:
    text = node.config_path.read_text(encoding="utf-8")
    text = text.replace('listen = ["/ip4/127.0.0.1/tcp/0"]', f'listen = ["{listen}"]')
    text = text.replace("bootstrap = []", "bootstrap = [" + ", ".join(f'"{b}"' for b in bootstrap) + "]")
    node.config_path.write_text(text, encoding="utf-8")
    load_node_config(node.config_path)  # the edited file must still be valid


@dataclass
class LocalNetwork:
    """Starts and stops the node processes of a local network."""

    nodes: list[LocalNode]
    anti_entropy_s: tuple[float, float] = (1.0, 2.0)
    # Quiet seconds before a refit: with every member's release, and while some are missing.
    model_debounce_s: tuple[float, float] = (0.5, 3.0)
    log_level: str = "INFO"
    # Processes started and not yet reaped, for the guaranteed clean-up.
    _started: list[subprocess.Popen] = field(default_factory=list)

    def start(self, node: LocalNode) -> None:
        if node.process is not None and node.process.poll() is None:
            raise LocalNetworkError(f"{node.name} is running already")
        status_file = node.folder / "status.json"
        status_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "p2psynth", "--log-level", self.log_level,
            "node", "run", "--config", str(node.config_path),
            "--anti-entropy-s", str(self.anti_entropy_s[0]), str(self.anti_entropy_s[1]),
            "--model-debounce-s", str(self.model_debounce_s[0]), str(self.model_debounce_s[1]),
        ]
        log_file = open(node.folder / "node.log", "ab")
        node.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log_file.close()
        self._started.append(node.process)

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def wait_until(self, condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.2) -> float:
        """Wait until ``condition()`` holds; return the seconds waited or raise LocalNetworkError."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if condition():
                return time.monotonic() - started
            started_nodes = [n for n in self.nodes if n.process is not None]
            if started_nodes and all(n.process.poll() is not None for n in started_nodes):
                raise LocalNetworkError(f"every node has exited while waiting for {what}; see their node.log files")
            for node in self.nodes:
                if node.process is not None and node.process.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    raise LocalNetworkError(
                        f"{node.name} exited with status {node.process.returncode} while waiting for {what}; "
                        f"see {node.folder / 'node.log'}"
                    )
            time.sleep(poll_s)
        raise LocalNetworkError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def running(self) -> list[LocalNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_started(self, nodes: Sequence[LocalNode] | None = None, *, timeout_s: float = 60.0) -> float:
        nodes = list(nodes or self.nodes)

        def started() -> bool:
            for node in nodes:
                status = node.status()
                if not status or not status.get("running") or not (status.get("api") or {}).get("port"):
                    return False
            return True

        return self.wait_until(started, timeout_s=timeout_s, what="the nodes to start")

    def kill(self, node: LocalNode) -> None:
        """SIGKILL a node, as a crash would."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=30)

    def stop(self, node: LocalNode, *, timeout_s: float = 15.0) -> int | None:
        """SIGTERM a node and wait; SIGKILL it if it does not exit in ``timeout_s``."""
        process = node.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s after SIGTERM; killing it", node.name, timeout_s)
            process.kill()
            return process.wait(timeout=30)

    def stop_all(self, *, timeout_s: float = 15.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self._started:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        self._started = [p for p in self._started if p.poll() is None]

    def __enter__(self) -> "LocalNetwork":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    # Observations ------------------------------------------------------------

    def model_ids(self, nodes: Sequence[LocalNode] | None = None) -> list[str | None]:
        return [((n.status() or {}).get("model") or {}).get("model_id") for n in (nodes or self.running())]

    def converged(self, nodes: Sequence[LocalNode] | None = None, *, releases: int | None = None) -> bool:
        """True when the nodes share one model id fitted from all their current releases.

        With ``releases``, every node must also hold exactly that many releases.
        """
        nodes = list(nodes or self.running())
        statuses = [n.status() or {} for n in nodes]
        ids = {((s.get("model") or {}).get("model_id")) for s in statuses}
        if len(ids) != 1 or None in ids:
            return False
        for status in statuses:
            fitted = len((status.get("model") or {}).get("releases") or [])
            if fitted != (status.get("releases") or {}).get("current"):
                return False
        if releases is not None:
            return all((s.get("releases") or {}).get("stored") == releases for s in statuses)
        return True
