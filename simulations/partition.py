"""Partitions between node processes: one network namespace per node, joined by a relay.

On the host's loopback every process can reach every port, so a partition
needs a place where connections can be cut. Each node here runs in its own
network namespace (``ip netns``) that has nothing but a loopback interface.
The only way between two namespaces is the simulator's relay. For every dial
``a -> b`` of the topology, the relay listens inside a's namespace on
127.0.0.1 at b's listen port and forwards each connection to b's namespace,
and the same the other way round. So b's address, whether a has it from its
bootstrap list or from identify, reaches b only through the relay. libp2p
authenticates the peer id in the Noise handshake, so the relay is invisible
to the nodes. Relay ports of their own, named in the bootstrap lists, would
not do: after a disconnect, py-libp2p 0.8.1 redials only the address the peer
reported through identify, so a cut link would never come back.

A partition makes the relay reset the open connections between the groups
and reset new ones as soon as they arrive; healing lets connections through
again. The nodes notice the reset as a disconnect and redial their bootstrap
peers on their own schedule (every 30 s after the first dial round, the
network layer's ``redial_interval_s``), so the time to converge after a heal
includes that wait.

Rejected alternatives: iptables is not installed; veth pairs and a bridge
would give each node a routed address outside 127.0.0.0/8, more set-up to
clean up, and traffic on private addresses; a daemon-side switch would need
a control endpoint in every production node. The API of each node is reached
from the simulator's namespace through a relay link that is never cut.

Requires root and the ``ip`` command (iproute2). Every namespace is deleted
when the run ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Sequence

from p2psynth.api import read_token
from p2psynth.client import Client
from p2psynth.localnet import LocalNetwork, LocalNode
from p2psynth.nodeconfig import load_node_config
from simulations.scenario import ScenarioError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CLONE_NEWNET = 0x40000000
CHUNK_BYTES = 64 * 1024
COMMAND_TIMEOUT_S = 30.0

_libc = ctypes.CDLL(None, use_errno=True)


def namespaces_available() -> str | None:
    """Return why namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces exist on Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    completed = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if completed.returncode != 0:
        raise ScenarioError(f"'ip {' '.join(args)}' failed: {completed.stderr.strip()}")


def _socket_in(namespace: str | None) -> socket.socket:
    """Create a TCP socket inside ``namespace`` (None: the caller's own); only this thread switches."""
    if namespace is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                # The thread would stay in the node's namespace: nothing after this is safe.
                os.abort()
    finally:
        os.close(own)
        os.close(target)


@dataclass
class _Link:
    """One relay listener and the connections it carries."""

    listen_namespace: str | None
    target_namespace: str
    target_port: int
    # The node pair a partition may cut; None for links that are never cut (API access).
    pair: frozenset | None
    server: asyncio.base_events.Server | None = None
    port: int = 0
    active: set = field(default_factory=set)


class Relay:
    """TCP relay between namespaces, run by an asyncio loop in one daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulation-relay", daemon=True)
        self._thread.start()
        self._links: list[_Link] = []
        # Node pairs whose connections are cut.
        self._blocked: set[frozenset] = set()
        self.bytes_forwarded = 0

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=COMMAND_TIMEOUT_S)

    def forward(self, *, listen_namespace: str | None, target_namespace: str, target_port: int,
                pair: frozenset | None, listen_port: int = 0, avoid_ports: frozenset[int] = frozenset()) -> int:
        """Listen on 127.0.0.1:``listen_port`` in ``listen_namespace`` and forward to the target; return the port.

        With ``listen_port`` 0 the kernel chooses a port outside ``avoid_ports``.
        """
        link = _Link(listen_namespace, target_namespace, target_port, pair)
        return self._call(self._open(link, listen_port, avoid_ports))

    async def _open(self, link: _Link, listen_port: int, avoid_ports: frozenset[int]) -> int:
        for _ in range(20):
            listener = _socket_in(link.listen_namespace)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((LOOPBACK, listen_port))
            except OSError as exc:
                listener.close()
                raise ScenarioError(
                    f"the relay cannot listen on 127.0.0.1:{listen_port} in namespace {link.listen_namespace}: {exc}"
                ) from exc
            if listen_port or listener.getsockname()[1] not in avoid_ports:
                break
            listener.close()
        else:
            raise ScenarioError("the relay found no free port outside the nodes' ports after 20 tries")
        listener.listen(64)
        listener.setblocking(False)
        link.server = await asyncio.start_server(lambda r, w: self._carry(link, r, w), sock=listener)
        link.port = listener.getsockname()[1]
        self._links.append(link)
        return link.port

    async def _carry(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if link.pair in self._blocked:
            writer.transport.abort()
            return
        upstream = _socket_in(link.target_namespace)
        upstream.setblocking(False)
        try:
            await self._loop.sock_connect(upstream, (LOOPBACK, link.target_port))
        except OSError:
            upstream.close()
            writer.transport.abort()
            return
        target_reader, target_writer = await asyncio.open_connection(sock=upstream)
        connection = (writer, target_writer)
        link.active.add(connection)
        try:
            await asyncio.gather(self._pipe(reader, target_writer), self._pipe(target_reader, writer))
        finally:
            link.active.discard(connection)
            for side in connection:
                side.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                self.bytes_forwarded += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    def block(self, pairs: set[frozenset]) -> int:
        """Cut open connections between the given node pairs and refuse new ones; return how many were cut."""
        return self._call(self._block(set(pairs)))

    async def _block(self, pairs: set[frozenset]) -> int:
        self._blocked = pairs
        cut = 0
        for link in self._links:
            if link.pair in pairs:
                for connection in list(link.active):
                    for side in connection:
                        side.transport.abort()
                    cut += 1
        return cut

    def close(self) -> None:
        async def shutdown() -> None:
            for link in self._links:
                if link.server is not None:
                    link.server.close()
                for connection in list(link.active):
                    for side in connection:
                        side.transport.abort()

        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=COMMAND_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()


class _NamespacedNetwork(LocalNetwork):
    """``LocalNetwork`` whose processes start inside a node's namespace (``namespace_of``, set by the launcher)."""

    def start(self, node: LocalNode) -> None:
        if node.process is not None and node.process.poll() is None:
            raise ScenarioError(f"{node.name} is running already")
        (node.folder / "status.json").unlink(missing_ok=True)
        command = [
            "ip", "netns", "exec", self.namespace_of[node.name],
            sys.executable, "-m", "p2psynth", "--log-level", self.log_level,
            "node", "run", "--config", str(node.config_path),
            "--anti-entropy-s", str(self.anti_entropy_s[0]), str(self.anti_entropy_s[1]),
            "--model-debounce-s", str(self.model_debounce_s[0]), str(self.model_debounce_s[1]),
        ]
        with open(node.folder / "node.log", "ab") as log_file:
            # 'ip netns exec' replaces itself with the command, so the pid is the node's.
            node.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._started.append(node.process)


