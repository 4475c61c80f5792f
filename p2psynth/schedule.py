"""When a daemon publishes on its own: on a schedule, or when its data file changed.

The decision is a plain function of the clock and the data file's signature
(size and modification time), so it is tested without a network. The daemon
calls it once per check interval and publishes when it returns a reason. A changed file
is published once its signature has stayed the same for one whole check, so
that a file still being written is not measured half-way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileSignature:
    """Size and modification time of the data file (None when it is missing)."""

    size: int
    mtime_ns: int


def file_signature(path: Path | None) -> FileSignature | None:
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return FileSignature(status.st_size, status.st_mtime_ns)


@dataclass
class ScheduleState:
    """Schedule memory carried from one check to the next."""

    last_publish_s: float | None  # wall-clock time of this node's latest release, if any
    published_signature: FileSignature | None  # data file as it was at the latest release or start
    previous_signature: FileSignature | None  # data file at the previous check


def publish_reason(
    state: ScheduleState,
    *,
    now_s: float,
    interval_hours: float,
    on_data_change: bool,
    current_signature: FileSignature | None,
) -> str | None:
    """Return why the node should publish now ("schedule" or "data changed"), or None."""
    stable = current_signature is not None and current_signature == state.previous_signature
    state.previous_signature = current_signature

    if on_data_change and stable and current_signature != state.published_signature:
        return "data changed"
    if interval_hours > 0:
        due = state.last_publish_s is None or now_s - state.last_publish_s >= interval_hours * 3600
        if due:
            return "schedule"
    return None
