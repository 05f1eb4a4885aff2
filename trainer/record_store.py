"""The trainer's records on disk: what it trains on survives a restart of the embedded broker.

The replay buffer is rebuilt from the ``behavior-records`` topic at every start, but the
embedded broker (tansu) keeps topics in memory: after a restart of `rlhb up` that topic is
empty and the buffer would start from nothing. So every record the trainer reads is also
appended here (one JSON line each, ``RLHB_STATE_DIR/trainer-records.jsonl``) and reloaded into
the buffer at start, before the topic is read.

- Deduplicated by impression id the way the buffer is (the latest ``updated_at`` wins), so
  reading the same record from the file and again from a durable Kafka topic is harmless.
- Bounded: when the file holds more than twice the buffer's capacity in lines, it is rewritten
  from the buffer (the latest record of each kept impression); also at every start, which
  drops a line torn by a crash mid-write.
- Durable against a crash of the process at once (each batch is written and flushed to the
  OS), against a crash of the machine within about a second (fsync at most once a second and
  at close), and rewritten atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from schemas.behavior import BehaviorRecord

log = logging.getLogger(__name__)

FILE_NAME = "trainer-records.jsonl"
FSYNC_EVERY_S = 1.0


class RecordStore:
    def __init__(self, path: Path, capacity: int):
        self.path, self.capacity = Path(path), capacity
        self._file = None
        self._lines = 0
        self._synced_at = 0.0

    def load(self) -> list[BehaviorRecord]:
        """Every readable record in the file, in the order written (unreadable lines skipped)."""
        records, bad = [], 0
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        records.append(BehaviorRecord.model_validate_json(line))
                    except ValueError:
                        bad += 1
        except FileNotFoundError:
            return []
        if bad:
            log.warning("%s: skipped %d unreadable lines (a write cut short by a crash?)", self.path, bad)
        return records

    def rewrite(self, records: Iterable[BehaviorRecord]) -> None:
        """Replace the file by ``records`` (atomically) and keep appending to the new one."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        n = 0
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(r.model_dump_json() + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._lines = n

    def append(self, records: list[BehaviorRecord]) -> None:
        if not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open between batches
        self._file.write("".join(r.model_dump_json() + "\n" for r in records))
        self._file.flush()
        self._lines += len(records)
        if time.monotonic() - self._synced_at >= FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced_at = time.monotonic()

    @property
    def needs_compaction(self) -> bool:
        return self._lines > 2 * self.capacity

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
