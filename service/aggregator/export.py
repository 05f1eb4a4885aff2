"""``rlhb records export``: behavior records to JSONL, plus a prompt/chosen/rejected view.

The records topic is read from the beginning to its current end (no consumer group, so
exporting never moves anyone's offsets); the latest record per impression wins. The DPO
view pairs records on the same query whose shaped rewards differ: the higher-rewarded
response is ``chosen``. It is for users who want offline DPO with other tools (e.g. TRL's
DPOTrainer reads exactly these three fields).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from core.progress import progress_bar
from schemas import BehaviorRecord


def latest_per_impression(records: Iterable[BehaviorRecord]) -> list[BehaviorRecord]:
    """Keep the most recently updated record of each impression (log order breaks ties)."""
    latest: dict[str, BehaviorRecord] = {}
    for r in records:
        old = latest.get(r.impression_id)
        if old is None or r.updated_at >= old.updated_at:
            latest[r.impression_id] = r
    return list(latest.values())


def dpo_pairs(records: Iterable[BehaviorRecord], max_pairs_per_query: int = 16, min_margin: float = 1e-9) -> list[dict]:
    """Pairs of different responses to one query whose shaped rewards differ by > ``min_margin``."""
    by_query: dict[str, list[BehaviorRecord]] = {}
    for r in records:
        by_query.setdefault(r.query.strip(), []).append(r)
    pairs = []
    for query, group in sorted(by_query.items()):
        group = sorted(group, key=lambda r: (-r.reward, r.impression_id))
        n = 0
        for hi, lo in itertools.combinations(group, 2):
            if n >= max_pairs_per_query:
                break
            if hi.reward - lo.reward <= min_margin or hi.response == lo.response:
                continue
            pairs.append(
                {
                    "prompt": query,
                    "chosen": hi.response,
                    "rejected": lo.response,
                    "chosen_reward": hi.reward,
                    "rejected_reward": lo.reward,
                    "chosen_impression_id": hi.impression_id,
                    "rejected_impression_id": lo.impression_id,
                }
            )
            n += 1
    return pairs


def read_records(
    bootstrap: str, topic: str, timeout_s: float = 300.0, options: dict | None = None, progress: bool | None = False
) -> list[BehaviorRecord]:
    """Every record on ``topic`` up to its end offsets at call time; unreadable ones skipped.
    ``options``: kafka-python security arguments (``core.infra.kafka_security.kafka_client_options``);
    ``progress``: a bar of messages read (core.progress: None shows it on a terminal)."""
    from kafka import KafkaConsumer, TopicPartition
    from pydantic import ValidationError

    from service.aggregator.topic_reader import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **(options or {}))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        # The total is exact on Kafka, short on tansu (the end it reports is the last batch's base
        # offset): it grows to what was read, so the bar never runs past 100%.
        start, end = consumer.beginning_offsets(parts), consumer.end_offsets(parts)
        total = sum(max(0, end[tp] - start[tp]) for tp in parts) or None
        bar = progress_bar(total=total, enabled=progress, desc="records", unit="msg")
        out: list[BehaviorRecord] = []
        for batch in read_to_end(consumer, parts, timeout_s=timeout_s):
            for msgs in batch.values():
                if bar.total is not None and bar.n + len(msgs) > bar.total:
                    bar.total = bar.n + len(msgs)
                bar.update(len(msgs))
                for m in msgs:
                    if m.value is None:
                        continue
                    try:
                        out.append(BehaviorRecord.model_validate_json(m.value))
                    except ValidationError:
                        continue
        bar.close()
        return out
    finally:
        consumer.close()


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def export(
    bootstrap: str,
    topic: str,
    out: Path,
    dpo: Path | None = None,
    options: dict | None = None,
    progress: bool | None = False,
) -> dict:
    records = latest_per_impression(read_records(bootstrap, topic, options=options, progress=progress))
    records.sort(key=lambda r: r.impression_id)
    summary = {"records": write_jsonl(out, (r.model_dump(mode="json") for r in records)), "out": str(out)}
    if dpo is not None:
        summary["pairs"] = write_jsonl(dpo, dpo_pairs(records))
        summary["dpo"] = str(dpo)
    return summary
