"""`rlhb records tail` against the real broker: from the beginning it prints every record (whole
JSON with ``--json``, one readable line otherwise); by default it starts at the end and prints
only what arrives after it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from kafka import KafkaProducer
from typer.testing import CliRunner

from rlhb.cli import app
from tests.helpers.toy_task import toy_records


def _produce(bootstrap: str, topic: str, records, key: bytes | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    for r in records:
        producer.send(topic, key=key or r.impression_id.encode(), value=r.model_dump_json().encode())
    producer.flush()
    producer.close()


def _env(kafka_bootstrap, unique_topics, tmp_path) -> dict:
    return {
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RLHB_TOPIC_RECORDS": unique_topics["records"],
        "RLHB_STATE_DIR": str(tmp_path / "state"),
    }


def test_from_the_beginning_prints_each_record(kafka_bootstrap, unique_topics, tmp_path):
    records = toy_records(3)
    _produce(kafka_bootstrap, unique_topics["records"], records)
    env = _env(kafka_bootstrap, unique_topics, tmp_path)
    args = ["records", "tail", "--from-beginning", "--max", "3", "--timeout", "60"]
    res = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert res.exit_code == 0, res.output
    got = sorted(json.loads(line)["impression_id"] for line in res.stdout.splitlines())
    assert got == sorted(r.impression_id for r in records)
    res = CliRunner().invoke(app, args, env=env)
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all("reward=" in x and "| Q: " in x for x in lines)
    assert any(r.behavior_text in x for r in records for x in lines)


def test_by_default_only_new_records_are_printed(kafka_bootstrap, unique_topics, tmp_path):
    old, new = toy_records(4)[:3], toy_records(4)[3:]
    # One key: the old records share a partition and a batch, whose base offset tansu reports
    # as the end -- the case where seeking to "the end" alone would print them.
    _produce(kafka_bootstrap, unique_topics["records"], old, key=b"one-partition")
    time.sleep(0.05)  # the old records' timestamps are before tail starts, whatever the machine's speed
    env = {**os.environ, **_env(kafka_bootstrap, unique_topics, tmp_path)}
    cmd = [sys.executable, "-m", "rlhb.cli", "records", "tail", "--max", "1", "--timeout", "120", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "tailing" in proc.stderr.readline()  # positioned at the end: now the new one goes in
        _produce(kafka_bootstrap, unique_topics["records"], new)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [json.loads(x)["impression_id"] for x in out.splitlines()] == [new[0].impression_id]


def test_without_a_broker_it_says_what_to_start(tmp_path):
    res = CliRunner().invoke(
        app, ["records", "tail"], env={"RLHB_STATE_DIR": str(tmp_path), "RLHB_KAFKA_BOOTSTRAP_SERVERS": ""}
    )
    assert res.exit_code == 2 and "rlhb up" in res.output
