"""The trainer's record file (trainer/record_store.py): what a reload gives back, how it stays
bounded, and that a line torn by a crash costs that line only. (The restart of a whole
deployment on it is tests/rlhb/test_restart.py.)"""

from __future__ import annotations

from tests.helpers.behavior_toy import toy_record
from trainer.record_store import RecordStore
from trainer.replay_buffer import ReplayBuffer


def _reload(store: RecordStore, capacity: int) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity)
    for r in store.load():
        buffer.add(r)
    return buffer


def test_reload_gives_the_latest_record_per_impression_and_rewrite_bounds_the_file(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path, capacity=3)
    first = [toy_record(i, f"q{i}", "a", liked=False) for i in range(3)]
    store.append(first)
    newer = first[0].model_copy(update={"counts": {"view": 9.0, "like": 5.0}, "updated_at": first[0].updated_at + 1})
    store.append([newer, first[1]])  # an update and a re-delivery
    store.close()
    buffer = _reload(RecordStore(path, capacity=3), 3)
    assert {r.impression_id: r.counts for r in buffer.records()} == {
        first[0].impression_id: {"view": 9.0, "like": 5.0},
        first[1].impression_id: first[1].counts,
        first[2].impression_id: first[2].counts,
    }

    # More lines than twice the capacity: compaction is due; the rewrite keeps the buffer's records.
    store = RecordStore(path, capacity=3)
    store.rewrite(buffer.records())
    assert len(path.read_text().splitlines()) == 3 and not store.needs_compaction
    store.append([toy_record(i, f"q{i}", "a", liked=True) for i in range(3, 7)])
    assert store.needs_compaction  # 7 lines > 2 x 3
    store.close()


def test_a_line_torn_by_a_crash_is_skipped_and_dropped_by_the_next_rewrite(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path, capacity=10)
    records = [toy_record(i, f"q{i}", "a", liked=True) for i in range(2)]
    store.append(records)
    store.close()
    with open(path, "a") as f:
        f.write(records[0].model_dump_json()[:40])  # the process died mid-write
    store = RecordStore(path, capacity=10)
    loaded = store.load()
    assert [r.impression_id for r in loaded] == [r.impression_id for r in records]
    store.rewrite(loaded)
    store.append([toy_record(5, "q5", "a", liked=False)])
    store.close()
    assert len(RecordStore(path, capacity=10).load()) == 3  # the next line is not glued to the torn one
