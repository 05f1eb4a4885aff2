"""Fault injection (issue 16): randomized faults under a stream of feedback, then exactly-once.

Every fault is real, on real processes: ``kill -9`` of the aggregator and of the API
subprocesses at random moments, the broker and Redis frozen (SIGSTOP: unreachable, requests
hang) or Redis killed and restarted from its append-only file mid-batch, and a filesystem
that fills up under the API's impression outbox (a real size-limited tmpfs). After each
schedule, every event that was accepted (acknowledged by the broker, or answered 202 by the
API) is counted exactly once -- none lost, none doubled -- and every answered impression is
stored.

The schedules are drawn by hypothesis (few examples: each one runs real processes for
seconds); two explicit examples make every fault kind happen on every run, and the
falsifying schedule is printed when one fails (no shrinking: a rerun costs seconds).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from core.infra.broker import EmbeddedBroker, check_kafka, ensure_topics
from core.infra.ports import free_port, wait_tcp
from core.infra.processes import stop_process
from core.infra.redis_server import redis_answers, server_binary
from schemas import FeedbackEvent, Impression
from service.aggregator.redis_state import AggregatorStore

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("view", "click", "like", "dislike", "dwell")
REACTIONS = ("view", "like")  # what the API test's clients send for each answer


# --------------------------------------------------------------------------- real parts
class AofRedis:
    """A private valkey/redis-server with ``appendfsync always``: a ``kill -9`` loses nothing
    it acknowledged, so a restart on the same port and folder is an outage, not a rollback
    (rollbacks are tests/service/aggregator/test_reliability.py's)."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> AofRedis:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [str(server_binary()), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        assert wait_tcp("127.0.0.1", self.port, 10), "redis did not start"
        deadline = time.monotonic() + 10
        while not redis_answers(self.url):  # it answers LOADING while it replays the AOF
            assert time.monotonic() < deadline, "redis did not load its AOF"
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, sig)


class Supervised:
    """One ``rlhb <name>`` subprocess, restarted when it exits (as ``rlhb up`` does); logs kept."""

    def __init__(self, name: str, env: dict, log: Path):
        self.name, self.env, self.log = name, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._next_start = 0.0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlhb.cli", self.name], env=self.env, cwd=ROOT, stdout=out, stderr=out
            )
        self.starts += 1

    def keep_running(self) -> None:
        """Restart an exited process, at most once a second (a dependency may still be down)."""
        if (self.proc is None or self.proc.poll() is not None) and time.monotonic() >= self._next_start:
            self._next_start = time.monotonic() + 1.0
            self.start()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _base_env(bootstrap: str, redis_url: str, prefix: str, topics: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "RLHB_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "RLHB_REDIS_URL": redis_url,
            "RLHB_REDIS_PREFIX": prefix,
            "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
            "RLHB_TOPIC_FEEDBACK": topics["feedback"],
            "RLHB_TOPIC_RECORDS": topics["records"],
            "RLHB_TOPIC_DEAD_LETTER": topics["dead_letter"],
            "RLHB_AGG_GROUP_ID": f"fi-{prefix}",
            # Small batches: a kill lands mid-batch more often. Short timeouts: a killed member's
            # partitions come back within seconds (the group waits a session for it).
            "RLHB_AGG_MAX_POLL_RECORDS": "40",
            "RLHB_AGG_COALESCE_MS": "50",
            "RLHB_AGG_SESSION_TIMEOUT_MS": "2000",
            "RLHB_AGG_MAX_POLL_INTERVAL_MS": "3000",
        }
    )
    return env


