"""One lane per algorithm: its topics, Redis prefix, adapter folder and three processes
(``Lane``, ``make_lane``), the traffic it serves, and the waits on it (API ready, records in
the trainer's buffer, a finished round, a version served); ``copy_records`` replays the first
lane's logged history into another lane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.infra.redis_url import is_cluster_url
from core.progress import progress_bar
from core.settings import nested_env
from rlhb.demo.config import DemoConfig, lane_algorithm


@dataclass
class Lane:
    """One algorithm's deployment: topics, Redis prefix, adapter folder, three processes."""

    algorithm: str
    root: Path
    prefix: str
    topics: dict[str, str]
    port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, name: str) -> list[str]:
        """``rlhb <name>`` (api, aggregator, trainer): settings come from the lane's env."""
        return [sys.executable, "-m", "rlhb.cli", name]

    def start(self, names=("api", "aggregator", "trainer")) -> None:
        for name in names:
            log = (self.root / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                self.command(name),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`rlhb {name}` exited with code {proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


def lane_prefix(run_id: str, algorithm: str, redis_url: str) -> str:
    """A lane's ``RLHB_REDIS_PREFIX`` (its keys, deleted when the demo ends: ``delete_lane_keys``).
    On Redis Cluster the name is the prefix's hash tag, so each lane's keys share one slot
    (core.settings refuses a cluster URL with an untagged prefix)."""
    name = f"rlhbdemo:{run_id}:{algorithm}"
    return "{" + name + "}:" if is_cluster_url(redis_url) else name + ":"


def delete_lane_keys(redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (on a Cluster client ``scan_iter`` walks every primary);
    how many were deleted."""
    keys = list(redis.scan_iter(match=prefix + "*", count=1000))
    return int(redis.delete(*keys)) if keys else 0


def make_lane(cfg: DemoConfig, run_id: str, algorithm: str, infra, model_path: str) -> Lane:
    from core.infra.broker import ensure_topics
    from core.infra.ports import free_port

    root = cfg.out_dir / f"lane-{algorithm}"
    root.mkdir(parents=True, exist_ok=True)
    tag = f"demo-{run_id}-{algorithm}"
    topics = {k: f"{tag}-{k}" for k in ("impressions", "feedback", "records", "dead-letter")}
    ensure_topics(infra.bootstrap, list(topics.values()), partitions=2)
    prefix = lane_prefix(run_id, algorithm, infra.redis_url)
    port = free_port()
    algo_cfg = cfg.lane_overrides(algorithm)
    algo_cfg.setdefault("max_new_tokens", cfg.max_tokens)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(cfg.threads),
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "RLHB_REDIS_URL": infra.redis_url,
        "RLHB_REDIS_PREFIX": prefix,
        "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
        "RLHB_TOPIC_FEEDBACK": topics["feedback"],
        "RLHB_TOPIC_RECORDS": topics["records"],
        "RLHB_TOPIC_DEAD_LETTER": topics["dead-letter"],
        "RLHB_TOPIC_PARTITIONS": "2",
        "RLHB_MODEL_PATH": model_path,
        "RLHB_ADAPTER_DIR": str(root / "adapters"),
        "RLHB_STATE_DIR": str(root / "state"),
        "RLHB_DEV_MODE": "1",
        "RLHB_API_HOST": "127.0.0.1",
        "RLHB_API_PORT": str(port),
        "RLHB_API_MAX_NEW_TOKENS": str(cfg.max_tokens),
        "RLHB_API_MAX_BATCH_SIZE": str(cfg.concurrency),
        "RLHB_API_TORCH_THREADS": str(cfg.threads),
        "RLHB_AGG_GROUP_ID": f"{tag}-aggregator",
        "RLHB_TRAINER_GROUP_ID": f"{tag}-trainer",
        "RLHB_TRAINER_ALGORITHM": lane_algorithm(algorithm),
        "RLHB_TRAINER_RECORDS_PER_ROUND": str(10**9),  # rounds only when the demo asks
        "RLHB_TRAINER_STEPS_PER_ROUND": str(cfg.steps),
        **nested_env("RLHB_TRAINER_ALGO", algo_cfg),  # one variable per field: RLHB_TRAINER_ALGO__BATCH_SIZE=8
        "RLHB_TRAINER_SEED": str(cfg.seed),
        "RLHB_TRAINER_MIN_RECORDS": "8",
    }
    env.update(nested_env("RLHB_TRAINER_GATE", cfg.gate_overrides(algorithm, os.environ)))
    if cfg.ab_share > 0:
        env["RLHB_TRAINER_AB_SHARE"] = str(cfg.ab_share)
        env["RLHB_TRAINER_AB_MIN_VIEWS"] = str(cfg.ab_min_views())
        env["RLHB_TRAINER_GUARDRAIL_MIN_VIEWS"] = str(min(100, cfg.ab_min_views()))
    for key in ("RLHB_API_ADMIN_TOKEN", "RLHB_API_IMPRESSION_SECRET"):
        env.pop(key, None)  # dev mode: the demo's own throwaway deployment
    return Lane(algorithm=algorithm, root=root, prefix=prefix, topics=topics, port=port, env=env)


def wait_ready(lane: Lane, timeout_s: float = 600.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lane.check_alive()
        try:
            if httpx.get(f"{lane.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API of lane {lane.algorithm} was not ready after {timeout_s:.0f}s; see {lane.root}")


def trainer_status(redis, lane: Lane) -> dict:
    from trainer.loop import read_status

    return read_status(redis, lane.prefix)


def wait_records(redis, lane: Lane, want: int, say, timeout_s: float = 900.0) -> int:
    """Wait until the trainer's buffer holds ``want`` impressions' records (the aggregator caught up)."""
    deadline, last = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        lane.check_alive()
        have = int(trainer_status(redis, lane).get("buffer", 0))
        if have >= want:
            return have
        if have != last:
            last = have
        time.sleep(1.0)
    say(f"warning: only {last} of {want} records reached the trainer after {timeout_s:.0f}s; continuing")
    return max(last, 0)


def copy_records(bootstrap: str, source: str, target: str, version: str = "base", idle_s: float = 3.0) -> int:
    """Replay the records of answers served by ``version`` from ``source`` into ``target``, in order.

    Reads until the source has been idle for ``idle_s`` (the embedded broker's end offsets count
    record batches, not records, so they cannot bound the copy)."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        source, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    copied, last = 0, time.monotonic()
    deadline = last + 600
    first_wait_s = 60.0  # joining and the first fetch can take longer than idle_s on a loaded machine
    while (time.monotonic() - last < idle_s or (copied == 0 and time.monotonic() - last < first_wait_s)) and (
        time.monotonic() < deadline
    ):
        for messages in consumer.poll(timeout_ms=500).values():
            for m in messages:
                last = time.monotonic()
                try:
                    served_by = json.loads(m.value).get("adapter_version")
                except ValueError:
                    continue
                if served_by == version:
                    producer.send(target, key=m.key, value=m.value)
                    copied += 1
    producer.flush(60)
    producer.close(10)
    consumer.close()
    return copied


def traffic(
    cfg: DemoConfig, lane: Lane, questions, n: int, start_index: int, say, label: str, invert: bool = False
) -> list:
    """``n`` answers from the lane's API with simulated users' feedback (``invert``: poisoned)."""
    from rlhb.simulate.driver import SimulationConfig, question_stream, run_simulation

    sim = SimulationConfig(
        api_url=lane.url,
        users=cfg.users,
        viewers_mean=cfg.viewers_mean,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        concurrency=cfg.concurrency,
        seed=cfg.seed,
        run_tag=f"{lane.algorithm}-{label}",
        invert_feedback=invert,
    )
    qs = list(question_stream(questions, n, cfg.seed + start_index))
    counter = {"n": 0, "liked": 0}
    step = max(1, n // 10)
    bar = progress_bar(total=n, enabled=cfg.progress, desc=f"{lane.algorithm} {label}", unit="answer")

    def progress(s) -> None:
        bar.update()
        counter["n"] += 1
        counter["liked"] += s.asker_liked
        if counter["n"] % step == 0:
            say(f"  {label}: {counter['n']}/{n} answers, like rate so far {counter['liked'] / counter['n']:.3f}")

    try:
        return run_simulation(sim, qs, start_index=start_index, on_served=progress)
    finally:
        bar.close()


def wait_round(redis, lane: Lane, rounds_before: int, cfg: DemoConfig, say) -> dict:
    """Wait for the trainer's next finished round, printing its training progress."""
    from trainer.loop import read_rounds

    deadline = time.monotonic() + cfg.round_timeout_s
    printed = 0
    metrics_dir = lane.root / "state" / "trainer-metrics"
    while time.monotonic() < deadline:
        lane.check_alive()
        rounds = read_rounds(redis, lane.prefix)
        if len(rounds) > rounds_before:
            return rounds[-1]
        files = sorted(metrics_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if metrics_dir.exists() else []
        if files:
            rows = [json.loads(x) for x in files[-1].read_text().splitlines() if x.strip()]
            for row in rows[printed:] if len(rows) > printed else []:
                keys = ("d_reward", "mean_score", "kl", "d_heldout_acc", "seconds")
                shown = ", ".join(f"{k}={row[k]:.3g}" for k in keys if isinstance(row.get(k), int | float))
                say(f"  {lane.algorithm} iteration {row.get('iteration', '?')}: {shown}")
            printed = len(rows)
        time.sleep(2.0)
    raise TimeoutError(f"round did not finish within {cfg.round_timeout_s:.0f}s; see {lane.root}/trainer.log")


def wait_serving(lane: Lane, version: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{lane.url}/admin/checkpoints", timeout=10).json().get("serving") == version:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API did not start serving {version} within {timeout_s:.0f}s")


def wait_trial_decision(redis, lane: Lane, version: str, timeout_s: float = 60.0) -> dict | None:
    """The trainer's A/B decision on ``version`` (its status's ``trial_decisions``), or None if
    it has not decided within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        lane.check_alive()
        for d in trainer_status(redis, lane).get("trial_decisions", []):
            if d.get("candidate") == version:
                return d
        if time.monotonic() >= deadline:
            return None
        time.sleep(1.0)


def post_admin(lane: Lane, path: str, body: dict) -> dict:
    import httpx

    r = httpx.post(f"{lane.url}{path}", json=body, timeout=30)
    if r.status_code >= 400:
        raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
    return r.json()


def trainer_rounds(redis, lane: Lane) -> list[dict]:
    from trainer.loop import read_rounds

    return read_rounds(redis, lane.prefix)


def trainer_metrics(lane: Lane, version: str) -> list[dict]:
    path = lane.root / "state" / "trainer-metrics" / f"{version}.jsonl"
    if not version or not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
