"""Data windows: what each version learned beyond its parent, and the quarantined ones, on disk."""

from __future__ import annotations

import pytest

from tests.helpers.toy_task import toy_records
from trainer.data_windows import DataWindows
from trainer.replay_buffer import ReplayBuffer


def at(times):
    return [r.model_copy(update={"updated_at": t}) for r, t in zip(toy_records(len(times)), times, strict=True)]


def test_a_window_starts_where_the_parent_stopped_and_quarantine_survives_a_restart(tmp_path):
    path = tmp_path / "state" / "data-windows.json"
    windows = DataWindows(path)
    assert windows.record_round("v1", None, at([1.0, 5.0])) == {"since": 0.0, "until": 5.0}
    assert windows.record_round("v2", "v1", at([2.0, 9.0])) == {"since": 5.0, "until": 9.0}
    assert windows.record_round("v3", "unknown", at([])) == {"since": 0.0, "until": 0.0}
    assert windows.quarantine("v2", "users liked it less")["since"] == 5.0
    assert windows.quarantine("v2", "again") is None and windows.quarantine("never-trained", "x") is None

    again = DataWindows(path)  # a restart reads the same file
    assert [q["version"] for q in again.quarantined] == ["v2"] and again.windows["v1"]["until"] == 5.0
    inside, edge, before = at([7.0, 9.0, 5.0])
    assert again.is_quarantined(inside) and again.is_quarantined(edge) and not again.is_quarantined(before)

    buffer = ReplayBuffer(10)
    for r in at([3.0, 6.0, 8.0, 10.0]):
        buffer.add(r)
    assert buffer.remove_if(again.is_quarantined) == 2
    assert sorted(r.updated_at for r in buffer.records()) == [3.0, 10.0]


def test_a_file_that_is_not_a_data_windows_file_is_an_error_that_names_it(tmp_path):
    path = tmp_path / "data-windows.json"
    path.write_text('{"windows": {"v1": {"since": "soon"}}}')
    with pytest.raises(ValueError, match=r"data-windows.json is not a data-windows file .*fix or remove it"):
        DataWindows(path)