# --------------------------------------------------------------------------- the feedback stream
class Stream:
    """Writes impressions and feedback events straight to the topics (as a trusted producer may),
    each send retried until the broker acknowledges it -- so every event in ``sent`` is accepted
    -- and now and then a second copy of an event already acknowledged (an at-least-once
    producer's retry after a lost ack), which must count once."""

    def __init__(self, bootstrap: str, topics: dict, seed: int):
        self.bootstrap, self.topics, self.rng = bootstrap, topics, random.Random(seed)
        self.expected: dict[str, Counter] = {}
        self.duplicates = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fault-stream", daemon=True)

    def _send(self, producer, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.send(topic, key=key.encode(), value=value).get(timeout=30)
                return
            except Exception:  # noqa: BLE001 - not acknowledged (broker frozen): send it again
                if self.stop.is_set() and time.monotonic() > self._give_up:
                    raise
                time.sleep(0.1)

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2, request_timeout_ms=5000)
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                iid = f"imp-{n}-{uuid.uuid4().hex[:6]}"
                events = []
                for k in range(self.rng.randint(1, 4)):
                    kind = self.rng.choice(KINDS)
                    value = round(self.rng.uniform(1, 60), 3) if kind == "dwell" else 1.0
                    events.append(FeedbackEvent(event_id=f"{iid}-e{k}", impression_id=iid, kind=kind, value=value))
                impression = Impression(impression_id=iid, query="q", behavior="b", response="r", adapter_version="v")
                early = self.rng.random() < 0.3  # feedback before its impression: parked, drained later
                if not early:
                    self._send(producer, self.topics["impressions"], iid, impression.model_dump_json().encode())
                for ev in events:
                    self._send(producer, self.topics["feedback"], iid, ev.model_dump_json().encode())
                    self.expected.setdefault(iid, Counter())[ev.kind] += ev.value
                    if self.rng.random() < 0.15:
                        self._send(producer, self.topics["feedback"], iid, ev.model_dump_json().encode())
                        self.duplicates += 1
                if early:
                    self._send(producer, self.topics["impressions"], iid, impression.model_dump_json().encode())
                self.expected.setdefault(iid, Counter())
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            producer.close(5)

    def start(self) -> Stream:
        self.thread.start()
        return self

    def finish(self, timeout_s: float = 60) -> None:
        self._give_up = time.monotonic() + timeout_s
        self.stop.set()
        self.thread.join(timeout_s + 10)
        assert not self.thread.is_alive() and self.error is None, f"the stream failed: {self.error!r}"


