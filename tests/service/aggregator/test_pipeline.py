"""Acceptance: aggregator processes on the real broker and real Redis.

The workload: 400 impressions and 10,000 feedback messages (about 9% re-sent duplicates),
shuffled so that many events reach the broker before their impression, over 4-partition
topics. Ground truth is computed here, independently of the aggregator's code: the sum of
values of each distinct (impression id, event id).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas import BehaviorRecord, FeedbackEvent, Impression
from service.aggregator.redis_state import AggregatorStore
from service.aggregator.topic_reader import read_to_end

KINDS = ["view", "view", "view", "click", "like", "dislike", "dwell"]


def workload(n_impressions: int = 400, n_messages: int = 10_000, seed: int = 0):
    """(messages as (topic role, key, value bytes), ground-truth counts per impression)."""
    rng = random.Random(seed)
    iids = [f"imp-{seed}-{i}" for i in range(n_impressions)]
    msgs: list[tuple[str, bytes, bytes]] = []
    for iid in iids:
        imp = Impression(
            impression_id=iid,
            query=f"question {rng.randint(0, 60)}",
            behavior="b",
            response=f"answer {iid}",
            adapter_version="v1",
        )
        msgs.append(("impressions", iid.encode(), imp.model_dump_json().encode()))
    events: list[FeedbackEvent] = []
    truth: dict[str, dict[str, float]] = {}
    while len(msgs) + len(events) < n_impressions + n_messages:
        if events and rng.random() < 0.09:
            ev = rng.choice(events)  # a retry: same event id, must count once
        else:
            kind = rng.choice(KINDS)
            ev = FeedbackEvent(
                event_id=uuid.uuid4().hex,
                impression_id=rng.choice(iids),
                kind=kind,
                value=rng.randint(1, 120) / 4 if kind == "dwell" else 1.0,  # quarters: sums are exact
            )
            c = truth.setdefault(ev.impression_id, {})
            c[ev.kind.value] = c.get(ev.kind.value, 0.0) + ev.value
        events.append(ev)
    msgs += [("feedback", e.impression_id.encode(), e.model_dump_json().encode()) for e in events]
    rng.shuffle(msgs)  # events overtake their impressions; duplicates land anywhere
    return msgs, truth


class Cluster:
    """Aggregator subprocesses sharing one consumer group, plus helpers to feed and inspect."""

    def __init__(self, bootstrap, topics, redis_url, prefix, tmp: Path, **agg_env):
        self.bootstrap, self.topics, self.tmp = bootstrap, topics, tmp
        self.env = {
            **os.environ,
            "RLHB_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "RLHB_REDIS_URL": redis_url,
            "RLHB_REDIS_PREFIX": prefix,
            "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
            "RLHB_TOPIC_FEEDBACK": topics["feedback"],
            "RLHB_TOPIC_RECORDS": topics["records"],
            "RLHB_TOPIC_DEAD_LETTER": topics["dead_letter"],
            "RLHB_AGG_GROUP_ID": f"agg-{uuid.uuid4().hex[:8]}",
            "RLHB_AGG_COALESCE_MS": "50",
            "RLHB_AGG_MAX_POLL_INTERVAL_MS": "6000",
            "RLHB_AGG_SESSION_TIMEOUT_MS": "4000",
            "RLHB_AGG_EDGES_REFIT_S": "2",
            **{f"RLHB_AGG_{k.upper()}": str(v) for k, v in agg_env.items()},
        }
        self.redis = redis_lib.Redis.from_url(redis_url, decode_responses=True)
        self.store = AggregatorStore(self.redis, prefix)
        self.procs: list[subprocess.Popen] = []
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def start(self) -> subprocess.Popen:
        log = open(self.tmp / f"aggregator-{len(self.procs)}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.aggregator"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def produce(self, msgs) -> None:
        for role, key, value in msgs:
            self.producer.send(self.topics[role], key=key, value=value)
        self.producer.flush()

    def wait_counts(self, truth, timeout_s: float = 90) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.store.all_counts()
            if got == truth:
                return got
            assert all(p.poll() is None for p in self.procs if p.returncode != -9), self.logs()
            time.sleep(0.3)
        return self.store.all_counts()

    def wait_published(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.store.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.store.backlog() == 0

    def read(self, role: str, timeout_s: float = 10) -> list:
        return read_topic(self.bootstrap, self.topics[role], timeout_s)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp.glob("aggregator-*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.producer.close(5)
        self.redis.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10) -> list:
    """Everything currently on ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [
        m
        for batch in read_to_end(consumer, parts, idle_s=0.5, timeout_s=timeout_s)
        for ms in batch.values()
        for m in ms
    ]
    consumer.close()
    return out


def latest_records(msgs) -> dict[str, BehaviorRecord]:
    latest: dict[str, BehaviorRecord] = {}
    for m in msgs:
        r = BehaviorRecord.model_validate_json(m.value)
        assert m.key == r.impression_id.encode()
        if r.impression_id not in latest or r.updated_at >= latest[r.impression_id].updated_at:
            latest[r.impression_id] = r
    return latest


