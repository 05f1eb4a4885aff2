"""Shared by the trainer-loop tests (and usable by end-to-end tests): the environment of a
trainer process and a producer of behavior records."""

from __future__ import annotations

import time
from pathlib import Path

from core.settings import nested_env

# A tiny RLHB round: one iteration, 4-token answers, D on the base LM (no MiniLM load).
TINY_RLHB = {
    "batch_size": 4, "rollouts_per_prompt": 2, "max_new_tokens": 4, "d_batch_size": 4, "heldout_max": 4,
    "lora_r": 4, "d_lora_r": 4, "value_head_hidden": 8, "discriminator": "lm", "threads": 1,
}  # fmt: skip
TINY_GATE = {"max_prompts": 2, "max_new_tokens": 4, "max_records": 8, "threads": 1}


def trainer_env(
    *, bootstrap: str, redis_url: str, prefix: str, topics: dict, adapter_dir: Path, state_dir: Path,
    model_dir: Path, records_per_round: int, **extra: str,
) -> dict[str, str]:  # fmt: skip
    """RLHB_* variables for a trainer on the test's broker, Redis prefix, topics and tiny model."""
    env = {
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RLHB_REDIS_URL": redis_url,
        "RLHB_REDIS_PREFIX": prefix,
        "RLHB_TOPIC_RECORDS": topics["records"],
        "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
        "RLHB_TOPIC_FEEDBACK": topics["feedback"],
        "RLHB_TOPIC_DEAD_LETTER": topics["dead_letter"],
        "RLHB_ADAPTER_DIR": str(adapter_dir),
        "RLHB_STATE_DIR": str(state_dir),
        "RLHB_MODEL_PATH": str(model_dir),
        "RLHB_TRAINER_GROUP_ID": f"trainer-{prefix}",
        "RLHB_TRAINER_ALGORITHM": "rlhb",
        "RLHB_TRAINER_RECORDS_PER_ROUND": str(records_per_round),
        "RLHB_TRAINER_STEPS_PER_ROUND": "1",
        "RLHB_TRAINER_MIN_RECORDS": "8",
        **nested_env("RLHB_TRAINER_ALGO", TINY_RLHB),
        **nested_env("RLHB_TRAINER_GATE", {**TINY_GATE, "reward_tolerance": 0.5}),
        "RLHB_TRAINER_MAX_POLL_INTERVAL_MS": "3000",
        "RLHB_TRAINER_SESSION_TIMEOUT_MS": "3000",
        "RLHB_TRAINER_POLL_TIMEOUT_MS": "200",
    }
    env.update(extra)
    return env


def produce_records(bootstrap: str, topic: str, records) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for r in records:
        producer.send(topic, key=r.impression_id.encode(), value=r.model_dump_json().encode())
    producer.flush(10)
    producer.close(5)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
