"""Process-wide state of the API, built once in the app's lifespan and reached by routes
through ``Annotated`` dependencies (service.api.deps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhb.settings import ApiSettings
from service.api.impression_ids import ImpressionSigner


@dataclass
class AppState:
    settings: ApiSettings
    signer: ImpressionSigner
    redis: Any  # redis.Redis (decode_responses=True)
    producer: Any  # kafka.KafkaProducer, acks="all"
    bootstrap: str
    redis_url: str
    extras: dict[str, Any] = field(default_factory=dict)
    """Components added by features (backend, registry, outbox, adapter watcher...)."""
