"""Two nodes in separate OS processes on 127.0.0.1: catch-up, then gossip and pull.

The test runs this file as a script twice. The holder starts with five
releases and prints its address. The joiner dials it, catches up by
anti-entropy, then publishes a release of its own, which the holder must get
by announcement and pull. The processes report progress as lines on stdout;
each child ends when its stdin closes or its own deadline passes.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import threading
from pathlib import Path

import trio

HOLDER_KEY, JOINER_KEY = 1, 2
HELD_RELEASES = 5
CHILD_DEADLINE_S = 60
LINE_TIMEOUT_S = 45


class Child:
    """A child process whose stdout lines are read by a thread into a queue."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str) -> str:
        """Return the text after ``prefix`` on the next line starting with it; fail after LINE_TIMEOUT_S."""
        while True:
            try:
                line = self.lines.get(timeout=LINE_TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {LINE_TIMEOUT_S} s; log: {self.log_path.read_text()[-3000:]}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def finish(self) -> int:
        """Close stdin so the child stops, and return its exit code (kill it after 20 s)."""
        try:
            self.process.stdin.close()
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            return -9
        finally:
            self._reader.join(timeout=5)
            self.process.stdout.close()
            self._log.close()


def test_late_joiner_in_separate_processes(tmp_path):
    holder = Child(["holder"], tmp_path / "holder.log")
    joiner = None
    try:
        address = holder.expect("ADDRESS")
        assert address.startswith("/ip4/127.0.0.1/tcp/")
        joiner = Child(["joiner", "--bootstrap", address], tmp_path / "joiner.log")

        assert joiner.expect("CAUGHT_UP") == str(HELD_RELEASES)
        published = joiner.expect("PUBLISHED")
        assert holder.expect("RECEIVED") == published
    finally:
        codes = [child.finish() for child in (holder, joiner) if child is not None]
    assert codes == [0, 0]


# The child processes ----------------------------------------------------------------


async def run_child(role: str, bootstrap: str | None) -> None:
    from releasefactory import fixed_key, make_release

    from p2psynth.network import NetworkConfig, NetworkService
    from p2psynth.network.memory import MemoryReleases
    from p2psynth.release import release_id

    key = fixed_key(HOLDER_KEY if role == "holder" else JOINER_KEY)
    releases = MemoryReleases()
    if role == "holder":
        for sequence in range(1, HELD_RELEASES + 1):
            releases.accept(make_release(key, sequence=sequence, seed=sequence)[0])
    config = NetworkConfig(
        network_id="process-test",
        schema_fingerprint="ab" * 32,
        bootstrap_addrs=(bootstrap,) if bootstrap else (),
        anti_entropy_min_interval_s=60.0,
        anti_entropy_max_interval_s=60.0,
        dial_initial_delay_s=0.1,
        seed=JOINER_KEY if bootstrap else HOLDER_KEY,
    )
    service = NetworkService(private_key=key, config=config, releases=releases, accept_release=releases.accept)
    other_author = fixed_key(JOINER_KEY if role == "holder" else HOLDER_KEY).public_key().public_bytes_raw()

    with trio.fail_after(CHILD_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            if role == "holder":
                print("ADDRESS", service.addresses()[0], flush=True)
                await releases.wait_for(lambda r: other_author in r.latest_sequences())
                (data,) = releases.releases_after(other_author, 0, limit=1)
                print("RECEIVED", release_id(data).hex(), flush=True)
            else:
                await releases.wait_for(lambda r: r.latest_sequences().get(other_author) == HELD_RELEASES)
                print("CAUGHT_UP", HELD_RELEASES, flush=True)
                while not service.gossip.mesh_peers():
                    await trio.sleep(0.01)
                data, release = make_release(key, sequence=1, seed=99)
                releases.accept(data)
                service.announce_release(release_id=release_id(data), sequence=1, size_bytes=len(data))
                print("PUBLISHED", release_id(data).hex(), flush=True)

            # Stay up to serve the peer until the test closes stdin.
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            service.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One node of test_network_processes.")
    parser.add_argument("role", choices=["holder", "joiner"])
    parser.add_argument("--bootstrap", help="address of the holder, with /p2p/<peer id>")
    arguments = parser.parse_args()
    trio.run(run_child, arguments.role, arguments.bootstrap)