class NamespaceLauncher:
    """Node processes each in a network namespace, reachable only through a cuttable relay."""

    supports_partition = True

    def __init__(self, nodes: Sequence[LocalNode], *, anti_entropy_s: tuple[float, float], tag: str) -> None:
        problem = namespaces_available()
        if problem:
            raise ScenarioError(f"partition events need network namespaces, but {problem}")
        self._prefix = f"p2ps{os.getpid() % 100000}{abs(hash(tag)) % 1000:03d}"
        self.network = _NamespacedNetwork(list(nodes), anti_entropy_s=anti_entropy_s, log_level="INFO")
        self.network.namespace_of = {}
        self._namespaces: list[str] = []
        self._node_ports: set[int] = set()
        self._api_ports: dict[str, tuple[int, int]] = {}
        # (namespace, port) pairs where the relay already listens for a peer.
        self._peer_links: set[tuple[str, int]] = set()
        self.relay = Relay()
        try:
            for node in nodes:
                self._create_namespace(node)
        except BaseException:
            self.close()
            raise

    def _create_namespace(self, node: LocalNode) -> None:
        name = f"{self._prefix}-{len(self._namespaces) + 1}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        self.network.namespace_of[node.name] = name
        self._node_ports.add(node.port)

    def address_of(self, source: LocalNode, target: LocalNode) -> str:
        """Link the two namespaces both ways and return ``target``'s own address.

        Inside source's namespace the relay listens on target's listen port
        (and the other way round), so the bootstrap address and the address
        the peer reports through identify both lead through the relay. A node
        redialing after a heal uses whichever its peerstore holds.
        """
        pair = frozenset((source.name, target.name))
        for here, there in ((source, target), (target, source)):
            key = (self.network.namespace_of[here.name], there.port)
            if key in self._peer_links:
                continue
            self.relay.forward(
                listen_namespace=key[0], listen_port=there.port,
                target_namespace=self.network.namespace_of[there.name], target_port=there.port, pair=pair,
            )
            self._peer_links.add(key)
        return target.address

    def add_node(self, node: LocalNode, *, dials: Sequence[LocalNode] = ()) -> None:
        self.network.nodes.append(node)
        self._create_namespace(node)

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
        """Return an API client that reaches the node's API through a relay link from this namespace."""
        api_port = ((node.status() or {}).get("api") or {}).get("port")
        if not api_port:
            raise ScenarioError(f"{node.name} has not reported its API port; is it running?")
        known = self._api_ports.get(node.name)
        if known is None or known[0] != api_port:
            relay_port = self.relay.forward(
                listen_namespace=None, target_namespace=self.network.namespace_of[node.name],
                target_port=api_port, pair=None, avoid_ports=frozenset(self._node_ports),
            )
            known = self._api_ports[node.name] = (api_port, relay_port)
        config = load_node_config(node.config_path)
        return Client(f"http://{LOOPBACK}:{known[1]}", read_token(config.api.token_file), timeout_s=300.0)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        pairs = {frozenset((a, b)) for i, group in enumerate(groups) for other in groups[i + 1:]
                 for a in group for b in other}
        cut = self.relay.block(pairs)
        log.info("partition into %d groups: %d open connections cut", len(groups), cut)

    def heal(self) -> None:
        self.relay.block(set())

    def close(self) -> None:
        try:
            self.network.stop_all()
        finally:
            try:
                self.relay.close()
            finally:
                for name in self._namespaces:
                    try:
                        _ip("netns", "delete", name)
                    except (ScenarioError, subprocess.TimeoutExpired) as exc:
                        log.error("deleting network namespace %s failed: %s", name, exc)

