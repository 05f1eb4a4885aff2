"""Prometheus metrics of one API instance, on its own CollectorRegistry (so a test process
can build several apps without "duplicated timeseries" errors). Served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_latency = Histogram(
            "rlhb_request_latency_seconds",
            "HTTP request latency (whole stream for SSE).",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "rlhb_generated_tokens_total",
            "Tokens generated, by the adapter version that produced them.",
            ["adapter_version"],
            registry=r,
        )
        self.generations = Counter(
            "rlhb_generations_total",
            "Answers produced, by endpoint and finish reason.",
            ["endpoint", "finish_reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "rlhb_batch_size",
            "Requests per generate call (dynamic batching).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.active_adapter = Info(
            "rlhb_active_adapter", "Adapter version this instance serves by default.", registry=r
        )
        self.active_adapter_id = Gauge("rlhb_active_adapter_id", "Int id of the served version (0 = base).", registry=r)
        self.adapter_swaps = Counter("rlhb_adapter_swaps_total", "Hot-swaps completed.", registry=r)
        self.adapter_load_failures = Counter(
            "rlhb_adapter_load_failures_total",
            "Adapter versions that failed to load (the old one kept serving).",
            registry=r,
        )
        self.impression_log_failures = Counter(
            "rlhb_impression_log_failures_total",
            "Impressions the broker did not take at first (they wait in the local outbox).",
            registry=r,
        )
        self.impressions_logged = Counter(
            "rlhb_impressions_logged_total", "Impressions acknowledged by the broker.", registry=r
        )
        self.outbox_pending = Gauge("rlhb_outbox_pending", "Impressions waiting in the local outbox.", registry=r)
        self.set_active("base", 0)

    def set_active(self, name: str, version_id: int) -> None:
        self.active_adapter.info({"version": name})
        self.active_adapter_id.set(version_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)
