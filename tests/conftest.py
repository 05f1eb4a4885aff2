"""Fixtures shared by the whole suite: real infrastructure, real (tiny or bundled) models.

- ``kafka_bootstrap``: one embedded tansu broker for the test session (topics are made
  per test with unique names via ``unique_topics``, so tests never see each other's data).
- ``redis_url`` / ``redis_prefix``: the machine's Redis (or an embedded valkey when none
  answers); every test gets its own key prefix and its keys are deleted afterwards,
  because the machine's Redis is shared.
- ``cluster_url`` / ``cluster_client``: a real local Redis Cluster of three valkey primaries
  (tests/helpers/redis_cluster.py), started once per session when a test asks for it; each
  test takes its own hash-tagged prefix (``tagged_prefix``).
- ``tiny_model_dir``: a randomly initialised 2-layer Llama with the SmolLM2 tokenizer,
  saved as an HF folder (fast; used by unit tests).
- ``smollm2_dir``: the real SmolLM2-135M-Instruct folder (prepared once, ~40 s).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from core.model_prep import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    from core.infra.broker import EmbeddedBroker, check_kafka

    with EmbeddedBroker() as broker:
        check_kafka(broker.bootstrap)
        yield broker.bootstrap


@pytest.fixture
def unique_topics(kafka_bootstrap):
    """A dict of fresh topic names (impressions, feedback, records, dead_letter), 4 partitions."""
    from core.infra.broker import ensure_topics

    tag = uuid.uuid4().hex[:8]
    names = {k: f"t-{tag}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    ensure_topics(kafka_bootstrap, list(names.values()), partitions=4)
    return names


@pytest.fixture(scope="session")
def redis_url():
    from core.infra.redis_server import resolve_redis_url

    url, server = resolve_redis_url(os.environ.get("RLHB_TEST_REDIS_URL", ""))
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def redis_prefix(redis_url):
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_url, redis_prefix):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory):
    """Three cluster-enabled valkey primaries sharing the 16384 slots; a redis+cluster:// URL."""
    from tests.helpers.redis_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def cluster_client(cluster_url):
    """A ``RedisCluster`` client (decode_responses=True) built from ``cluster_url`` as the processes build theirs."""
    from redis.cluster import RedisCluster

    from core.infra.redis_url import redis_from_url

    client = redis_from_url(cluster_url, decode_responses=True, socket_timeout=5, max_connections=8)
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from core.model_prep import prepare_model

    return prepare_model(log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), smollm2_dir)
