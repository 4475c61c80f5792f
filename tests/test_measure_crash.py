"""SIGKILL 'p2psynth measure' at random moments: the ledger always covers every release.

The invariant is checked after every kill: the ledger opens and verifies, and
every release that exists (a release file or a row of the store) is debited.
Kill times are drawn from a seeded generator over the span of one measure
run, so the kills land in start-up, reading, measuring, the ledger
transaction and the file write.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from p2psynth.errors import ReleaseFormatError
from p2psynth.nodefolder import init_node, open_node
from p2psynth.release import decode_release, release_id

KILLS = 50


def _existing_releases(node_folder: Path) -> dict[bytes, float]:
    """Return {release id: rho} of every complete release file and stored own release."""
    found: dict[bytes, float] = {}
    for path in (node_folder / "releases").glob("*.p2pr"):
        data = path.read_bytes()
        try:
            found[release_id(data)] = decode_release(data).rho
        except ReleaseFormatError:
            raise AssertionError(f"{path} is a partial release file; writes must be atomic") from None
    with open_node(node_folder / "node.toml") as node:
        for stored in node.store.own_releases():
            found[stored.release_id] = decode_release(stored.data).rho
    return found


def test_sigkill_never_loses_a_debit(tmp_path, adult_data_path, adult_schema_path):
    data = tmp_path / "adult-part.csv"
    with gzip.open(adult_data_path, "rt", encoding="utf-8") as source:
        data.write_text("".join(next(source) for _ in range(5000)), encoding="utf-8")
    folder = tmp_path / "node"
    init_node(
        folder, data_path=str(data), schema_path=str(adult_schema_path),
        lifetime_epsilon=500.0, release_epsilon=0.05,
    )
    command = [sys.executable, "-m", "p2psynth", "measure", "--config", str(folder / "node.toml")]
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    # One complete run tells how long a measure takes on this machine.
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, env=environment, timeout=120)
    span = time.monotonic() - started

    generator = np.random.default_rng(20261204)
    completed_runs = 0
    for kill in range(KILLS):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
        time.sleep(float(generator.uniform(0.0, 1.1 * span)))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        stderr = process.stderr.read().decode()
        process.stderr.close()
        if process.returncode == 0:
            completed_runs += 1
        else:
            assert process.returncode == -signal.SIGKILL, f"kill {kill}: measure failed on its own: {stderr}"

        releases = _existing_releases(folder)
        with open_node(folder / "node.toml") as node:
            status = node.ledger.status()  # raises LedgerError if the file or chain is damaged
            debited = {
                bytes(rid): rho
                for rid, rho in node.store.connection.execute("SELECT release_id, rho FROM ledger")
            }
        for rid, rho in releases.items():
            assert rid in debited, f"kill {kill}: release {rid.hex()[:16]} exists without a debit"
            assert debited[rid] >= rho
        assert status.rho_spent >= sum(releases.values()) * (1 - 1e-12)

    # The kills must not all have landed before or after the interesting part.
    with open_node(folder / "node.toml") as node:
        total = node.ledger.status().releases
    assert total >= 2, "no kill let a release through; the kill times are off"
    assert total - 1 - completed_runs < KILLS, "every run was killed before the ledger transaction"
