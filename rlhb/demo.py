"""``rlhb demo``: the closed loop on one machine, through the real services, with simulated users.

What it does (one *lane* per algorithm, run one after the other):

1. Infrastructure: the embedded Kafka-protocol broker and Redis (the machine's, or an embedded
   valkey), shared by the lanes; each lane gets its own topics, Redis key prefix and adapter
   folder, and its own processes: ``rlhb api``, ``rlhb aggregator``, ``rlhb trainer``.
2. Base traffic (first lane): simulated users ask training questions through ``POST /v1/query``
   and react through ``POST /v1/feedback``; the aggregator turns the events into behavior
   records. The other lanes start from the same logged history: the first lane's records are
   replayed into their records topic (Kafka is the log; so all algorithms see the same data).
3. Base evaluation: every held-out question (never trained on) is answered by ``base``
   (``/v1/chat/completions`` with ``model="base"``) and judged by one simulated user who sends
   no feedback: an independent Bernoulli like per answer.
4. Rounds: ``POST /admin/train`` asks the trainer for a round with the lane's algorithm; the
   trainer trains, gates and publishes (or rejects) a version, the API hot-swaps it; the demo
   evaluates the new version on the held-out questions, then (unless it was the last round)
   sends more traffic, now served by the new version, for the next round to learn from. A
   candidate the gate rejects is never served; the demo generates its held-out answers itself
   from the adapter folder and judges them the same way, so its like rate is in the table too.
5. Report: like rate per version with Wilson 95% intervals, lift over base with a one-sided
   two-proportion z-test and Fisher's exact test, a power analysis, quality measures the
   trainer does not optimize (MiniLM relevance, repeated 3-grams, length, cut-offs), answers of
   base and final versions side by side, wall time per phase; a PNG of like rate, quality and
   training curves; ``report.json`` and ``report.md`` in the output folder.

Algorithms compared (``--algorithms``):

- ``rlhb``: PPO against the behavior-conditioned discriminator (the product's default).
- ``rlhbc``: PPO against the multi-head behavior classifier (eq. 1).
- ``rlhf`` as **direct-reward RL**: a reward model fitted directly to the logged shaped reward
  (likes - dislikes) / (views + clicks) -- pairwise Bradley-Terry over answers ranked by that
  reward (eq. 12) -- then the same PPO loop, KL and budget. It optimizes the users' reactions
  directly, without the behavior sentence; it is a labelled baseline. The simulated users'
  own like probability is never a reward: every algorithm sees only the logged events.

``--quick`` builds a tiny random model and runs every phase in about a minute (for tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

ALGORITHM_LABELS = {"rlhb": "RLHB", "rlhbc": "RLHBC", "rlhf": "direct-reward RL", "sft": "SFT", "pro": "PRO"}

PPO_BUDGET: dict = {
    "batch_size": 16,
    "rollouts_per_prompt": 4,
    "max_new_tokens": 48,
    "kl_coef": 0.02,
    "learning_rate": 5e-4,
    "threads": 2,
}
"""The PPO budget every full-demo lane shares (so the comparison is like with like)."""

FULL_ALGORITHM_CONFIG: dict[str, dict] = {
    # Found by the experiments in bench/demo_experiments.md (E3: like rate 0.244 -> 0.474 on 352
    # held-out answers, in process). RLHB: D learns the behavior from real vs behavior-swapped
    # records during warm-up (R1: its reward ranks held-out answers with Spearman 0.74 against
    # the users' true like probability), then stays frozen: the adversarial updates against
    # generated answers dragged it to chance in 3 iterations (E1). Every PPO prompt carries the
    # served sentence (E2, half of them: +0.03 only). The same PPO budget for every lane.
    "rlhb": {**PPO_BUDGET, "d_warmup_steps": 150, "d_frozen": True, "preferred_prompt_share": 1.0},
    "rlhbc": dict(PPO_BUDGET),
    "rlhf": dict(PPO_BUDGET),
}
EVAL_SEED_OFFSET = 7919
"""Held-out evaluation draws use seed + this (apart from traffic's draws; the same for every version)."""

QUICK_ALGORITHM_CONFIG: dict[str, dict] = {
    name: {"batch_size": 4, "rollouts_per_prompt": 2, "max_new_tokens": 8, "threads": 1}
    for name in ("rlhb", "rlhbc", "rlhf", "sft", "pro")
}


@dataclass
class DemoConfig:
    """Everything one demo run needs (the ``rlhb demo`` options)."""

    out_dir: Path = Path("rlhb-demo")
    """Where report.md, report.json, demo.png and the processes' logs go."""
    algorithms: tuple[str, ...] = ("rlhb", "rlhbc", "rlhf")
    """One lane per algorithm, in this order; the first lane's base traffic is shared."""
    rounds: int = 1
    """Training rounds per lane (each further round costs ~30 min per lane on 2 cores: traffic,
    24 iterations, evaluation)."""
    base_traffic: int = 640
    """Answers served by base (with feedback) before the first round (E3 learned from 640)."""
    traffic_per_round: int = 300
    """Answers served by each new version (with feedback) before the next round."""
    eval_samples: int = 2
    """Answers per held-out question per version (evaluation, no feedback)."""
    eval_questions: int = 0
    """Held-out questions to evaluate on (0: all)."""
    train_questions: int = 0
    """Training questions traffic draws from (0: all); few questions make queries repeat."""
    steps: int = 24
    """Training iterations per round (E3's 24: ~50 s each with SmolLM2 on 2 cores)."""
    users: str = "concise"
    """Simulated user model (preset or package.module:Class)."""
    viewers_mean: float = 5.0
    """Mean viewers per answer during traffic."""
    max_tokens: int = 48
    """Answer length cap (serving and training)."""
    temperature: float = 0.7
    """Serving temperature for traffic and evaluation."""
    seed: int = 0
    model_path: str = ""
    """Base model folder ('' = the prepared SmolLM2; --quick builds a tiny one)."""
    algorithm_config: dict[str, dict] = field(default_factory=lambda: json.loads(json.dumps(FULL_ALGORITHM_CONFIG)))
    """Per-algorithm Config overrides passed to the trainer (RLHB_TRAINER_ALGORITHM_CONFIG)."""
    gate_config: dict = field(default_factory=dict)
    """trainer.gate.GateConfig overrides (RLHB_TRAINER_GATE_CONFIG)."""
    concurrency: int = 8
    """Requests in flight (the API batches up to max_batch_size of them)."""
    threads: int = 2
    """torch threads per process."""
    quick: bool = False
    round_timeout_s: float = 3 * 3600
    """Give up on a round after this long."""
    show_answers: int = 5
    """Held-out questions shown with base and final answers side by side."""
    judge_rejected: bool = True
    """Also measure a candidate the gate rejected (never served: generated in the demo process
    from its adapter folder), so every algorithm has a like rate in the table."""
    keep_redis_state: bool = False
    """Keep the lanes' Redis keys after the run (default: delete them; the machine's Redis is shared)."""

    def __post_init__(self) -> None:
        from trainer.algorithms import ALGORITHMS

        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"unknown algorithms {unknown}; choose from {', '.join(ALGORITHMS)}")
        for name in ("rounds", "base_traffic", "eval_samples", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.traffic_per_round < 0:
            raise ValueError("traffic_per_round must be >= 0")


def quick_config(out_dir: Path, **overrides) -> DemoConfig:
    """The --quick settings: tiny model, a few answers, one short round per algorithm."""
    base = dict(
        out_dir=out_dir,
        rounds=1,
        base_traffic=40,
        traffic_per_round=0,
        eval_samples=1,
        eval_questions=8,
        train_questions=8,
        steps=1,
        max_tokens=8,
        viewers_mean=5.0,
        concurrency=4,
        threads=1,
        quick=True,
        show_answers=2,
        algorithm_config=json.loads(json.dumps(QUICK_ALGORITHM_CONFIG)),
        round_timeout_s=600,
        # The tiny random model's candidates are noise; let the gate's reward check pass them so
        # the quick run exercises publish, hot-swap and evaluation (finite and KL checks still apply).
        gate_config={"reward_tolerance": 0.99},
    )
    base.update(overrides)
    return DemoConfig(**base)


# --------------------------------------------------------------------------- output
class Console:
    """Timestamped progress lines (stdout) and a log file."""

    def __init__(self, path: Path) -> None:
        self.t0 = time.time()
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- processes
def cli_has_command(name: str) -> bool:
    from rlhb.cli import FEATURE_COMMANDS, app

    return any(c[3] == name for c in FEATURE_COMMANDS) or any(
        (cmd.name or getattr(cmd.callback, "__name__", "")) == name for cmd in app.registered_commands
    )


@dataclass
class Lane:
    """One algorithm's deployment: topics, Redis prefix, adapter folder, three processes."""

    algorithm: str
    root: Path
    prefix: str
    topics: dict[str, str]
    port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, name: str) -> list[str]:
        if name == "api" and not cli_has_command("api"):
            # Until `rlhb api` is registered: the same app under uvicorn, settings from the env.
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "service.api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ]
        return [sys.executable, "-m", "rlhb.cli", name]

    def start(self, names=("api", "aggregator", "trainer")) -> None:
        for name in names:
            log = (self.root / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                self.command(name),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`rlhb {name}` exited with code {proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


def make_lane(cfg: DemoConfig, run_id: str, algorithm: str, infra, model_path: str) -> Lane:
    from core.infra.broker import ensure_topics
    from core.infra.ports import free_port

    root = cfg.out_dir / f"lane-{algorithm}"
    root.mkdir(parents=True, exist_ok=True)
    tag = f"demo-{run_id}-{algorithm}"
    topics = {k: f"{tag}-{k}" for k in ("impressions", "feedback", "records", "dead-letter")}
    ensure_topics(infra.bootstrap, list(topics.values()), partitions=2)
    prefix = f"rlhbdemo:{run_id}:{algorithm}:"
    port = free_port()
    algo_cfg = dict(cfg.algorithm_config.get(algorithm, {}))
    algo_cfg.setdefault("max_new_tokens", cfg.max_tokens)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(cfg.threads),
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "RLHB_REDIS_URL": infra.redis_url,
        "RLHB_REDIS_PREFIX": prefix,
        "RLHB_TOPIC_IMPRESSIONS": topics["impressions"],
        "RLHB_TOPIC_FEEDBACK": topics["feedback"],
        "RLHB_TOPIC_RECORDS": topics["records"],
        "RLHB_TOPIC_DEAD_LETTER": topics["dead-letter"],
        "RLHB_TOPIC_PARTITIONS": "2",
        "RLHB_MODEL_PATH": model_path,
        "RLHB_ADAPTER_DIR": str(root / "adapters"),
        "RLHB_STATE_DIR": str(root / "state"),
        "RLHB_DEV_MODE": "1",
        "RLHB_API_HOST": "127.0.0.1",
        "RLHB_API_PORT": str(port),
        "RLHB_API_MAX_NEW_TOKENS": str(cfg.max_tokens),
        "RLHB_API_MAX_BATCH_SIZE": str(cfg.concurrency),
        "RLHB_API_TORCH_THREADS": str(cfg.threads),
        "RLHB_AGG_GROUP_ID": f"{tag}-aggregator",
        "RLHB_TRAINER_GROUP_ID": f"{tag}-trainer",
        "RLHB_TRAINER_ALGORITHM": algorithm,
        "RLHB_TRAINER_RECORDS_PER_ROUND": str(10**9),  # rounds only when the demo asks
        "RLHB_TRAINER_STEPS_PER_ROUND": str(cfg.steps),
        "RLHB_TRAINER_ALGORITHM_CONFIG": json.dumps(algo_cfg),
        "RLHB_TRAINER_SEED": str(cfg.seed),
        "RLHB_TRAINER_MIN_RECORDS": "8",
    }
    if cfg.gate_config:
        env["RLHB_TRAINER_GATE_CONFIG"] = json.dumps(cfg.gate_config)
    for key in ("RLHB_API_ADMIN_TOKEN", "RLHB_API_IMPRESSION_SECRET"):
        env.pop(key, None)  # dev mode: the demo's own throwaway deployment
    return Lane(algorithm=algorithm, root=root, prefix=prefix, topics=topics, port=port, env=env)


def wait_ready(lane: Lane, timeout_s: float = 600.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lane.check_alive()
        try:
            if httpx.get(f"{lane.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API of lane {lane.algorithm} was not ready after {timeout_s:.0f}s; see {lane.root}")


def trainer_status(redis, lane: Lane) -> dict:
    from trainer.loop import read_status

    return read_status(redis, lane.prefix)


def wait_records(redis, lane: Lane, want: int, say, timeout_s: float = 900.0) -> int:
    """Wait until the trainer's buffer holds ``want`` impressions' records (the aggregator caught up)."""
    deadline, last = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        lane.check_alive()
        have = int(trainer_status(redis, lane).get("buffer", 0))
        if have >= want:
            return have
        if have != last:
            last = have
        time.sleep(1.0)
    say(f"warning: only {last} of {want} records reached the trainer after {timeout_s:.0f}s; continuing")
    return max(last, 0)


def copy_records(bootstrap: str, source: str, target: str, version: str = "base", idle_s: float = 3.0) -> int:
    """Replay the records of answers served by ``version`` from ``source`` into ``target``, in order.

    Reads until the source has been idle for ``idle_s`` (the embedded broker's end offsets count
    record batches, not records, so they cannot bound the copy)."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        source, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    copied, last = 0, time.monotonic()
    deadline = last + 600
    while time.monotonic() - last < idle_s and time.monotonic() < deadline:
        for messages in consumer.poll(timeout_ms=500).values():
            for m in messages:
                last = time.monotonic()
                try:
                    served_by = json.loads(m.value).get("adapter_version")
                except ValueError:
                    continue
                if served_by == version:
                    producer.send(target, key=m.key, value=m.value)
                    copied += 1
    producer.flush(60)
    producer.close(10)
    consumer.close()
    return copied


# --------------------------------------------------------------------------- traffic and evaluation
def traffic(cfg: DemoConfig, lane: Lane, questions, n: int, start_index: int, say, label: str) -> list:
    from rlhb.simulate.driver import SimulationConfig, question_stream, run_simulation

    sim = SimulationConfig(
        api_url=lane.url,
        users=cfg.users,
        viewers_mean=cfg.viewers_mean,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        concurrency=cfg.concurrency,
        seed=cfg.seed,
        run_tag=f"{lane.algorithm}-{label}",
    )
    qs = list(question_stream(questions, n, cfg.seed + start_index))
    counter = {"n": 0, "liked": 0}
    step = max(1, n // 10)

    def progress(s) -> None:
        counter["n"] += 1
        counter["liked"] += s.asker_liked
        if counter["n"] % step == 0:
            say(f"  {label}: {counter['n']}/{n} answers, like rate so far {counter['liked'] / counter['n']:.3f}")

    return run_simulation(sim, qs, start_index=start_index, on_served=progress)


def evaluate(cfg: DemoConfig, lane: Lane, version: str, questions, say) -> list:
    """Held-out answers of ``version`` judged by one silent user each (no feedback sent)."""
    from rlhb.simulate.driver import SimulationConfig, run_simulation

    sim = SimulationConfig(
        api_url=lane.url,
        users=cfg.users,
        viewers_mean=1.0,
        send_feedback=False,
        model=version,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        concurrency=cfg.concurrency,
        seed=cfg.seed + EVAL_SEED_OFFSET,  # the same draws for every version: paired luck, fair comparison
    )
    qs = [q for _ in range(cfg.eval_samples) for q in questions]
    t0 = time.time()
    served = run_simulation(sim, qs)
    rate = sum(s.asker_liked for s in served) / max(1, len(served))
    say(f"  evaluated {version}: {len(served)} held-out answers, like rate {rate:.3f} ({time.time() - t0:.0f}s)")
    return sorted(served, key=lambda s: s.index)


def judge_offline(cfg: DemoConfig, lane: Lane, version: str, questions, model_path: str, say) -> list:
    """Held-out answers of a *rejected* candidate, generated here and judged like ``evaluate``'s.

    The API answers 409 for a rejected version (it is never served), yet a table without its
    like rate hides what the gate stopped. So the demo loads the candidate's adapter folder in
    this process and answers the same questions with the API's prompt renderer, behavior
    sentence (the default encoding's most preferred one), token cap and temperature; each answer
    gets the asker's draw ``evaluate`` would give it (seed + EVAL_SEED_OFFSET, index i), so the comparison
    with the served versions stays paired. Batched ``generate`` instead of the API's scheduler:
    same distribution, not the same samples.
    """
    import random

    import torch

    from core.behavior.encoding import most_preferred_sentence
    from rlhb.evaluation.offline_answers import generate_answers, load_generator
    from rlhb.simulate.driver import Served
    from rlhb.simulate.users import load_user_model, sample_reactions

    t0 = time.time()
    tok, model = load_generator(model_path, str(lane.root / "adapters" / version), cfg.threads)
    behavior = most_preferred_sentence()
    user = load_user_model(cfg.users)
    qs = [q for _ in range(cfg.eval_samples) for q in questions]
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    torch.manual_seed(eval_seed)
    served: list[Served] = []
    for start in range(0, len(qs), 16):
        batch = qs[start : start + 16]
        answers = generate_answers(tok, model, batch, behavior, cfg.max_tokens, cfg.temperature)
        for offset, (question, answer) in enumerate(zip(batch, answers, strict=True)):
            index = start + offset
            judgement = user.judge(question, answer)
            asker = sample_reactions(judgement, 1, random.Random(f"{eval_seed}:{index}"))[0]
            served.append(
                Served(
                    index=index,
                    question=question,
                    answer=answer.strip(),
                    impression_id="",  # never served: no impression
                    adapter_version=version,
                    p_like=judgement.p_like,
                    degenerate=judgement.degenerate,
                    asker_liked=asker.like,
                    asker_disliked=asker.dislike,
                    views=1,
                    clicks=int(asker.click),
                    likes=int(asker.like),
                    dislikes=int(asker.dislike),
                    events_sent=0,
                    latency_s=0.0,
                )
            )
    del model
    rate = sum(s.asker_liked for s in served) / max(1, len(served))
    say(
        f"  judged rejected {version} offline (never served): {len(served)} held-out answers, "
        f"like rate {rate:.3f} ({time.time() - t0:.0f}s)"
    )
    return served


def wait_round(redis, lane: Lane, rounds_before: int, cfg: DemoConfig, say) -> dict:
    """Wait for the trainer's next finished round, printing its training progress."""
    from trainer.loop import read_rounds

    deadline = time.monotonic() + cfg.round_timeout_s
    printed = 0
    metrics_dir = lane.root / "state" / "trainer-metrics"
    while time.monotonic() < deadline:
        lane.check_alive()
        rounds = read_rounds(redis, lane.prefix)
        if len(rounds) > rounds_before:
            return rounds[-1]
        files = sorted(metrics_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if metrics_dir.exists() else []
        if files:
            rows = [json.loads(x) for x in files[-1].read_text().splitlines() if x.strip()]
            for row in rows[printed:] if len(rows) > printed else []:
                keys = ("d_reward", "mean_score", "kl", "d_heldout_acc", "seconds")
                shown = ", ".join(f"{k}={row[k]:.3g}" for k in keys if isinstance(row.get(k), int | float))
                say(f"  {lane.algorithm} iteration {row.get('iteration', '?')}: {shown}")
            printed = len(rows)
        time.sleep(2.0)
    raise TimeoutError(f"round did not finish within {cfg.round_timeout_s:.0f}s; see {lane.root}/trainer.log")


def wait_serving(lane: Lane, version: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{lane.url}/admin/checkpoints", timeout=10).json().get("serving") == version:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API did not start serving {version} within {timeout_s:.0f}s")


# --------------------------------------------------------------------------- the model
def prepare_model(cfg: DemoConfig, say) -> str:
    from core.model_prep import prepare_model as prepare_smollm2

    if cfg.model_path:
        return cfg.model_path
    smollm2 = prepare_smollm2(log=say)
    if not cfg.quick:
        return str(smollm2)
    target = cfg.out_dir / "tiny-model"
    if not (target / "config.json").exists():
        build_tiny_model(target, smollm2)
    return str(target)


def build_tiny_model(target: Path, tokenizer_source: Path, seed: int = 0) -> Path:
    """A 2-layer Llama, hidden 64, with the real SmolLM2 tokenizer (``--quick`` and the tests' tiny model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    tok.save_pretrained(target)
    return target


# --------------------------------------------------------------------------- the run
@dataclass
class VersionResult:
    algorithm: str
    version: str
    round: int
    status: str
    reason: str = ""
    served: list = field(default_factory=list)
    train_metrics: list = field(default_factory=list)
    evaluated_at: float = 0.0
    train_seconds: float = 0.0
    round_info: dict = field(default_factory=dict)
    """The trainer's round summary (records used, gate metrics, timings)."""


def run_demo(cfg: DemoConfig) -> dict:
    import redis as redis_lib

    from core.infra.resolve import resolve_infra
    from core.settings import CommonSettings
    from rlhb.queries import split_questions

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    say = Console(cfg.out_dir / "demo.log")
    started = time.time()
    phases: dict[str, float] = {}
    run_id = uuid.uuid4().hex[:8]
    split = split_questions()
    held_out = list(split.held_out[: cfg.eval_questions] if cfg.eval_questions else split.held_out)
    train_qs = list(split.train[: cfg.train_questions] if cfg.train_questions else split.train)
    say(
        f"rlhb demo {run_id}: algorithms {', '.join(cfg.algorithms)}, {cfg.rounds} round(s) of {cfg.steps} steps, "
        f"users '{cfg.users}', {len(train_qs)} training / {len(held_out)} held-out questions"
    )
    model_path = prepare_model(cfg, say)
    infra = resolve_infra(CommonSettings(), create_topics=False)
    redis = redis_lib.Redis.from_url(infra.redis_url, decode_responses=True)
    results: list[VersionResult] = []
    lanes: list[Lane] = []
    first_records_topic = ""
    base_count = 0
    lane_info: dict[str, dict] = {}
    try:
        for lane_no, algorithm in enumerate(cfg.algorithms):
            t_lane = time.time()
            lane = make_lane(cfg, run_id, algorithm, infra, model_path)
            lanes.append(lane)
            say(f"[{ALGORITHM_LABELS.get(algorithm, algorithm)}] starting api, aggregator, trainer ({lane.root})")
            if lane_no > 0:
                copied = copy_records(infra.bootstrap, first_records_topic, lane.topics["records"])
                lane_info[algorithm] = {"replayed_records": copied}
                say(f"  replayed {copied} base-traffic records into this lane's records topic")
            lane.start()
            wait_ready(lane)
            phases[f"{algorithm}: start"] = time.time() - t_lane
            if lane_no == 0:
                t0 = time.time()
                say(f"  base traffic: {cfg.base_traffic} answers from base, users react")
                base_traffic = traffic(cfg, lane, train_qs, cfg.base_traffic, 0, say, "base traffic")
                base_count = len(base_traffic)
                lane_info[algorithm] = {
                    "base_traffic_answers": base_count,
                    "records_in_buffer": wait_records(redis, lane, base_count, say),
                }
                first_records_topic = lane.topics["records"]
                phases["base traffic"] = time.time() - t0
                t0 = time.time()
                base = VersionResult("base", "base", 0, "base")
                base.served = evaluate(cfg, lane, "base", held_out, say)
                base.evaluated_at = time.time() - started
                results.append(base)
                phases["base evaluation"] = time.time() - t0
            else:
                wait_records(redis, lane, base_count, say)
            next_index = cfg.base_traffic
            for r in range(1, cfg.rounds + 1):
                t0 = time.time()
                rounds_before = len(_rounds(redis, lane))
                _admin(lane, "/admin/train", {"algorithm": algorithm, "reason": f"demo round {r}"})
                say(f"  round {r}: training {ALGORITHM_LABELS.get(algorithm, algorithm)} ({cfg.steps} steps)")
                outcome = wait_round(redis, lane, rounds_before, cfg, say)
                train_s = time.time() - t0
                phases[f"{algorithm}: round {r} training"] = train_s
                version = outcome.get("version", "")
                metrics = _metrics(lane, version)
                vr = VersionResult(
                    algorithm,
                    version or f"(round {r})",
                    r,
                    outcome.get("outcome", "?"),
                    outcome.get("reason", ""),
                    train_metrics=metrics,
                    train_seconds=train_s,
                    round_info={k: v for k, v in outcome.items() if k not in ("train_metrics",)},
                )
                results.append(vr)
                say(
                    f"  round {r}: {vr.status} {version} {('(' + vr.reason + ')') if vr.reason else ''} "
                    f"after {train_s:.0f}s"
                )
                if vr.status != "published":
                    if vr.status == "rejected" and version and cfg.judge_rejected:
                        t0 = time.time()
                        vr.served = judge_offline(cfg, lane, version, held_out, model_path, say)
                        vr.evaluated_at = time.time() - started
                        phases[f"{algorithm}: round {r} offline judging"] = time.time() - t0
                    continue
                wait_serving(lane, version)
                t0 = time.time()
                vr.served = evaluate(cfg, lane, version, held_out, say)
                vr.evaluated_at = time.time() - started
                phases[f"{algorithm}: round {r} evaluation"] = time.time() - t0
                if r < cfg.rounds and cfg.traffic_per_round:
                    t0 = time.time()
                    served = traffic(cfg, lane, train_qs, cfg.traffic_per_round, next_index, say, f"traffic r{r}")
                    next_index += cfg.traffic_per_round
                    have = int(trainer_status(redis, lane).get("buffer", 0))
                    wait_records(redis, lane, have + len(served) - 5, say)
                    phases[f"{algorithm}: round {r} traffic"] = time.time() - t0
            lane.stop()
            phases[f"{algorithm}: lane total"] = time.time() - t_lane
        total = time.time() - started
        report = build_report(cfg, results, phases, total, model_path)
        report["lanes"] = lane_info
        report["run_id"] = run_id
        write_report(cfg, report, results, say)
        return report
    finally:
        for lane in lanes:
            lane.stop()
            if not cfg.keep_redis_state:
                keys = list(redis.scan_iter(match=lane.prefix + "*", count=1000))
                if keys:
                    redis.delete(*keys)
        redis.close()
        infra.stop()
        say.close()


def _admin(lane: Lane, path: str, body: dict) -> dict:
    import httpx

    r = httpx.post(f"{lane.url}{path}", json=body, timeout=30)
    if r.status_code >= 400:
        raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
    return r.json()


def _rounds(redis, lane: Lane) -> list[dict]:
    from trainer.loop import read_rounds

    return read_rounds(redis, lane.prefix)


def _metrics(lane: Lane, version: str) -> list[dict]:
    path = lane.root / "state" / "trainer-metrics" / f"{version}.jsonl"
    if not version or not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# --------------------------------------------------------------------------- report
def summarize(vr: VersionResult, base: VersionResult | None, relevance: bool = True) -> dict:
    from rlhb.evaluation.quality import quality_report
    from rlhb.evaluation.stats import compare_to_base, wilson_interval

    row = {
        "algorithm": vr.algorithm,
        "label": ALGORITHM_LABELS.get(vr.algorithm, vr.algorithm),
        "version": vr.version,
        "round": vr.round,
        "status": vr.status,
        "reason": vr.reason,
        "train_seconds": round(vr.train_seconds, 1),
        "evaluated_at_s": round(vr.evaluated_at, 1),
    }
    if vr.round_info:
        row["round_info"] = {
            k: vr.round_info.get(k)
            for k in ("records", "train_records", "heldout_records", "gate", "parent", "train_seconds", "seconds")
        }
    if not vr.served:
        return row
    k, n = sum(s.asker_liked for s in vr.served), len(vr.served)
    ci = wilson_interval(k, n)
    row.update(
        likes=k,
        n=n,
        like_rate=ci.rate,
        ci_low=ci.low,
        ci_high=ci.high,
        mean_p_like=sum(s.p_like for s in vr.served) / n,
        degenerate_share=sum(bool(s.degenerate) for s in vr.served) / n,
    )
    if base is not None and base.served and vr is not base:
        kb, nb = sum(s.asker_liked for s in base.served), len(base.served)
        row["vs_base"] = compare_to_base(k, n, kb, nb).as_dict()
    quality = quality_report([s.question for s in vr.served], [s.answer for s in vr.served], relevance=relevance)
    row["quality"] = quality.as_dict()
    if vr.train_metrics:
        last = vr.train_metrics[-1]
        row["train_last"] = {k: v for k, v in last.items() if isinstance(v, int | float)}
    return row


def build_report(cfg: DemoConfig, results: list[VersionResult], phases: dict, total: float, model_path: str) -> dict:
    from rlhb.evaluation.stats import power_at_n, required_n_per_arm

    base = next((r for r in results if r.algorithm == "base"), None)
    rows = [summarize(r, base) for r in results]
    power = {}
    if base is not None and base.served:
        p0 = sum(s.asker_liked for s in base.served) / len(base.served)
        n = len(base.served)
        p0c = min(max(p0, 0.01), 0.98)
        power = {
            "base_rate": p0,
            "n_per_arm": n,
            "power_for_lift": {f"+{d:.2f}": power_at_n(p0c, min(0.99, p0c + d), n) for d in (0.05, 0.1, 0.15)},
            "n_needed_for_lift_0.10_at_80pct": required_n_per_arm(p0c, min(0.99, p0c + 0.1)),
        }
    side_by_side = []
    finals = {}
    for r in results:
        if r.algorithm != "base" and r.served:
            finals[r.algorithm] = r
    if base is not None and base.served:
        by_q = {}
        for s in base.served:
            by_q.setdefault(s.question, s)
        for q in list(by_q)[: cfg.show_answers]:
            entry = {"question": q, "base": by_q[q].answer}
            for algo, r in finals.items():
                match = next((s for s in r.served if s.question == q), None)
                label = f"{algo}:{r.version}" + (" (rejected, never served)" if r.status == "rejected" else "")
                entry[label] = match.answer if match else ""
            side_by_side.append(entry)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model_path": model_path,
        "total_seconds": round(total, 1),
        "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
        "versions": rows,
        "power": power,
        "side_by_side": side_by_side,
    }


def format_table(report: dict) -> str:
    head = (
        f"{'algorithm':<18}{'version':<40}{'status':<10}{'n':>5}{'like rate':>10}{'95% CI':>16}"
        f"{'lift':>8}{'p (z)':>9}{'p (Fisher)':>11}{'sig':>5}{'relev.':>8}{'rep3':>7}{'words':>7}{'cut':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in report["versions"]:
        if "n" not in row:
            lines.append(f"{row['label']:<18}{row['version'][:39]:<40}{row['status']:<10}  ({row.get('reason', '')})")
            continue
        vs = row.get("vs_base", {})
        q = row.get("quality", {})
        lines.append(
            f"{row['label']:<18}{row['version'][:39]:<40}{row['status']:<10}{row['n']:>5}{row['like_rate']:>10.3f}"
            f"{'[' + format(row['ci_low'], '.3f') + ', ' + format(row['ci_high'], '.3f') + ']':>16}"
            f"{(format(vs['lift'], '+.3f') if vs else ''):>8}"
            f"{(format(vs['p_z_one_sided'], '.3g') if vs else ''):>9}"
            f"{(format(vs['p_fisher_one_sided'], '.3g') if vs else ''):>11}"
            f"{('yes' if vs.get('significant') else 'no') if vs else '':>5}"
            f"{(q.get('relevance') or 0):>8.3f}{q.get('repeated_ngram_rate', 0):>7.3f}"
            f"{q.get('mean_words', 0):>7.1f}{q.get('cut_off_share', 0):>6.2f}"
        )
    return "\n".join(lines)


def write_report(cfg: DemoConfig, report: dict, results: list[VersionResult], say) -> None:
    table = format_table(report)
    judged_offline = any(row["status"] == "rejected" and "n" in row for row in report["versions"])
    say("like rate per adapter version (held-out questions, one simulated user per answer):\n" + table)
    if judged_offline:
        say("rejected candidates were never served: the demo generated their held-out answers itself")
    if report["power"]:
        p = report["power"]
        say(
            f"power: base rate {p['base_rate']:.3f}, n={p['n_per_arm']} per arm; power to detect "
            + ", ".join(f"{k}: {v:.2f}" for k, v in p["power_for_lift"].items())
            + f"; n per arm for +0.10 at 80%: {p['n_needed_for_lift_0.10_at_80pct']}"
        )
    for entry in report["side_by_side"]:
        say(f"Q: {entry['question']}")
        for key, answer in entry.items():
            if key != "question":
                say(f"   {key:>30}: {answer.strip()[:300]!r}")
    say(
        f"total wall time {report['total_seconds']:.0f}s; phases: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in report["phases_seconds"].items())
    )
    (cfg.out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = ["# rlhb demo report", "", "```", table, "```", ""]
    if judged_offline:
        md += ["Rejected candidates were never served; their answers were generated in the demo process", ""]
    md += [f"Total wall time: {report['total_seconds']:.0f} s", ""]
    md += ["## Answers side by side", ""]
    for entry in report["side_by_side"]:
        md.append(f"**Q:** {entry['question']}")
        md += [f"- *{k}*: {v.strip()}" for k, v in entry.items() if k != "question"]
        md.append("")
    (cfg.out_dir / "report.md").write_text("\n".join(md))
    with open(cfg.out_dir / "served.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            for s in r.served:
                f.write(json.dumps({"algorithm": r.algorithm, "version": r.version, **asdict(s)}) + "\n")
    plot(cfg, report, results)
    say(f"wrote {cfg.out_dir / 'report.md'}, report.json, served.jsonl and demo.png")


def plot(cfg: DemoConfig, report: dict, results: list[VersionResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    rows = [r for r in report["versions"] if "n" in r]
    base = next((r for r in rows if r["algorithm"] == "base"), None)
    colors = {"rlhb": "tab:blue", "rlhbc": "tab:orange", "rlhf": "tab:green", "sft": "tab:purple", "pro": "tab:red"}
    for algo in cfg.algorithms:
        pts = ([base] if base else []) + [r for r in rows if r["algorithm"] == algo]
        if not pts:
            continue
        x = [r["round"] for r in pts]
        y = [r["like_rate"] for r in pts]
        err = [
            [max(0.0, r["like_rate"] - r["ci_low"]) for r in pts],
            [max(0.0, r["ci_high"] - r["like_rate"]) for r in pts],
        ]
        ax.errorbar(
            x, y, yerr=err, marker="o", capsize=4, label=ALGORITHM_LABELS.get(algo, algo), color=colors.get(algo)
        )
    ax.set_xlabel("training round (0 = base)")
    ax.set_ylabel("held-out like rate (95% Wilson CI)")
    ax.set_title("Like rate per adapter version")
    ax.legend()
    ax = axes[1]
    for algo in cfg.algorithms:
        pts = ([base] if base else []) + [r for r in rows if r["algorithm"] == algo]
        if not pts:
            continue
        x = [r["round"] for r in pts]
        ax.plot(
            x,
            [r["quality"].get("relevance") or 0 for r in pts],
            marker="o",
            color=colors.get(algo),
            label=f"{ALGORITHM_LABELS.get(algo, algo)} relevance",
        )
        ax.plot(
            x,
            [r["quality"]["repeated_ngram_rate"] for r in pts],
            marker="x",
            linestyle="--",
            color=colors.get(algo),
            label=f"{ALGORITHM_LABELS.get(algo, algo)} repeated 3-grams",
        )
        ax.plot(
            x,
            [r["quality"]["cut_off_share"] for r in pts],
            marker=".",
            linestyle=":",
            color=colors.get(algo),
            label=f"{ALGORITHM_LABELS.get(algo, algo)} cut-off share",
        )
    ax.set_xlabel("training round (0 = base)")
    ax.set_title("Quality (not optimized by the trainer)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for algo in cfg.algorithms:
        series, offset = [], 0
        for r in results:
            if r.algorithm != algo:
                continue
            for m in r.train_metrics:
                score = m.get("d_reward", m.get("mean_score"))
                if isinstance(score, int | float):
                    series.append((offset + m.get("iteration", 0), score, m.get("kl")))
            offset += max(1, len(r.train_metrics))
        if series:
            ax.plot(
                [s[0] for s in series],
                [s[1] for s in series],
                marker="o",
                color=colors.get(algo),
                label=f"{ALGORITHM_LABELS.get(algo, algo)} reward",
            )
            kl = [(s[0], s[2]) for s in series if isinstance(s[2], int | float)]
            if kl:
                ax.plot(
                    [s[0] for s in kl],
                    [s[1] for s in kl],
                    marker="x",
                    linestyle="--",
                    color=colors.get(algo),
                    label=f"{ALGORITHM_LABELS.get(algo, algo)} KL",
                )
    ax.set_xlabel("training iteration (all rounds)")
    ax.set_title("Training curves")
    ax.legend(fontsize=7)
    fig.suptitle(f"rlhb demo: users '{cfg.users}', total {report['total_seconds'] / 60:.1f} min")
    fig.tight_layout()
    fig.savefig(cfg.out_dir / "demo.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny model, a few answers, one short round (about a minute)."),
    out: Path = typer.Option(Path("rlhb-demo"), help="Output folder (report.md, report.json, demo.png, logs)."),
    algorithms: str = typer.Option("rlhb,rlhbc,rlhf", help="Comma-separated lanes: rlhb, rlhbc, rlhf, sft, pro."),
    rounds: int = typer.Option(None, min=1, help="Training rounds per algorithm."),
    steps: int = typer.Option(None, min=1, help="Training iterations per round."),
    base_traffic: int = typer.Option(None, min=1, help="Answers served by base before round 1."),
    traffic_per_round: int = typer.Option(None, min=0, help="Answers served by each new version."),
    eval_samples: int = typer.Option(None, min=1, help="Answers per held-out question per version."),
    users: str = typer.Option("concise", help="Simulated users: concise | example | warm | package.module:Class."),
    seed: int = typer.Option(0, help="Seed."),
    judge_rejected: bool = typer.Option(
        True, "--judge-rejected/--no-judge-rejected", help="Measure a rejected candidate offline (never served)."
    ),
) -> None:
    """The closed loop with simulated users: serve, react, aggregate, train, gate, hot-swap, report."""
    overrides = {
        k: v
        for k, v in dict(
            rounds=rounds,
            steps=steps,
            base_traffic=base_traffic,
            traffic_per_round=traffic_per_round,
            eval_samples=eval_samples,
            judge_rejected=judge_rejected,
        ).items()
        if v is not None
    }
    try:
        names = tuple(a.strip() for a in algorithms.split(",") if a.strip())
        if quick:
            cfg = quick_config(out, algorithms=names, users=users, seed=seed, **overrides)
        else:
            cfg = DemoConfig(out_dir=out, algorithms=names, users=users, seed=seed, **overrides)
        from rlhb.simulate.users import load_user_model

        load_user_model(users)
    except ValueError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        run_demo(cfg)
    except (RuntimeError, TimeoutError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
