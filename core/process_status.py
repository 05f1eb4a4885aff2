"""The status every process publishes to Redis and the API reads back (``GET /admin/status``,
the dashboard). One module, because the writers (aggregator, trainer) and the reader (API) may
not import each other, yet must agree on the keys and on what "down" means.

Keys (``P`` = redis_prefix):

    P status:<process>        hash  member ("host-pid") -> JSON status, whole hash with a TTL of
                                    STALE_PERIODS x the period: a dead deployment expires
    P train:curve:<round>     list  one JSON point per training iteration (bounded, newest last)

A hash per process, not one key per member, so the reader never SCANs the keyspace (the
aggregator keeps millions of keys) and several aggregator members show side by side. A member
that stopped writing is reported ``stale`` once its ``updated_at`` is older than the TTL,
even while another member keeps the hash alive.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any

STALE_PERIODS = 3
CURVE_POINTS_KEPT = 500
CURVE_ROUNDS_KEPT = 20


def status_key(prefix: str, process: str) -> str:
    return f"{prefix}status:{process}"


def curve_key(prefix: str, round_no: int) -> str:
    return f"{prefix}train:curve:{int(round_no)}"


def member_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def ttl_for(period_s: float) -> int:
    return max(2, math.ceil(STALE_PERIODS * period_s))


def publish_status(redis, prefix: str, process: str, status: dict[str, Any], period_s: float, member: str = "") -> None:
    """Write this member's status and renew the hash's TTL (one round trip, one transaction)."""
    body = {**status, "member": member or member_name(), "updated_at": time.time(), "period_s": period_s}
    key = status_key(prefix, process)
    pipe = redis.pipeline(transaction=True)  # explicit: a Cluster client's pipeline() is not a transaction
    pipe.hset(key, body["member"], json.dumps(body, default=str))
    pipe.expire(key, ttl_for(period_s))
    pipe.execute()


def clear_status(redis, prefix: str, process: str, member: str = "") -> None:
    """A clean stop removes the member at once instead of waiting for it to go stale."""
    redis.hdel(status_key(prefix, process), member or member_name())


def stop_reporting(redis, prefix: str, process: str, server, log) -> None:
    """A process's clean stop: its status entry removed (best effort: if Redis is away the entry
    goes stale on its own) and its /metrics server (``serve_metrics``'s, or None) shut."""
    try:
        clear_status(redis, prefix, process)
    except Exception as e:  # noqa: BLE001 - stopping anyway
        log.debug("%s status not cleared: %s", process, e)
    if server is not None:
        server.shutdown()
        server.server_close()


def read_status(redis, prefix: str, process: str, now: float | None = None) -> dict[str, Any]:
    """``{"state": "up" | "down", "members": [...]}``; each member gains ``stale`` and ``age_s``.
    Down: no member wrote within its TTL (or none ever did)."""
    now = time.time() if now is None else now
    members = []
    for raw in redis.hgetall(status_key(prefix, process)).values():
        try:
            body = json.loads(raw)
            age = now - float(body.get("updated_at", 0))
            period = float(body.get("period_s", 1.0))
        except (ValueError, TypeError, AttributeError):
            continue  # a damaged entry must not take the status page down
        body["age_s"] = round(max(0.0, age), 3)
        body["stale"] = age > ttl_for(period)
        members.append(body)
    members.sort(key=lambda m: str(m.get("member", "")))
    live = [m for m in members if not m["stale"]]
    return {"state": "up" if live else "down", "members": members}


def push_curve_points(redis, prefix: str, round_no: int, points: list[dict[str, Any]]) -> None:
    """Append iterations to a round's curve; keep the last CURVE_POINTS_KEPT points and the
    curves of the last CURVE_ROUNDS_KEPT rounds (older ones are deleted here, by number)."""
    if not points:
        return
    key = curve_key(prefix, round_no)
    pipe = redis.pipeline(transaction=True)  # explicit: a Cluster client's pipeline() is not a transaction
    pipe.rpush(key, *(json.dumps(p) for p in points))
    pipe.ltrim(key, -CURVE_POINTS_KEPT, -1)
    if round_no > CURVE_ROUNDS_KEPT:
        pipe.delete(curve_key(prefix, round_no - CURVE_ROUNDS_KEPT))
    pipe.execute()


def read_curve(redis, prefix: str, round_no: int) -> list[dict[str, Any]]:
    return [json.loads(r) for r in redis.lrange(curve_key(prefix, round_no), 0, -1)]


def wilson_interval(successes: float, trials: float, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a rate (sensible at 0, 1 and few trials, unlike the normal
    one); (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, successes / trials))
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def serve_metrics(port: int, registry, what: str, log) -> Any:
    """Serve ``registry`` at ``http://0.0.0.0:port/metrics`` in a daemon thread; the server (call
    ``shutdown()`` to stop it) or None when ``port`` is 0 or taken. A taken port only loses the
    metrics, never the process: several members on one host would otherwise crash-loop."""
    if not port:
        return None
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, registry=registry)
    except OSError as e:
        log.warning("%s metrics not served on port %d (%s); set another port or 0 to silence this", what, port, e)
        return None
    log.info("%s metrics on http://0.0.0.0:%d/metrics", what, port)
    return server
