"""``rlhb records tail``: print behavior records as the aggregator writes them.

Reads the records topic without a consumer group (tailing never moves anyone's offsets), from
its end by default (``--from-beginning`` for the whole log). The broker is the configured one
(``RLHB_KAFKA_BOOTSTRAP_SERVERS``) or the one ``rlhb up`` / ``rlhb infra up`` started; tail
never starts a broker of its own, since an empty fresh broker would only ever print nothing.
"""

from __future__ import annotations

import json
import time

import typer

from core.errors import clear_errors, fail


def _line(record) -> str:
    """One readable line: when, version, counts, reward, the behavior sentence, the question."""
    counts = " ".join(f"{k}={v:g}" for k, v in sorted(record.counts.items()))
    query = record.query if len(record.query) <= 60 else record.query[:57] + "..."
    when = time.strftime("%H:%M:%S", time.localtime(record.updated_at))
    return (
        f"{when} {record.impression_id[:12]}… {record.adapter_version} [{counts}] reward={record.reward:+.2f} "
        f"| {record.behavior_text} | Q: {query}"
    )


def records_tail(
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record, not the end."),
    max_records: int = typer.Option(0, "--max", min=0, help="Stop after this many records (0: never)."),
    timeout_s: float = typer.Option(0.0, "--timeout", min=0.0, help="Stop after this many seconds (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print each whole record as one JSON line."),
) -> None:
    """Print behavior records as they arrive on the records topic (Ctrl-C stops)."""
    from kafka import KafkaConsumer, TopicPartition
    from pydantic import ValidationError

    from core.infra.kafka_security import kafka_client_options
    from core.infra.resolve import read_running_infra
    from core.settings import CommonSettings
    from schemas import BehaviorRecord

    started_ms = int(time.time() * 1000)
    with clear_errors():
        settings = CommonSettings()
    bootstrap = settings.kafka_bootstrap_servers or (read_running_infra(settings) or {}).get("bootstrap", "")
    if not bootstrap:
        fail("no broker to read: start `rlhb up` (or `rlhb infra up`), or set RLHB_KAFKA_BOOTSTRAP_SERVERS")
    topic = settings.topic_records
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **kafka_client_options(settings)
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            fail(f"topic {topic!r} does not exist on {bootstrap} (has the aggregator run?)")
        consumer.assign(parts)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*parts)
        for tp in parts:  # seeks are lazy: resolve them now, or records written before the first poll are skipped
            consumer.position(tp)
        # tansu reports the last batch's base offset as the end, so "the end" may replay that
        # batch: records written before tail started are skipped by their timestamp.
        since_ms = 0 if from_beginning else started_ms
        typer.echo(f"tailing {topic} on {bootstrap} (Ctrl-C stops)", err=True)
        shown, deadline = 0, time.monotonic() + timeout_s if timeout_s else None
        while deadline is None or time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                for m in msgs:
                    if m.timestamp is not None and 0 <= m.timestamp < since_ms:
                        continue
                    try:
                        record = BehaviorRecord.model_validate_json(m.value or b"")
                    except ValidationError:
                        continue  # not a record (the aggregator dead-letters; tail only shows)
                    typer.echo(json.dumps(record.model_dump(mode="json")) if as_json else _line(record))
                    shown += 1
                    if max_records and shown >= max_records:
                        return
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
