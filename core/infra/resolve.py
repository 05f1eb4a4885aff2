"""One call every process makes at start-up: where are the broker and Redis?

Order for the broker: the configured bootstrap servers (must answer, else a clear
error); else an embedded broker already started by `rlhb infra up` / `rlhb up` (its
address is in ``<state_dir>/infra.json``); else start one now, owned by this process.
Redis follows core.infra.redis_server.resolve_redis_url, also consulting infra.json; the owner
of a deployment (`rlhb up`, `rlhb infra up`) passes ``redis_dir`` (``redis_data_dir``) so an
embedded Redis of its own keeps an append-only file there and survives restarts.
Topics are created (idempotently) on embedded brokers; on a real cluster only when
they are missing, with the configured partition count.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.infra.broker import EmbeddedBroker, check_kafka, ensure_topics
from core.infra.kafka_security import kafka_client_options
from core.infra.redis_server import EmbeddedRedis, redis_answers, resolve_redis_url
from core.settings import CommonSettings


@dataclass
class Infra:
    bootstrap: str
    redis_url: str
    owned: list = field(default_factory=list)
    kafka_options: dict = field(default_factory=dict)
    """Security arguments for every Kafka client of this process (kafka_client_options)."""

    def stop(self) -> None:
        for server in reversed(self.owned):
            server.stop()
        self.owned.clear()

    def env(self) -> dict[str, str]:
        """Variables that point child processes at this infrastructure."""
        return {"RLHB_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "RLHB_REDIS_URL": self.redis_url}


def state_file(settings: CommonSettings) -> Path:
    return Path(settings.state_dir) / "infra.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (OSError, TypeError):
        return False


def read_running_infra(settings: CommonSettings) -> dict | None:
    path = state_file(settings)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if _pid_alive(state.get("owner_pid", -1)) else None


def write_infra_state(settings: CommonSettings, infra: Infra) -> Path:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": infra.bootstrap, "redis_url": infra.redis_url, "owner_pid": os.getpid()}))
    os.replace(tmp, path)
    return path


def topics_of(settings: CommonSettings) -> list[str]:
    return [settings.topic_impressions, settings.topic_feedback, settings.topic_records, settings.topic_dead_letter]


def redis_data_dir(settings: CommonSettings) -> Path:
    """Where the embedded Redis of `rlhb up` keeps its append-only file."""
    return Path(settings.state_dir) / "redis"


def resolve_infra(settings: CommonSettings, create_topics: bool = True, redis_dir: Path | None = None) -> Infra:
    running = read_running_infra(settings)
    owned: list = []
    # PLAINTEXT unless configured; the settings allow TLS/SASL only with configured servers.
    options = kafka_client_options(settings)
    if settings.kafka_bootstrap_servers:
        bootstrap = settings.kafka_bootstrap_servers
        check_kafka(bootstrap, options=options)
    elif running:
        bootstrap = running["bootstrap"]
        check_kafka(bootstrap, timeout_s=5)
    else:
        broker = EmbeddedBroker().start()
        owned.append(broker)
        bootstrap = broker.bootstrap
        check_kafka(bootstrap)
    if create_topics:
        ensure_topics(bootstrap, topics_of(settings), settings.topic_partitions, options=options)

    if not settings.redis_url and running and redis_answers(running["redis_url"]):
        redis_url = running["redis_url"]
    else:
        redis_url, server = resolve_redis_url(settings.redis_url, data_dir=redis_dir)
        if isinstance(server, EmbeddedRedis):
            owned.append(server)
    return Infra(bootstrap=bootstrap, redis_url=redis_url, owned=owned, kafka_options=options)
