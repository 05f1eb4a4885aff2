"""End-to-end test helpers: one rlhb deployment as real subprocesses (``rlhb api``,
``rlhb aggregator``, ``rlhb trainer``) on the test's broker, Redis prefix and topics, plus
small HTTP and topic readers. Every process logs to ``root/<name>.log``; ``logs()`` is what a
failing assertion shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
IMPRESSION_SECRET = "e2e-impression-secret-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROCESSES = ("api", "aggregator", "trainer")


def deployment_env(trainer_env: dict[str, str], port: int, prefix: str) -> dict[str, str]:
    """The trainer's RLHB_* variables (tests/helpers/trainer_loop.trainer_env) plus the API's
    and the aggregator's, one torch thread everywhere (2 busy cores), real admin secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update(trainer_env)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "RLHB_API_HOST": "127.0.0.1",
            "RLHB_API_PORT": str(port),
            "RLHB_API_ADMIN_TOKEN": ADMIN_TOKEN,
            "RLHB_API_IMPRESSION_SECRET": IMPRESSION_SECRET,
            "RLHB_API_MAX_NEW_TOKENS": "8",
            "RLHB_API_MAX_TOKENS_CAP": "64",
            "RLHB_API_ADAPTER_POLL_S": "0.1",
            "RLHB_API_OUTBOX_FLUSH_S": "0.3",
            "RLHB_API_BATCH_WINDOW_MS": "10",
            "RLHB_API_TORCH_THREADS": "1",
            "RLHB_AGG_GROUP_ID": f"agg-{prefix}",
            "RLHB_AGG_COALESCE_MS": "50",
            "RLHB_AGG_CATCHUP_COALESCE_MS": "200",
            "RLHB_AGG_MAX_POLL_INTERVAL_MS": "3000",
            "RLHB_AGG_SESSION_TIMEOUT_MS": "3000",
        }
    )
    return env


class Deployment:
    """The three processes of one deployment; ``stop_all`` in a ``finally``."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.url = f"http://127.0.0.1:{env['RLHB_API_PORT']}"
        self.procs: dict[str, subprocess.Popen] = {}
        # One client key for the whole deployment test: feedback must come from the client that asked.
        self.http = httpx.Client(base_url=self.url, timeout=60, headers={"X-Client-Id": "e2e-test-client-01"})

    def start(self, *names: str) -> None:
        for name in names or PROCESSES:
            with open(self.root / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "rlhb.cli", name], env=self.env, stdout=log, stderr=subprocess.STDOUT
                )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"`rlhb {name}` exited with {proc.returncode}\n{self.logs()}"

    def stop(self, name: str, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in self.procs:
            self.stop(name, timeout_s=20)
        self.http.close()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"----- {p.stem} (last {tail} chars) -----\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    # ------------------------------------------------------------------ HTTP
    def readyz(self) -> dict:
        """/readyz body (200 or 503), {} while the API does not answer."""
        try:
            return self.http.get("/readyz", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def serving(self) -> str | None:
        """The version this API instance serves by default, per /readyz (None if unknown)."""
        return (self.readyz().get("checks") or {}).get("adapter", {}).get("serving")

    def ask(self, question: str = "What is the capital of France?") -> str:
        """The adapter version a /v1/query answer is labelled with."""
        response = self.http.post("/v1/query", json={"query": question, "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.headers["X-Adapter-Version"] == response.json()["adapter_version"]
        return response.json()["adapter_version"]


def wait_ready(deployment: Deployment, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        deployment.check_alive()
        body = deployment.readyz()
        if body.get("status") == "ready":
            return body
        time.sleep(0.05)  # often: "ready" must never come before the active version is loaded
    raise AssertionError(f"API not ready after {timeout_s}s: {body}\n{deployment.logs()}")


def read_topic(bootstrap: str, topic: str, timeout_s: float = 15) -> list:
    """Every message currently on ``topic`` (polls until idle: tansu under-reports end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    from service.aggregator.topic_reader import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        batches = read_to_end(consumer, parts, idle_s=0.5, timeout_s=timeout_s)
        return [m for batch in batches for ms in batch.values() for m in ms]
    finally:
        consumer.close()


def latest_records(bootstrap: str, topic: str) -> dict:
    """Impression id -> its latest BehaviorRecord on ``topic`` (the aggregator re-emits a record on each change)."""
    from schemas.behavior import BehaviorRecord

    latest: dict[str, BehaviorRecord] = {}
    for m in read_topic(bootstrap, topic):
        r = BehaviorRecord.model_validate_json(m.value)
        if r.impression_id not in latest or r.updated_at >= latest[r.impression_id].updated_at:
            latest[r.impression_id] = r
    return latest


def counts_of(served) -> dict[str, float]:
    """The counts a simulated answer's viewers sent (rlhb.simulate's served answer), as a record holds them."""
    counts = {"view": served.views, "click": served.clicks, "like": served.likes, "dislike": served.dislikes}
    return {k: float(v) for k, v in counts.items() if v}
