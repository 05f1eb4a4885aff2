"""Serving fixtures: ``serving`` is ONE real API (uvicorn on a loopback port, tiny model, real
broker, real Redis, a registry with three test adapter versions) shared by the serving tests,
because loading a model per test would dominate the suite's time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.serving import LiveServer, new_topics, register_test_versions, serving_settings


@dataclass
class Serving:
    url: str
    settings: object
    registry: object
    versions: list
    topics: dict
    redis: object
    app: object


@pytest.fixture(scope="session")
def serving(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path_factory):
    import redis

    from core.registry import Registry
    from service.api.app import create_app

    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    topics = new_topics(kafka_bootstrap)
    root = Path(tmp_path_factory.mktemp("serving"))
    settings = serving_settings(root, kafka_bootstrap, redis_url, prefix, topics, tiny_model_dir)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = Registry(settings.adapter_dir, client, prefix)
    versions = register_test_versions(registry, tiny_model_dir, ["v1", "v2", "v3"])
    app = create_app(settings)
    server = LiveServer(app).start()
    yield Serving(server.url, settings, registry, versions, topics, client, app)
    server.stop()
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
