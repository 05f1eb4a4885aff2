"""Process-wide state of the API, built once in the app's lifespan and reached by routes
through ``Annotated`` dependencies (service.api.deps)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.settings import ApiSettings
from service.api.impression_ids import ImpressionSigner


@dataclass
class AppState:
    settings: ApiSettings
    signer: ImpressionSigner
    redis: Any  # redis.Redis (decode_responses=True)
    producers: Any  # service.api.producers.LazyProducer: the feedback producer (acks=all), rebuilt on demand
    bootstrap: str
    redis_url: str
    metrics: Any = None
    """service.api.metrics.ApiMetrics of this app."""
    backend: Any = None
    """service.api.backends.base.Backend (None when serve_model is off)."""
    backend_error: str = ""
    """Why the backend failed to start, if it did (shown by /readyz)."""
    registry: Any = None
    """core.registry.Registry: adapter versions and the active pointer."""
    watcher: Any = None
    """service.api.hot_swap.AdapterWatcher: the version served by default."""
    impressions: Any = None
    """service.api.outbox.ImpressionLog."""
    default_behavior: str = ""
    """The most preferred behavior sentence, used when a request names none."""
    feedback_buckets: Any = None
    """service.api.feedback_guard.TokenBuckets: the per-client feedback rate limit."""
    started_at: float = field(default_factory=time.time)
