"""Serving: /v1/query latency vs raw in-process generate, batching throughput, hot-swap time.

One run, one model (SmolLM2-135M-Instruct unless --model), the same prompts, greedy decoding:

1. overhead at concurrency 1: for each prompt, alternately, (a) a raw ``model.generate`` in
   this process on the exact prompt the API builds (core.prompts.render_prompt + the
   default behavior sentence) and (b) ``POST /v1/query`` to the API (``rlhb api`` in a
   subprocess, so the client never competes with it for the GIL). Same tokens generated
   (the texts are checked equal). Reports p50/p99 of both and the p50 ratio (target <= 1.05).
   The API reuses the system prompt's keys/values (prefix cache), which the raw peer does
   not; ``--no-prefix-cache`` measures the serving stack's own overhead alone.
2. throughput: requests/s with 1 client vs 8 concurrent clients (target >= 2x, from
   iteration-level batching).
3. hot-swap: 2 clients send short requests (4 tokens) continuously; the registry promotes a
   new adapter version (as the trainer does: pointer in Redis, no admin call); the time until
   the first response produced by that version (target <= 1 s), which includes finishing
   the batch in flight and generating the new answer; ``switched_s`` is when /readyz first
   reports the new version. Repeated with rollbacks.

Prints JSON lines (``{"bench": "serving", "metric": ..., "value": ...}``), the last one a
summary against the targets. The machines are shared: also reports the load average.

    .venv/bin/python bench/bench_serving.py [--tokens 32] [--prompts 6] [--swaps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = "serving"
QUESTIONS = [
    "What is the capital of France?",
    "How do plants make their food?",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "What is a good name for a pet turtle?",
    "Explain what a database index is.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hiking trip?",
]
ADMIN = "bench-admin-token-" + uuid.uuid4().hex
SECRET = "bench-impression-secret-" + uuid.uuid4().hex


def emit(metric: str, value, **extra) -> None:
    print(json.dumps({"bench": BENCH, "metric": metric, "value": value, **extra}), flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def write_adapter(model_dir: Path, root: Path, name: str, seed: int) -> Path:
    """A LoRA (r=8 on q/v) with small random B, in the registry layout (metadata.json with sha256)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.checkpoint_format import sha256_file, weights_file

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.02)
    folder = root / name
    model.save_pretrained(folder)
    meta = {"name": name, "algorithm": "bench", "sha256": sha256_file(weights_file(folder))}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


class RawModel:
    """The peer: plain transformers generate on the same prompts, in this process."""

    def __init__(self, model_dir: Path):
        import torch

        from core.model_loading import load_causal_lm

        self.torch = torch
        # one prompt at a time: the tokenizer is used as it comes (no padding side, no pad token)
        self.model, self.tok = load_causal_lm(model_dir, dtype="float32", padding_side=None, pad_with_eos=False)

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[float, str]:
        enc = self.tok(prompt, return_tensors="pt", add_special_tokens=False)
        started = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
            )
        elapsed = time.perf_counter() - started
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        cut = next((i for i, t in enumerate(new) if t == self.tok.eos_token_id), len(new))
        return elapsed, self.tok.decode(new[:cut], skip_special_tokens=True)


