"""Read assigned partitions from the beginning to "now" (replay, export).

The end is where a poll comes back empty after the reported end offsets were reached.
Why not just the end offsets: the embedded broker (tansu 0.6) reports as the end offset the
base offset of the last record batch, not the high watermark, so stopping there would miss
up to one batch per partition. Polling until idle is correct on both tansu and Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Iterator


def read_to_end(
    consumer, parts: list, idle_s: float = 1.0, timeout_s: float = 300.0, max_records: int = 2000
) -> Iterator[dict]:
    """Yield poll batches ({TopicPartition: [records]}) from the current positions until the
    partitions are drained; raise TimeoutError after ``timeout_s``."""
    end = consumer.end_offsets(parts)
    deadline = time.monotonic() + timeout_s
    idle_since = None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {len(parts)} partitions took longer than {timeout_s}s")
        batch = consumer.poll(timeout_ms=200, max_records=max_records)
        if any(batch.values()):
            idle_since = None
            yield batch
            continue
        if any(consumer.position(tp) < end[tp] for tp in parts):
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since >= idle_s:
            return
