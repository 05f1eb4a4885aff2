"""Registry pointer moves on SmolLM2-sized adapters: how long promote (validate = sha256 of
the weights, then manifest + Redis) and rollback take, and when a watcher polling Redis
sees the move. Prints one JSON line per measurement.

    python bench/bench_registry.py [--repeats 10] [--poll-s 0.25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers.adapter_factory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=0.25, help="Watcher poll period (the API's adapter_poll_s).")
    args = parser.parse_args()

    import redis

    from core.infra.redis_server import resolve_redis_url
    from core.model_prep import prepare_model
    from core.registry import Registry
    from tests.helpers.adapter_factory import write_test_adapter

    url, server = resolve_redis_url("")
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"rlhbbench:{uuid.uuid4().hex[:8]}:"
    model = prepare_model(log=lambda *_: None)
    root = Path(tempfile.mkdtemp()) / "adapters"
    registry = Registry(root, client, prefix)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for i, name in enumerate(("a", "b")):
        registry.register(write_test_adapter(model, root, name, seed=i, scale=0.01, target_modules=targets))
    size_mb = (root / "a" / "adapter_model.safetensors").stat().st_size / 1e6

    seen: dict[int, float] = {}
    stop = threading.Event()

    def watcher() -> None:  # what the API's hot-swap watcher does: poll the pointer
        last = registry.active_seq()
        while not stop.is_set():
            seq = registry.active_seq()
            if seq != last:
                seen[seq] = time.perf_counter()
                last = seq
            time.sleep(args.poll_s)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    results = {"promote_s": [], "rollback_s": [], "promote_seen_s": [], "rollback_seen_s": []}
    registry.promote("a")
    for _ in range(args.repeats):
        for op in ("promote", "rollback"):
            t0 = time.perf_counter()
            registry.promote("b") if op == "promote" else registry.rollback()
            t1 = time.perf_counter()
            seq = registry.active_seq()
            while seq not in seen:
                time.sleep(0.005)
            results[f"{op}_s"].append(t1 - t0)
            results[f"{op}_seen_s"].append(seen[seq] - t0)
    stop.set()
    for key, values in results.items():
        print(json.dumps({
            "bench": "registry", "metric": f"{key}_p50", "value": round(statistics.median(values), 4),
            "max": round(max(values), 4), "n": len(values), "adapter_mb": round(size_mb, 1), "poll_s": args.poll_s,
        }))  # fmt: skip
    worst = max(results["rollback_seen_s"])
    print(
        json.dumps(
            {
                "bench": "registry",
                "metric": "summary",
                "rollback_seen_max_s": round(worst, 4),
                "target_s": 1.0,
                "ratio_to_target": round(worst / 1.0, 3),
            }
        )
    )
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
