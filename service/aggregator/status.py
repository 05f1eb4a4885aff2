"""What an aggregator member is doing, for people: Prometheus counters on ``RLHB_AGG_METRICS_PORT``
and a status in Redis every ``RLHB_AGG_STATUS_PERIOD_S`` (``core.process_status``; read by
``GET /admin/status`` and the dashboard).

Both are derived from ``Aggregator.stats`` and ``Aggregator.lag()`` on the main loop's timer,
so the hot path (the batch script) gains no work: counters move by the difference since the
last look.

Dedupe hits: feedback events of a batch that were neither counted nor refused. The batch
script does not say which of those were duplicates and which were parked until their
impression arrives, so events that wait are in this number until the impression comes
(then they are counted as ``drained``); with impressions ahead of their feedback, as the API
writes them, it is the duplicates.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.process_status import publish_status, serve_metrics, stop_reporting

log = logging.getLogger(__name__)

# Stats field -> (metric name, help)
COUNTERS = {
    "messages": ("rlhb_aggregator_messages", "Messages read from the impressions and feedback topics."),
    "events_counted": ("rlhb_aggregator_events_counted", "Feedback events counted (exactly once)."),
    "impressions": ("rlhb_aggregator_impressions", "Impressions stored."),
    "dead_letters": ("rlhb_aggregator_dead_letters", "Messages sent to the dead-letter topic."),
    "records_published": ("rlhb_aggregator_records_published", "Behavior records acknowledged by the broker."),
    "dedupe_hits": (
        "rlhb_aggregator_dedupe_hits",
        "Feedback events not counted because their id was already counted (plus, until their impression "
        "arrives, events waiting for it).",
    ),
}


class AggregatorStatus:
    def __init__(self, redis, prefix: str, period_s: float, metrics_port: int = 0):
        self.redis, self.prefix, self.period_s, self.metrics_port = redis, prefix, period_s, metrics_port
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.counters = {k: Counter(name, doc, registry=r) for k, (name, doc) in COUNTERS.items()}
        self.g_lag = Gauge("rlhb_aggregator_consumer_lag", "Messages waiting on this member's partitions.", registry=r)
        self.g_rate = Gauge("rlhb_aggregator_events_per_second", "Messages read per second, last period.", registry=r)
        self.g_parts = Gauge("rlhb_aggregator_partitions", "Partitions assigned to this member.", registry=r)
        self._seen = dict.fromkeys(COUNTERS, 0)
        self._rate_at, self._rate_messages = time.monotonic(), 0
        self._next = 0.0
        self._server = None
        self.last_error = ""

    def serve(self) -> None:
        self._server = serve_metrics(self.metrics_port, self.registry, "aggregator", log)

    def close(self) -> None:
        stop_reporting(self.redis, self.prefix, "aggregator", self._server, log)
        self._server = None

    def tick(self, agg, force: bool = False) -> bool:
        """Every period (or now with ``force``): counters, gauges, the Redis status. Never raises:
        status must not stop counting."""
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.period_s
        try:
            return self._tick(agg, now)
        except Exception as e:  # noqa: BLE001 - Redis or the broker away: reported as stale/down
            self.last_error = f"{type(e).__name__}: {e}"[:300]
            log.debug("aggregator status not published: %s", e)
            return False

    def _tick(self, agg, now: float) -> bool:
        stats = self.totals(agg)
        for key, counter in self.counters.items():
            delta = stats[key] - self._seen[key]
            if delta > 0:
                counter.inc(delta)
            self._seen[key] = stats[key]
        elapsed = now - self._rate_at
        rate = (stats["messages"] - self._rate_messages) / elapsed if elapsed > 0 else 0.0
        self._rate_at, self._rate_messages = now, stats["messages"]
        lag = agg.lag() if agg.consumer is not None else 0
        partitions = len(agg.consumer.assignment()) if agg.consumer is not None else 0
        self.g_lag.set(lag)
        self.g_rate.set(rate)
        self.g_parts.set(partitions)
        body = {
            "state": "running",
            **stats,
            "events_per_s": round(rate, 2),
            "lag": lag,
            "partitions": partitions,
            "last_error": self.last_error,
        }
        publish_status(self.redis, self.prefix, "aggregator", body, self.period_s)
        return True

    @staticmethod
    def totals(agg) -> dict[str, Any]:
        s = agg.stats
        return {
            "messages": s.messages,
            "events_counted": s.events_counted,
            "impressions": s.impressions,
            "dead_letters": s.dead_letters,
            "records_published": s.records_published,
            "dedupe_hits": int(s.extra.get("dedupe_hits", 0)),
        }
