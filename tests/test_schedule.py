"""Publishing on a schedule or on a data change: the decision without a network."""

from __future__ import annotations

import pytest

from p2psynth.errors import ConfigError
from p2psynth.nodeconfig import load_node_config
from p2psynth.nodefolder import init_node
from p2psynth.schedule import FileSignature, ScheduleState, file_signature, publish_reason

OLD = FileSignature(100, 1)
NEW = FileSignature(120, 2)


def _state(last_publish_s=None, signature=OLD) -> ScheduleState:
    return ScheduleState(last_publish_s=last_publish_s, published_signature=signature, previous_signature=signature)


def test_schedule_due_after_interval():
    state = _state(last_publish_s=1000.0)
    assert publish_reason(state, now_s=1000.0 + 3599, interval_hours=1, on_data_change=False,
                          current_signature=OLD) is None
    assert publish_reason(state, now_s=1000.0 + 3600, interval_hours=1, on_data_change=False,
                          current_signature=OLD) == "schedule"


def test_schedule_publishes_first_release_at_once():
    assert publish_reason(_state(), now_s=5.0, interval_hours=2, on_data_change=False,
                          current_signature=OLD) == "schedule"


def test_schedule_off_never_publishes():
    assert publish_reason(_state(), now_s=1e9, interval_hours=0, on_data_change=False,
                          current_signature=NEW) is None


def test_data_change_waits_until_stable():
    state = _state(last_publish_s=0.0)
    # The first check finds the new file, which may still be written, so it waits.
    assert publish_reason(state, now_s=1.0, interval_hours=0, on_data_change=True, current_signature=NEW) is None
    assert publish_reason(state, now_s=2.0, interval_hours=0, on_data_change=True,
                          current_signature=NEW) == "data changed"


def test_data_change_ignored_when_off():
    state = _state()
    for now in (1.0, 2.0, 3.0):
        assert publish_reason(state, now_s=now, interval_hours=0, on_data_change=False,
                              current_signature=NEW) is None


def test_missing_data_file_never_triggers():
    state = _state()
    assert publish_reason(state, now_s=1.0, interval_hours=0, on_data_change=True, current_signature=None) is None
    assert publish_reason(state, now_s=2.0, interval_hours=0, on_data_change=True, current_signature=None) is None


def test_file_signature_of_real_file(tmp_path):
    path = tmp_path / "table.csv"
    assert file_signature(path) is None
    path.write_text("a\n1\n")
    assert file_signature(path).size == 4
    assert file_signature(None) is None


def test_publish_settings_validated(tmp_path):
    config = init_node(tmp_path / "node").path
    assert load_node_config(config).publish.interval_hours == 0
    text = config.read_text()
    for bad, message in (("interval_hours = -1", "interval_hours"), ("interval_hours = 0.001", "interval_hours"),
                         ("on_data_change = 1", "on_data_change")):
        key = bad.split(" =")[0]
        lines = [line if not line.startswith(key) else bad for line in text.splitlines()]
        config.write_text("\n".join(lines))
        with pytest.raises(ConfigError, match=message):
            load_node_config(config)
    config.write_text(text.replace("interval_hours = 0 ", "interval_hours = 24 "))
    assert load_node_config(config).publish.interval_hours == 24