def query(client, question: str, tokens: int) -> tuple[float, dict]:
    started = time.perf_counter()
    r = client.post("/v1/query", json={"query": question, "max_tokens": tokens, "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def throughput(url: str, questions: list[str], tokens: int, clients: int, per_client: int) -> float:
    import httpx

    def worker(i: int) -> int:
        with httpx.Client(base_url=url, timeout=600) as c:
            for k in range(per_client):
                query(c, questions[(i + k) % len(questions)], tokens)
        return per_client

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(worker, range(clients)))
    return done / (time.perf_counter() - started)


def swap_times(url: str, registry, names: list[str], swaps: int, tokens: int) -> list[float]:
    """Seconds from the registry moving the pointer to the first response produced by the new version."""
    import httpx

    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while not stop.is_set():
                _, body = query(c, QUESTIONS[0], tokens)
                seen.append((time.monotonic(), body["adapter_version"]))

    def serving_now() -> str:
        return httpx.get(f"{url}/readyz", timeout=30).json()["checks"]["adapter"]["serving"]

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    times = []
    try:
        time.sleep(1.0)
        for i in range(swaps):
            target = names[i % len(names)]
            if registry.active() == target:
                target = "base"
            moved_at = time.monotonic()
            registry.rollback() if target == "base" else registry.promote(target)
            switched = None
            deadline = moved_at + 600
            while time.monotonic() < deadline:
                if switched is None and serving_now() == target:
                    switched = time.monotonic() - moved_at  # the API serves it to new requests from now on
                hit = [t for t, v in list(seen) if t >= moved_at and v == target]
                if hit:
                    times.append(hit[0] - moved_at)
                    emit(
                        "swap_to_first_response_s",
                        round(times[-1], 3),
                        version=target,
                        switched_s=round(switched, 3) if switched is not None else None,
                    )
                    break
                time.sleep(0.01)
            else:
                emit("swap_timeout", target)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(600)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="HF model folder (default: the prepared SmolLM2).")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request.")
    parser.add_argument("--prompts", type=int, default=6, help="Prompts in the latency comparison.")
    parser.add_argument("--per-client", type=int, default=3, help="Requests per client in the throughput runs.")
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="Serve without the shared-prefix KV cache (the pure overhead of the serving stack).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both the raw peer and the API (RLHB_API_TORCH_THREADS).",
    )
    parser.add_argument(
        "--swap-tokens",
        type=int,
        default=4,
        help="max_tokens of the requests during the swap test (it times the swap, not generation).",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import httpx
    import redis

    from core.infra.broker import EmbeddedBroker, ensure_topics
    from core.infra.ports import free_port
    from core.infra.redis_server import resolve_redis_url
    from core.model_prep import prepare_model
    from core.prompts import render_prompt
    from core.registry import Registry
    from core.settings import ApiSettings
    from service.api.app import default_behavior

    model_dir = Path(args.model) if args.model else prepare_model(log=lambda *_: None)
    emit(
        "machine",
        {
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "torch_threads": args.threads,
            "prefix_cache": not args.no_prefix_cache,
        },
        model=model_dir.name,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    prefix = f"bench-serving:{uuid.uuid4().hex[:8]}:"
    broker = EmbeddedBroker().start()
    redis_url, redis_server = resolve_redis_url("")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    topic = f"bench-impressions-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    registry = Registry(work / "adapters", r, prefix)
    names = []
    for i in range(2):
        names.append(registry.register(write_adapter(model_dir, registry.root, f"bench-v{i + 1}", seed=i)).name)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update(
        {
            "RLHB_MODEL_PATH": str(model_dir),
            "RLHB_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "RLHB_REDIS_URL": redis_url,
            "RLHB_REDIS_PREFIX": prefix,
            "RLHB_STATE_DIR": str(work / "state"),
            "RLHB_ADAPTER_DIR": str(registry.root),
            "RLHB_TOPIC_IMPRESSIONS": topic,
            "RLHB_API_ADMIN_TOKEN": ADMIN,
            "RLHB_API_IMPRESSION_SECRET": SECRET,
            "RLHB_API_MAX_TOKENS_CAP": str(max(512, args.tokens)),
            "RLHB_API_TORCH_THREADS": str(args.threads),
            "RLHB_API_PREFIX_CACHE": "false" if args.no_prefix_cache else "true",
        }
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "rlhb.cli", "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)  # the same as the API's, for a like-for-like peer
        raw = RawModel(model_dir)
        behavior = default_behavior(ApiSettings(dev_mode=True))
        questions = QUESTIONS[: args.prompts]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the API did not become ready")

        # 1. overhead at concurrency 1 (alternating, after one warm-up each)
        raw_lat, api_lat, same = [], [], 0
        with httpx.Client(base_url=url, timeout=600) as c:
            raw.generate(render_prompt(raw.tok, questions[0], behavior), args.tokens)
            query(c, questions[0], args.tokens)
            for q in questions:
                t_raw, text_raw = raw.generate(render_prompt(raw.tok, q, behavior), args.tokens)
                t_api, body = query(c, q, args.tokens)
                raw_lat.append(t_raw)
                api_lat.append(t_api)
                same += text_raw == body["answer"]
                emit("pair", {"raw_s": round(t_raw, 3), "api_s": round(t_api, 3)}, same_text=text_raw == body["answer"])
        emit("raw_generate_latency_s", {"p50": round(pct(raw_lat, 0.5), 3), "p99": round(pct(raw_lat, 0.99), 3)})
        emit("api_query_latency_s", {"p50": round(pct(api_lat, 0.5), 3), "p99": round(pct(api_lat, 0.99), 3)})
        emit("same_text", f"{same}/{len(questions)}")
        overhead = statistics.median(a / b for a, b in zip(api_lat, raw_lat, strict=True))
        emit("overhead_ratio_c1", round(overhead, 3), target="<= 1.05")
        del raw

        # 2. throughput, 1 client vs 8
        rps1 = throughput(url, questions, args.tokens, 1, args.per_client * 2)
        emit("throughput_rps", round(rps1, 3), concurrency=1)
        rps8 = throughput(url, questions, args.tokens, 8, args.per_client)
        emit("throughput_rps", round(rps8, 3), concurrency=8)
        emit("throughput_ratio_c8_c1", round(rps8 / rps1, 3), target=">= 2")

        # 3. hot-swap: registry promote -> first response from the new version. For scale: one
        # answer of the same length alone (the floor: a new version's first answer takes this long).
        with httpx.Client(base_url=url, timeout=600) as c:
            alone = statistics.median(query(c, QUESTIONS[0], args.swap_tokens)[0] for _ in range(3))
        emit("short_request_latency_s", round(alone, 3), tokens=args.swap_tokens)
        swaps = swap_times(url, registry, names, args.swaps, tokens=args.swap_tokens)
        emit(
            "swap_s",
            {"median": round(statistics.median(swaps), 3), "max": round(max(swaps), 3)} if swaps else None,
            target="<= 1",
        )
        emit(
            "summary",
            {
                "overhead_ratio_c1": round(overhead, 3),
                "overhead_ok": overhead <= 1.05,
                "throughput_ratio_c8_c1": round(rps8 / rps1, 3),
                "throughput_ok": rps8 / rps1 >= 2,
                "swap_max_s": round(max(swaps), 3) if swaps else None,
                "swap_ok": bool(swaps) and max(swaps) <= 1.0,
                "short_request_latency_s": round(alone, 3),
                "loadavg_1m_end": os.getloadavg()[0],
            },
        )
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(60)
        except subprocess.TimeoutExpired:
            api.kill()
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        broker.stop()
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    main()
