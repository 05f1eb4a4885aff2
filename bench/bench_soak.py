"""Soak: many clients for minutes against the API + aggregator; does anything grow without bound?

One deployment (``rlhb api`` and ``rlhb aggregator`` as subprocesses, an embedded tansu
broker and a private valkey, so Redis's memory is ours alone). ``--clients`` threads (32)
each loop for ``--seconds`` (600): ``POST /v1/query`` (a short answer), then
``POST /v1/feedback`` with a view and a like or dislike for that answer, under the client's
own ``X-Client-Id``. Every ``--sample-s`` seconds: RSS and open file descriptors of the API
and the aggregator (the API's by kind: client sockets, Redis, broker, files...; and its Redis
connections as Redis sees them in CLIENT LIST, with how long they have been idle), Redis
``used_memory`` and key count, the impressions stored, the outbox backlog.

The figures are **start vs end** (there is no peer: the process is compared with itself):
the first window after warm-up against the last window, as end/start ratios, plus the RSS
slope over the second half (MB/min; a leak keeps climbing, a warm-up plateaus). Redis holds
every impression and its counts until their TTL (days) by design, so its total grows with
traffic; bytes *per stored impression* (above the memory before any traffic) must stay flat. Query p50/p99 per
window too. At the end, after the aggregator caught up, the counts in Redis are checked
against every feedback event the API accepted (exactly once: none lost, none doubled).

Hot swaps under load (issue 16: "while the trainer publishes and the API hot-swaps"): every
``--publish-every-s`` seconds (60; 0 = off) a publisher thread writes a new random LoRA for the
served model (r=4 on q_proj/v_proj, random lora_B so it changes the answers; the folder format
of trainer/checkpoints.py) under the API's ``RLHB_ADAPTER_DIR`` and publishes it as the trainer
does: ``Registry.register`` then ``Registry.promote`` (what trainer/gate.py calls when a
candidate passes), which moves the active pointer in Redis and announces it; the API swaps on
that. Recorded: the versions published, the answers per ``adapter_version`` (every published
version must answer), the time from each promote to the first answer from the new version
(median, max), and the errors (non-2xx answers and transport errors) per window and in total.
No version is published in the last 15 s, so every one has time to answer.

Bounded (the summary's verdict): RSS end/start <= 1.10 for both processes, open fds
end - start <= 8, Redis bytes per impression end/start <= 1.20, query p99 end/start <= 1.5,
the counts exact, no error, and every published version answered.

The model is the tiny random 2-layer Llama (``--model tiny``, default: this measures the
service, not generation; 32 clients on SmolLM2 on 2 CPU cores would measure queueing) or
``--model smollm2`` or a folder. Prints JSON lines (``{"bench": "soak", ...}``), the last
one the summary.

    .venv/bin/python bench/bench_soak.py [--seconds 600] [--clients 32] [--model tiny] [--publish-every-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH = "soak"
QUESTIONS = [
    "What is the capital of France?",
    "How do plants make their food?",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Explain what a database index is.",
    "How many legs does a spider have?",
]
ADMIN = "bench-admin-token-" + uuid.uuid4().hex
SECRET = "bench-impression-secret-" + uuid.uuid4().hex


def emit(metric: str, value, **extra) -> None:
    print(json.dumps({"bench": BENCH, "metric": metric, "value": value, **extra}), flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tcp_sockets() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) for every TCP socket of the machine."""
    sockets: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            sockets[f[9]] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16))
    return sockets


