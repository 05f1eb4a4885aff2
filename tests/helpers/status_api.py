"""A real admin-only API (uvicorn, real broker and Redis, no generation model: the status routes
and the dashboard need none) with a registry of real test adapters, plus writers that put
aggregator and trainer status, rounds and curves into Redis the way those processes do
(``core.process_status`` and ``trainer.status.TrainerStatus``, not hand-made JSON)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.serving import LiveServer, new_topics, serving_settings


@dataclass
class StatusApi:
    url: str
    settings: object
    registry: object
    redis: object
    prefix: str
    server: object


def start_status_api(root: Path, bootstrap: str, redis_url: str, prefix: str, model_dir: Path, versions=()):
    """Start the API; register ``versions`` and promote them in order (so rollback has a target)."""
    import redis

    from core.registry import Registry
    from service.api.app import create_app

    settings = serving_settings(root, bootstrap, redis_url, prefix, new_topics(bootstrap), model_dir, serve_model=False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = Registry(settings.adapter_dir, client, prefix)
    parent = None
    for i, name in enumerate(versions):  # each trained on the one before, as the trainer chains them
        registry.register(write_test_adapter(model_dir, registry.root, name, seed=i + 1, parent=parent))
        registry.promote(name)
        parent = name
    server = LiveServer(create_app(settings))
    server.thread.start()
    deadline = time.monotonic() + 60
    while True:  # no model to wait for: up once /healthz answers
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not start within 60 s"
        time.sleep(0.1)
    return StatusApi(server.url, settings, registry, client, prefix, server)


def write_round(redis, prefix: str, **fields) -> dict:
    """A finished round as trainer.loop._finish_round stores it."""
    now = time.time()
    result = {"outcome": "published", "reason": "passed", "started_at": now - 100, "finished_at": now, **fields}
    redis.rpush(f"{prefix}train:rounds", json.dumps(result))
    return result


def train_curve(status, round_no: int, path: Path, steps: int, seed: float = 0.0) -> None:
    """Drive a real TrainerStatus through a round whose metrics file has ``steps`` iterations."""
    status.begin_round(round_no, steps, "admin request")
    status.watch(path)
    with path.open("w") as f:
        for i in range(steps):
            row = {
                "iteration": i,
                "d_reward": seed + 0.1 * i,
                "kl": 0.01 * i,
                "d_heldout_acc": 0.5 + 0.03 * i,
                "clipfrac": 0.2 / (i + 1),
                "seconds": 0.5,
            }
            f.write(json.dumps(row) + "\n")
    status.poll_curve()