@pytest.fixture
def cluster(kafka_bootstrap, unique_topics, redis_url, redis_prefix, tmp_path):
    made = []

    def make(**agg_env) -> Cluster:
        c = Cluster(kafka_bootstrap, unique_topics, redis_url, redis_prefix, tmp_path, **agg_env)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def test_two_members_count_exactly_then_replay_reproduces_the_counts(cluster, tmp_path):
    msgs, truth = workload()
    c = cluster()
    c.start()
    c.start()
    c.produce(msgs)
    assert c.wait_counts(truth) == truth, c.logs()
    c.wait_published()
    # Every impression with feedback has a record on behavior-records; the latest carries the final counts.
    latest = latest_records(c.read("records"))
    assert {iid: r.counts for iid, r in latest.items()} == truth
    sample = next(iter(latest.values()))
    assert sample.encoding == "rates" and sample.behavior_text.startswith("Users liked this answer at a")
    assert c.read("dead_letter", timeout_s=2) == []
    for p in c.procs:
        assert p.poll() is None, c.logs()
    c.stop()

    # Replay from offset 0 rebuilds the state, even after it was damaged.
    some = next(iter(truth))
    c.redis.hset(c.store.p + "cnt:" + some, "like", 999)
    c.redis.delete(c.store.p + "seen:" + some)
    out = subprocess.run(
        [sys.executable, "-m", "service.aggregator", "replay"], env=c.env, capture_output=True, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    summary = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert summary["messages"] == len(msgs)
    assert c.store.all_counts() == truth

    # Records export: the latest record per impression, and a prompt/chosen/rejected view.
    import typer
    from typer.testing import CliRunner

    from service.aggregator.cli import records_app

    rlhb = typer.Typer()  # mounted the way rlhb/cli.py mounts it: `rlhb records export`
    rlhb.add_typer(records_app, name="records")

    env = {k: v for k, v in c.env.items() if k.startswith("RLHB_")}
    res = CliRunner().invoke(
        rlhb, ["records", "export", "--out", str(tmp_path / "r.jsonl"), "--dpo", str(tmp_path / "dpo.jsonl")], env=env
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["impression_id"]: r["counts"] for r in rows} == truth
    pairs = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert {"prompt", "chosen", "rejected"} <= set(pairs[0])


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])  # RLHB_AGG_KAFKA_CLIENT: exact on both
def test_kill_9_mid_stream_then_restart_neither_loses_nor_double_counts(cluster, client):
    msgs, truth = workload(seed=1)
    c = cluster(kafka_client=client)
    victim = c.start()
    c.start()
    half = len(msgs) // 2
    c.produce(msgs[:half])
    deadline = time.monotonic() + 60
    while sum(sum(v.values()) for v in c.store.all_counts().values()) < 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    c.produce(msgs[half : half + 2000])
    victim.send_signal(signal.SIGKILL)  # mid-stream: no chance to commit or clean up
    victim.wait(5)
    c.produce(msgs[half + 2000 :])
    c.start()  # restart
    assert c.wait_counts(truth, timeout_s=120) == truth, c.logs()
    # Stays exact after the group settles (no late re-delivery double-counts).
    time.sleep(3)
    assert c.store.all_counts() == truth
    c.wait_published()
    latest = latest_records(c.read("records"))
    assert {iid: r.counts for iid, r in latest.items()} == truth


def test_garbage_and_orphan_events_go_to_dead_letter_and_the_aggregator_stays_up(cluster):
    c = cluster(pending_ttl_s=1.0)
    proc = c.start()
    imp = Impression(impression_id="i-ok", query="q", behavior="b", response="r", adapter_version="v1")
    like = FeedbackEvent(event_id="e1", impression_id="i-ok", kind="like")
    orphan = FeedbackEvent(event_id="e2", impression_id="i-never", kind="view")
    garbage = b"\x00\xffthis is not json"
    c.produce(
        [
            ("feedback", b"i-ok", garbage),
            ("impressions", b"bad", b'{"impression_id": "bad"}'),
            ("feedback", b"i-never", orphan.model_dump_json().encode()),
            ("impressions", b"i-ok", imp.model_dump_json().encode()),
            ("feedback", b"i-ok", like.model_dump_json().encode()),
        ]
    )
    assert c.wait_counts({"i-ok": {"like": 1.0}}, timeout_s=60) == {"i-ok": {"like": 1.0}}, c.logs()
    deadline, dead = time.monotonic() + 30, []
    while len(dead) < 3 and time.monotonic() < deadline:
        dead = [json.loads(m.value) for m in c.read("dead_letter", timeout_s=2)]
        time.sleep(0.5)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    assert "not a valid feedback event" in by_value[garbage]["reason"]
    assert by_value[garbage]["source_topic"] == c.topics["feedback"]
    assert "not a valid impression" in by_value[b'{"impression_id": "bad"}']["reason"]
    orphan_dl = [d for v, d in by_value.items() if b'"i-never"' in v]
    assert orphan_dl and "never arrived" in orphan_dl[0]["reason"]
    assert c.store.pending_count() == 0
    # Still up and still counting.
    assert proc.poll() is None, c.logs()
    c.produce(
        [
            (
                "feedback",
                b"i-ok",
                FeedbackEvent(event_id="e3", impression_id="i-ok", kind="like").model_dump_json().encode(),
            )
        ]
    )
    assert c.wait_counts({"i-ok": {"like": 2.0}}, timeout_s=30) == {"i-ok": {"like": 2.0}}