def assert_counted_exactly_once(store: AggregatorStore, expected: dict[str, Counter], timeout_s: float, logs) -> None:
    """Wait until every impression's counts equal what was accepted; then make sure they stay so
    (a late re-delivery counted twice would show up after the first match)."""

    def mismatches() -> list:
        out = []
        for iid, want in expected.items():
            got = store.counts(iid)
            if set(got) != set(want) or any(abs(got[k] - want[k]) > 1e-6 for k in want):
                out.append((iid, dict(want), got))
        return out

    deadline = time.monotonic() + timeout_s
    while (bad := mismatches()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not bad, f"{len(bad)} of {len(expected)} impressions miscounted, e.g. {bad[:3]}\n{logs()}"
    time.sleep(1.5)
    assert not mismatches(), f"counts moved after they matched: {mismatches()[:3]}\n{logs()}"


def check_while_running(check, processes: list[Supervised], timeout_s: float) -> None:
    """Run ``check`` (which waits and asserts) in a thread while the processes are kept up (a
    dependency that came back late may still have to restart one); re-raise its failure here."""
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            check()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    end = time.monotonic() + timeout_s
    while not done.is_set() and time.monotonic() < end:
        for p in processes:
            p.keep_running()
        time.sleep(0.1)
    assert done.is_set(), "the check did not finish"
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------- 1. aggregator under faults
FAULTS = ("kill_aggregator", "freeze_broker", "kill_redis", "freeze_redis")
fault_schedules = st.lists(
    st.tuples(
        st.sampled_from(FAULTS),
        st.floats(0.1, 1.5),  # seconds of stream before the fault
        st.floats(0.3, 2.0),  # how long the outage lasts (kill_aggregator: until the restart)
    ),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def private_infra(tmp_path_factory):
    """A broker and a Redis of this module's own, so freezing and killing them disturbs no other test."""
    broker = EmbeddedBroker().start()
    check_kafka(broker.bootstrap)
    redis = AofRedis(tmp_path_factory.mktemp("aof-redis")).start()
    yield broker, redis
    _signal(broker.proc, signal.SIGCONT)
    _signal(redis.proc, signal.SIGCONT)
    broker.stop()
    redis.stop()


@settings(
    max_examples=1,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: the printed schedule is the repro
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@example(schedule=[("kill_aggregator", 0.4, 0.3), ("kill_redis", 0.5, 1.0), ("freeze_broker", 0.3, 1.5)])
@example(schedule=[("freeze_redis", 0.3, 0.8), ("kill_aggregator", 0.2, 0.3)])
@given(schedule=fault_schedules)
def test_aggregator_counts_every_accepted_event_once_through_kills_and_outages(private_infra, tmp_path, schedule):
    broker, redis = private_infra
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"fi-{tag}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    ensure_topics(broker.bootstrap, list(topics.values()), partitions=4)
    prefix = f"fi:{tag}:"
    aggregator = Supervised(
        "aggregator", _base_env(broker.bootstrap, redis.url, prefix, topics), tmp_path / f"aggregator-{tag}.log"
    )
    stream = Stream(broker.bootstrap, topics, seed=hash(tag)).start()

    watch = redis_lib.Redis.from_url(redis.url, decode_responses=True, socket_timeout=2)

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            aggregator.keep_running()
            time.sleep(0.05)

    def progress() -> int:
        """Messages applied so far: the offsets the aggregator stores with the counts."""
        try:
            return sum(int(v) for v in watch.hgetall(prefix + "agg:offsets").values())
        except redis_lib.RedisError:
            return -1

    def wait_for_progress(timeout_s: float = 45) -> None:
        # Each fault strikes a member that is applying batches (not one still starting up), so
        # a kill lands between the Redis script and the Kafka commit as often as anywhere else.
        start, end = progress(), time.monotonic() + timeout_s
        while progress() <= start:
            assert time.monotonic() < end, f"no progress after a fault\n{aggregator.tail()}"
            wait(0.05)

    try:
        aggregator.start()
        for fault, before, outage in schedule:
            wait_for_progress()
            wait(before)
            if fault == "kill_aggregator":
                aggregator.kill9()
                wait(outage)
            elif fault in ("freeze_broker", "freeze_redis"):
                proc = broker.proc if fault == "freeze_broker" else redis.proc
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    wait(outage)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
            else:  # kill_redis: down (the aggregator fails and is restarted, failing until it is back)
                redis.kill()
                wait(outage)
                redis.start()
        stream.finish()
        assert stream.expected, "the stream sent nothing"
        store = AggregatorStore(redis_lib.Redis.from_url(redis.url, decode_responses=True), prefix)
        logs = lambda: f"schedule {schedule}, {aggregator.starts} starts\n{aggregator.tail()}"  # noqa: E731
        check_while_running(lambda: assert_counted_exactly_once(store, stream.expected, 60, logs), [aggregator], 90)
        # Every impression is stored, and nothing was counted for impressions that do not exist.
        counted = {k.removeprefix(store.p + "cnt:") for k in store.redis.scan_iter(match=store.p + "cnt:*")}
        assert counted <= set(stream.expected)
        assert aggregator.starts >= 1 + sum(f == "kill_aggregator" for f, *_ in schedule)
    finally:
        stream.stop.set()
        aggregator.stop()
        watch.close()


# --------------------------------------------------------------------------- 2. API + aggregator, kill -9
def test_api_and_aggregator_killed_at_random_moments_lose_nothing_accepted(
    kafka_bootstrap, unique_topics, redis_url, redis_prefix, tiny_model_dir, tmp_path
):
    """Clients ask and react (view + like) through the API while the API and the aggregator are
    each killed with SIGKILL at random moments (seeded; printed on failure) and restarted. Every
    answered query's impression reaches Redis (the outbox fsyncs it before the answer), and every
    reaction answered 202 is counted exactly once: a client retries until it gets a 202, and the
    server-derived event ids make retries harmless."""
    from tests.helpers.e2e import ADMIN_TOKEN, IMPRESSION_SECRET

    seed = random.randrange(10**6)
    rng = random.Random(seed)
    env = _base_env(kafka_bootstrap, redis_url, redis_prefix, unique_topics)
    port = free_port()
    env.update(
        {
            "RLHB_MODEL_PATH": str(tiny_model_dir),
            "RLHB_STATE_DIR": str(tmp_path / "state"),
            "RLHB_ADAPTER_DIR": str(tmp_path / "adapters"),
            "RLHB_API_HOST": "127.0.0.1",
            "RLHB_API_PORT": str(port),
            "RLHB_API_ADMIN_TOKEN": ADMIN_TOKEN,
            "RLHB_API_IMPRESSION_SECRET": IMPRESSION_SECRET,  # the aggregator checks every id with it too
            "RLHB_API_MAX_NEW_TOKENS": "4",
            "RLHB_API_OUTBOX_FLUSH_S": "0.3",
            "RLHB_API_BATCH_WINDOW_MS": "5",
            "RLHB_API_TORCH_THREADS": "1",
            "RLHB_API_FEEDBACK_RATE_PER_S": "1000",
        }
    )
    api = Supervised("api", env, tmp_path / "api.log")
    aggregator = Supervised("aggregator", env, tmp_path / "aggregator.log")
    url = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    accepted: set[str] = set()
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30, headers={"X-Client-Id": f"fi-client-{i}"}) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/query", json={"query": f"question {i}", "max_tokens": 4})
                except httpx.HTTPError:
                    time.sleep(0.1)  # the API is down: ask again once it is back
                    continue
                if r.status_code != 200:
                    time.sleep(0.1)
                    continue
                iid = r.json()["impression_id"]
                answered.append(iid)
                body = {"events": [{"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": k} for k in REACTIONS]}
                while True:  # the API's contract: retry the whole request until 202
                    try:
                        if c.post("/v1/feedback", json=body).status_code == 202:
                            accepted.add(iid)
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)

    def logs() -> str:
        return f"seed {seed}\n--- api\n{api.tail()}\n--- aggregator\n{aggregator.tail()}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            api.keep_running()
            aggregator.keep_running()
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    try:
        api.start()
        aggregator.start()
        wait(120, ready)
        assert ready(), logs()
        for t in threads:
            t.start()
        for victim in rng.sample([api, aggregator], 2):  # in a random order, at random moments
            wait(rng.uniform(0.5, 2.0))
            victim.kill9()
            if victim is api:
                wait(60, ready)  # restarted by wait(); the clients keep trying meanwhile
        wait(rng.uniform(0.5, 1.5))
        stop.set()
        for t in threads:
            t.join(60)
        assert len(accepted) >= 5, f"too little traffic got through: {len(accepted)}\n{logs()}"
        store = AggregatorStore(redis_lib.Redis.from_url(redis_url, decode_responses=True), redis_prefix)
        want = {iid: Counter({k: 1.0 for k in REACTIONS}) for iid in accepted}

        def check() -> None:
            assert_counted_exactly_once(store, want, 45, logs)
            # Answered but never reacted to (the client was stopped mid-way): stored all the same.
            missing = [i for i in answered if not store.redis.exists(store.p + "imp:" + i)]
            assert not missing, f"{len(missing)} answered impressions never reached Redis\n{logs()}"

        check_while_running(check, [api, aggregator], 60)
        assert api.starts >= 2 and aggregator.starts >= 2
    finally:
        stop.set()
        api.stop()
        aggregator.stop()


# --------------------------------------------------------------------------- 3. full disk under the outbox
def _wait_for(condition, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (the tests run as root); a file that fills it makes the disk full."""
    where = tmp_path / "small-disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_under_the_outbox_is_a_clear_503_and_loses_nothing_accepted(
    redis_url, redis_prefix, tiny_model_dir, tmp_path, small_disk
):
    """With the broker away, answers wait in the outbox; then the disk fills: new answers are
    refused with a 503 that says why (not a 500), earlier ones stay. Space returns, the broker
    returns: answers are served again and every impression answered with 200 is on the topic."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from tests.helpers.serving import serving_settings, wait_ready
    from tests.service.api.test_query import read_impressions

    broker = EmbeddedBroker().start()
    topics = {k: f"fd-{uuid.uuid4().hex[:8]}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    ensure_topics(broker.bootstrap, list(topics.values()), partitions=2)
    settings = serving_settings(
        tmp_path, broker.bootstrap, redis_url, redis_prefix, topics, tiny_model_dir, state_dir=small_disk
    )
    q = {"query": "Is the sky blue?", "max_tokens": 3}
    answered: list[str] = []
    try:
        with TestClient(create_app(settings)) as c:
            wait_ready("", client=c)
            answered.append(c.post("/v1/query", json=q).json()["impression_id"])
            # The broker goes away (frozen: a restarted in-memory tansu would come back without the
            # topics, and what it accepts before they are re-created is not ours to check).
            os.kill(broker.proc.pid, signal.SIGSTOP)
            for _ in range(3):
                r = c.post("/v1/query", json=q)
                assert r.status_code == 200, r.text
                answered.append(r.json()["impression_id"])
            filler = fill(small_disk)
            refused = [c.post("/v1/query", json=q) for _ in range(2)]
            for r in refused:
                assert r.status_code == 503, r.text  # was a 500 ("database or disk is full")
                assert "impression log" in r.json()["detail"] and "disk" in r.json()["detail"]
                assert r.headers["retry-after"].isdigit()
            ready = c.get("/readyz").json()
            assert "outbox" in ready["down"] and "disk" in ready["checks"]["outbox"]["detail"], ready

            filler.unlink()  # space returns: readiness comes back by itself (the flusher probes the disk)
            _wait_for(lambda: "outbox" not in c.get("/readyz").json()["down"], 30, "the outbox stayed down")
            r = c.post("/v1/query", json=q)
            assert r.status_code == 200, r.text
            answered.append(r.json()["impression_id"])
            os.kill(broker.proc.pid, signal.SIGCONT)  # and the broker
            deadline = time.monotonic() + 60
            while (ready := c.get("/readyz").json())["checks"]["outbox"]["pending"] > 0 or ready["down"]:
                assert time.monotonic() < deadline, f"the outbox did not drain: {ready}"
                time.sleep(0.3)
        got = read_impressions(broker.bootstrap, topics["impressions"], set(answered[1:]))
        assert set(answered[1:]) <= set(got), "an impression answered with 200 was lost"
        assert not {r.json().get("impression_id") for r in refused} & set(got)  # refused: never served
    finally:
        _signal(broker.proc, signal.SIGCONT)
        broker.stop()