def _fd_targets(pid: int) -> list[str]:
    """What each open fd of ``pid`` points at (``socket:[inode]``, a path, ``pipe:[...]``)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed between listdir and readlink
            continue
    return targets


def fd_kinds(pid: int, ports: dict[int, str]) -> dict[str, int]:
    """Open fds of ``pid`` by kind; TCP sockets by the named port at either end (``ports``:
    port -> name), so a growing count says which pool grows."""
    sockets = _tcp_sockets()
    kinds: dict[str, int] = {}
    for target in _fd_targets(pid):
        if target.startswith("socket:["):
            ends = sockets.get(target[8:-1])
            kind = (ports.get(ends[1]) or ports.get(ends[0]) or "tcp other") if ends else "socket other"
        elif target.startswith("/"):
            kind = "file"
        else:
            kind = target.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def redis_clients_of(pid: int, r, redis_port: int) -> dict:
    """Redis's own view (CLIENT LIST) of the connections ``pid`` holds to it, matched by the
    client's local port: how many, and how long the longest has been idle. A pool that grew
    to a peak and keeps the extra sockets shows connections idle for minutes; a pool that
    reuses what it has shows them all busy within seconds."""
    sockets = _tcp_sockets()
    mine = {
        sockets[t[8:-1]][0]
        for t in _fd_targets(pid)
        if t.startswith("socket:[") and t[8:-1] in sockets and sockets[t[8:-1]][1] == redis_port
    }
    idle = [int(c["idle"]) for c in r.client_list() if int(c["addr"].rsplit(":", 1)[1]) in mine]
    return {"n": len(idle), "idle_max_s": max(idle, default=0), "idle_over_30s": sum(i > 30 for i in idle)}


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


class Clients:
    """``n`` threads looping query -> feedback; latencies and accepted events kept per thread."""

    def __init__(self, url: str, n: int, tokens: int):
        self.url, self.n, self.tokens = url, n, tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.queries: list[tuple[float, float]] = []  # (monotonic end, seconds)
        self.feedbacks: list[tuple[float, float]] = []
        self.accepted: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.answers: list[tuple[float, str]] = []  # (monotonic end, adapter_version) per 200 query
        self.errors: list[tuple[float, str]] = []  # (monotonic, what): non-2xx answers, transport errors
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(n)]

    def count(self, what: str, error: bool = False) -> None:
        with self.lock:
            self.status[what] = self.status.get(what, 0) + 1
            if error:
                self.errors.append((time.monotonic(), what))

    def loop(self, i: int) -> None:
        import httpx

        rng = random.Random(i)
        headers = {"X-Client-Id": f"soak-client-{i:02d}-{uuid.uuid4().hex[:6]}"}
        with httpx.Client(base_url=self.url, timeout=120, headers=headers) as c:
            while not self.stop.is_set():
                try:
                    started = time.monotonic()
                    r = c.post("/v1/query", json={"query": rng.choice(QUESTIONS), "max_tokens": self.tokens})
                    ended = time.monotonic()
                    self.count(f"query_{r.status_code}", error=not r.is_success)
                    if r.status_code != 200:
                        time.sleep(0.5)
                        continue
                    body = r.json()
                    with self.lock:
                        self.queries.append((ended, ended - started))
                        self.answers.append((ended, body["adapter_version"]))
                    iid = body["impression_id"]
                    kinds = ["view", rng.choice(["like", "dislike"])]
                    events = [{"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": k} for k in kinds]
                    started = time.monotonic()
                    f = c.post("/v1/feedback", json={"events": events})
                    ended = time.monotonic()
                    self.count(f"feedback_{f.status_code}", error=not f.is_success)
                    if f.status_code == 202:
                        with self.lock:
                            self.feedbacks.append((ended, ended - started))
                            for k in kinds:  # the API writes each kind once per impression and client
                                self.accepted[k] = self.accepted.get(k, 0) + 1
                except httpx.HTTPError as e:
                    self.count(f"error_{type(e).__name__}", error=True)
                    time.sleep(0.5)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)

    def window(self, kind: str, lo: float, hi: float) -> list[float]:
        with self.lock:
            rows = list(self.queries if kind == "query" else self.feedbacks)
        return [s for t, s in rows if lo <= t < hi]


class Publisher:
    """Publishes a new random adapter every ``every_s`` seconds from ``t0`` (none after
    ``last_at``), as the trainer does: the version folder (PEFT files + metadata.json with the
    weights' sha256, written under a temp name and renamed, as trainer/checkpoints.py does),
    ``Registry.register``, then ``Registry.promote`` (trainer/gate.py's call when a candidate
    passes: marks it published, moves the Redis pointer and announces the move)."""

    def __init__(self, registry, model_dir: Path, every_s: float, t0: float, last_at: float):
        self.registry, self.model_dir, self.every_s = registry, model_dir, every_s
        self.t0, self.last_at = t0, last_at
        self.stop = threading.Event()
        self.published: list[dict] = []  # name, promoted_at (monotonic, when promote returned), timings
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        try:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(1)  # the bench process's only torch work; leave the cores to the API
            base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
            model = get_peft_model(base, config)
        except Exception as e:  # reported in the summary (published stays empty)
            self.failures.append(f"setup: {type(e).__name__}: {e}")
            return
        parent, k = None, 1
        while self.t0 + k * self.every_s <= self.last_at:
            if self.stop.wait(max(0.0, self.t0 + k * self.every_s - time.monotonic())):
                return
            try:
                parent = self.publish_one(model, torch, k, parent)
            except Exception as e:  # a failed publish is a finding, not a crash of the bench
                self.failures.append(f"version {k}: {type(e).__name__}: {e}")
                emit("publish_failed", f"{type(e).__name__}: {e}", k=k)
            k += 1

    def publish_one(self, model, torch, k: int, parent: str | None) -> str:
        from core.registry import PointerPublishError, sha256_file, weights_file

        started = time.monotonic()
        name = f"soak-{k:03d}-{uuid.uuid4().hex[:6]}"
        torch.manual_seed(k)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:  # a fresh LoRA (lora_B = 0) would not change the answers
                    p.normal_(0.0, 0.5)
        root = self.registry.root
        tmp = root / f".{name}.tmp-{os.getpid()}"
        model.save_pretrained(tmp)
        meta = {
            "name": name,
            "parent": parent,
            "algorithm": "bench-soak-random",
            "step": k,
            "sha256": sha256_file(weights_file(tmp)),
            "created_at": time.time(),
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, root / name)
        written = time.monotonic()
        self.registry.register(root / name)
        registered = time.monotonic()
        try:
            self.registry.promote(name)
        except PointerPublishError as e:  # durable; Redis catches up at the next registry read (as the gate)
            emit("publish_pointer_late", str(e), version=name)
        promoted = time.monotonic()
        row = {
            "name": name,
            "promoted_at": promoted,
            "t": round(promoted - self.t0, 1),
            "write_s": round(written - started, 3),
            "register_s": round(registered - written, 3),
            "promote_s": round(promoted - registered, 3),
        }
        self.published.append(row)
        emit("published", {k: v for k, v in row.items() if k != "promoted_at"})
        return name


def redis_figures(r, keys: str) -> dict:
    """``keys``: the aggregator's key prefix (AggregatorStore.p)."""
    info = r.info("memory")
    impressions = sum(1 for _ in r.scan_iter(match=keys + "imp:*", count=5000))
    return {"used_memory": int(info["used_memory"]), "keys": int(r.dbsize()), "impressions": impressions}


def stored_counts(r, keys: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for key in r.scan_iter(match=keys + "cnt:*", count=5000):
        for kind, value in r.hgetall(key).items():
            totals[kind] = totals.get(kind, 0.0) + float(value)
    return totals


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="Length of the soak (after warm-up).")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--model", default="tiny", help="tiny (default), smollm2, or an HF model folder.")
    parser.add_argument("--tokens", type=int, default=8, help="max_tokens per query.")
    parser.add_argument("--warmup-s", type=float, default=30, help="Load before the start window opens.")
    parser.add_argument("--window-s", type=float, default=60, help="Length of the start and end windows.")
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument(
        "--publish-every-s",
        type=float,
        default=60,
        help="Publish and promote a new random adapter this often (the API hot-swaps to it); 0 = never.",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    window = min(args.window_s, args.seconds / 3)

    import httpx
    import redis

    from core.infra.broker import EmbeddedBroker, ensure_topics
    from core.infra.ports import free_port
    from core.infra.redis_server import EmbeddedRedis
    from core.model_prep import build_tiny_model, prepare_model
    from service.aggregator.redis_state import AggregatorStore

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    if args.model in ("tiny", "smollm2"):
        model_dir = prepare_model(log=lambda *_: None)
        if args.model == "tiny":
            model_dir = build_tiny_model(work / "tiny-model", model_dir)
        model_name = args.model
    else:
        model_dir, model_name = Path(args.model), Path(args.model).name
    emit(
        "machine",
        {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
        model=model_name,
        clients=args.clients,
        seconds=args.seconds,
        tokens=args.tokens,
        publish_every_s=args.publish_every_s,
    )
    broker = EmbeddedBroker().start()
    valkey = EmbeddedRedis().start()  # private: used_memory is this deployment's alone
    r = redis.Redis.from_url(valkey.url, decode_responses=True)
    prefix = "soak:"
    agg_keys = AggregatorStore(r, prefix).p
    topics = {k: f"soak-{uuid.uuid4().hex[:6]}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    ensure_topics(broker.bootstrap, list(topics.values()), partitions=4)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    env.update(
        {
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "RLHB_MODEL_PATH": str(model_dir),
            "RLHB_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "RLHB_REDIS_URL": valkey.url,
            "RLHB_REDIS_PREFIX": prefix,
            "RLHB_STATE_DIR": str(work / "state"),
            "RLHB_ADAPTER_DIR": str(work / "adapters"),
            "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
            "RLHB_TOPIC_FEEDBACK": topics["feedback"],
            "RLHB_TOPIC_RECORDS": topics["records"],
            "RLHB_TOPIC_DEAD_LETTER": topics["dead_letter"],
            "RLHB_API_ADMIN_TOKEN": ADMIN,
            "RLHB_API_IMPRESSION_SECRET": SECRET,  # the aggregator checks every id with it too
            "RLHB_API_TORCH_THREADS": "1",
            "RLHB_API_MAX_TOKENS_CAP": str(max(64, args.tokens)),
            "RLHB_AGG_GROUP_ID": f"soak-{uuid.uuid4().hex[:6]}",
        }
    )
    procs = {}
    for name, cmd in (("api", ["api", "--port", str(port), "--log-level", "warning"]), ("aggregator", ["aggregator"])):
        with open(work / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "rlhb.cli", *cmd], env=env, stdout=log, stderr=subprocess.STDOUT
            )
    url = f"http://127.0.0.1:{port}"
    clients = publisher = reg_redis = None
    try:
        deadline = time.monotonic() + 600
        while True:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"`rlhb {name}` exited; see {work / (name + '.log')}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the API did not become ready")
            time.sleep(0.3)

        baseline = redis_figures(r, agg_keys)["used_memory"]  # before any traffic: Redis's own overhead
        ports = {port: "api clients", broker.port: "broker", valkey.port: "redis"}
        emit("api_fd_kinds", fd_kinds(procs["api"].pid, ports), when="before traffic")
        clients = Clients(url, args.clients, args.tokens)
        t0 = time.monotonic()
        clients.start()
        samples: list[dict] = []
        end_at = t0 + args.warmup_s + args.seconds
        if args.publish_every_s > 0:
            from core.registry import Registry

            # The registry the API reads (same root, Redis and prefix), as the trainer opens it.
            reg_redis = redis.Redis.from_url(valkey.url)
            registry = Registry(Path(env["RLHB_ADAPTER_DIR"]), reg_redis, env["RLHB_REDIS_PREFIX"])
            publisher = Publisher(registry, model_dir, args.publish_every_s, t0, end_at - 15)
            publisher.thread.start()
        while time.monotonic() < end_at:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"`rlhb {name}` exited mid-soak; see {work / (name + '.log')}")
            ready = httpx.get(f"{url}/readyz", timeout=30).json()
            sample = {
                "t": round(time.monotonic() - t0, 1),
                "api_rss_mb": round(rss_mb(procs["api"].pid), 1),
                "agg_rss_mb": round(rss_mb(procs["aggregator"].pid), 1),
                "api_fds": open_fds(procs["api"].pid),
                "agg_fds": open_fds(procs["aggregator"].pid),
                "outbox_pending": ready["checks"]["outbox"]["pending"],
                # Which pool grows, if the fd count does (issue 16: the Redis pool, or keep-alive sockets).
                "api_fd_kinds": fd_kinds(procs["api"].pid, ports),
                "api_redis_clients": redis_clients_of(procs["api"].pid, r, valkey.port),
                "queries": len(clients.queries),
                "errors": len(clients.errors),
                "published": len(publisher.published) if publisher else 0,
                # The API's view of the swaps: the version new requests get, the adapters it holds.
                "serving": ready["checks"]["adapter"]["serving"],
                "adapters_loaded": len(ready["checks"]["adapter"]["loaded"]),
                "adapter_error": ready["checks"]["adapter"]["last_error"] or None,
                **redis_figures(r, agg_keys),
            }
            samples.append(sample)
            emit("sample", sample)
            time.sleep(max(0.0, min(args.sample_s, end_at - time.monotonic())))
        emit("api_fd_kinds", fd_kinds(procs["api"].pid, ports), when="end")
        if publisher is not None:
            publisher.stop.set()
            publisher.thread.join(120)
        clients.join()
        total_s = time.monotonic() - t0

        # Exactly once: wait until the aggregator has counted what the API accepted (or stops moving).
        want = dict(clients.accepted)
        got, last, still = {}, None, time.monotonic()
        while time.monotonic() - still < 60:
            got = stored_counts(r, agg_keys)
            if all(got.get(k, 0) >= v for k, v in want.items()):
                break
            if got != last:
                last, still = got, time.monotonic()
            time.sleep(1)
        exact = all(got.get(k, 0) == v for k, v in want.items())
        emit("counts", {"accepted": want, "in_redis": got}, exact=exact)

        lo, hi = args.warmup_s, args.warmup_s + args.seconds
        start_win, end_win = (t0 + lo, t0 + lo + window), (t0 + hi - window, t0 + hi)

        def in_win(win) -> list[dict]:
            return [s for s in samples if win[0] - t0 <= s["t"] <= win[1] - t0] or samples[:1]

        def mean(rows: list[dict], key: str) -> float:
            return statistics.fmean(s[key] for s in rows)

        first, last_rows = in_win(start_win), in_win(end_win)
        figures: dict[str, dict] = {}
        for key in ("api_rss_mb", "agg_rss_mb", "api_fds", "agg_fds", "used_memory", "keys", "outbox_pending"):
            a, b = mean(first, key), mean(last_rows, key)
            figures[key] = {"start": round(a, 1), "end": round(b, 1), "ratio": round(b / a, 3) if a else None}
        per_imp = [
            ((s["used_memory"] - baseline) / s["impressions"]) if s["impressions"] else None
            for s in (first[-1], last_rows[-1])
        ]
        figures["redis_bytes_per_impression"] = {
            "start": round(per_imp[0]) if per_imp[0] else None,
            "end": round(per_imp[1]) if per_imp[1] else None,
            "ratio": round(per_imp[1] / per_imp[0], 3) if all(per_imp) else None,
        }
        half = [s for s in samples if s["t"] >= lo + args.seconds / 2]
        for key in ("api_rss_mb", "agg_rss_mb"):
            figures[key]["second_half_slope_mb_per_min"] = round(slope_per_min([(s["t"], s[key]) for s in half]), 3)
        for kind in ("query", "feedback"):
            a, b = clients.window(kind, *start_win), clients.window(kind, *end_win)
            figures[f"{kind}_latency_s"] = {
                "start": {"p50": pct(a, 0.5), "p99": pct(a, 0.99), "n": len(a)},
                "end": {"p50": pct(b, 0.5), "p99": pct(b, 0.99), "n": len(b)},
                "p99_ratio": round(pct(b, 0.99) / pct(a, 0.99), 3) if a and b else None,
            }
            for w in ("start", "end"):
                for q in ("p50", "p99"):
                    v = figures[f"{kind}_latency_s"][w][q]
                    figures[f"{kind}_latency_s"][w][q] = round(v, 4) if v is not None else None
        for key, value in figures.items():
            emit(key, value)
        queries = len(clients.queries)
        emit("status_counts", clients.status)

        # Hot swaps: answers per version, promote -> first answer from that version, errors per window.
        served: dict[str, int] = {}
        first_answer: dict[str, float] = {}
        with clients.lock:
            answers, errors = list(clients.answers), list(clients.errors)
        for ended, version in answers:
            served[version] = served.get(version, 0) + 1
            first_answer[version] = min(first_answer.get(version, ended), ended)
        published = publisher.published if publisher else []
        swaps = {
            p["name"]: round(first_answer[p["name"]] - p["promoted_at"], 3) if p["name"] in first_answer else None
            for p in published
        }
        swap_s = [v for v in swaps.values() if v is not None]
        emit("swap_to_first_answer_s", swaps)
        errors_by_kind: dict[str, int] = {}
        for _, what in errors:
            errors_by_kind[what] = errors_by_kind.get(what, 0) + 1
        windows = []
        w_start = 0.0
        while w_start < total_s:
            lo_t, hi_t = t0 + w_start, t0 + min(w_start + args.window_s, total_s)
            lat = [s for t, s in clients.queries if lo_t <= t < hi_t]
            versions: dict[str, int] = {}
            for t, v in answers:
                if lo_t <= t < hi_t:
                    versions[v] = versions.get(v, 0) + 1
            windows.append(
                {
                    "t": [round(w_start), round(hi_t - t0)],
                    "queries": len(lat),
                    "errors": sum(1 for t, _ in errors if lo_t <= t < hi_t),
                    "query_p50": round(pct(lat, 0.5), 4) if lat else None,
                    "query_p99": round(pct(lat, 0.99), 4) if lat else None,
                    "published": sum(1 for p in published if lo_t <= p["promoted_at"] < hi_t),
                    "versions_answering": versions,
                }
            )
            w_start += args.window_s
        for w in windows:
            emit("window", w)
        emit("errors", {"total": len(errors), "by_kind": errors_by_kind})
        if publisher is not None and publisher.failures:
            emit("publish_failures", publisher.failures)
        bounded = {
            "api_rss": (figures["api_rss_mb"]["ratio"] or 0) <= 1.10,
            "agg_rss": (figures["agg_rss_mb"]["ratio"] or 0) <= 1.10,
            "fds": figures["api_fds"]["end"] - figures["api_fds"]["start"] <= 8
            and figures["agg_fds"]["end"] - figures["agg_fds"]["start"] <= 8,
            "redis_per_impression": (figures["redis_bytes_per_impression"]["ratio"] or 99) <= 1.20,
            "query_p99": (figures["query_latency_s"]["p99_ratio"] or 99) <= 1.5,
            "counts_exact": exact,
            "no_errors": not errors,
            # Every published version answered (and at least one was published when asked to).
            "every_version_served": all(served.get(p["name"], 0) > 0 for p in published)
            and (bool(published) or args.publish_every_s <= 0)
            and not (publisher and publisher.failures),
        }
        emit(
            "summary",
            {
                "model": model_name,
                "clients": args.clients,
                "seconds": round(total_s, 1),
                "queries": queries,
                "queries_per_s": round(queries / total_s, 2),
                "feedback_events_accepted": sum(want.values()),
                "api_rss_mb": figures["api_rss_mb"],
                "agg_rss_mb": figures["agg_rss_mb"],
                "api_fds": figures["api_fds"],
                "agg_fds": figures["agg_fds"],
                "redis_used_memory": figures["used_memory"],
                "redis_bytes_per_impression": figures["redis_bytes_per_impression"],
                "query_p99_s": {
                    "start": figures["query_latency_s"]["start"]["p99"],
                    "end": figures["query_latency_s"]["end"]["p99"],
                    "ratio": figures["query_latency_s"]["p99_ratio"],
                },
                "publish_every_s": args.publish_every_s,
                "published": [p["name"] for p in published],
                "versions_served": served,
                "errors_total": len(errors),
                "errors_by_kind": errors_by_kind,
                "swap_to_first_answer_s": {
                    "n": len(swap_s),
                    "median": round(statistics.median(swap_s), 3) if swap_s else None,
                    "max": max(swap_s) if swap_s else None,
                },
                "loadavg_1m": os.getloadavg()[0],
                "checks": bounded,
                "bounded": all(bounded.values()),
            },
        )
    finally:
        if clients is not None:
            clients.stop.set()
        if publisher is not None:
            publisher.stop.set()
            publisher.thread.join(60)
        if reg_redis is not None:
            reg_redis.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        r.close()
        valkey.stop()
        broker.stop()


if __name__ == "__main__":
    main()
