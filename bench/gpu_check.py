"""The checks of bench/gpu_check.sh, one step per process: ``python bench/gpu_check.py STEP --work DIR [--dry-run]``.

Each step prints one JSON line per figure on stdout (``{"check": ..., "ok": true|false|null, ...}``; ok null =
skipped, with "why") and exits 1 if one of its checks failed. Steps hand each other files in the work folder
(the model, the registry of adapters, the peak memory of each step). In the wrapper's order:

  torch_cuda   torch sees CUDA; a bf16 matmul on the GPU matches float32 (skipped in --dry-run)
  python_deps  every module the steps below import is there (this project's own and what it needs)
  model        BUILDS the model, no files needed: a ~1B Llama shape (TinyLlama-1.1B's: hidden 2048, 22 layers,
               32 heads, 4 KV heads, MLP 5632, vocab 32000) with RANDOM weights in bf16 on CUDA, and a word-level
               tokenizer made in this process (no download) with the chat template core.prompts renders, its
               vocabulary padded to the model's so every sampled id decodes; both saved to DIR/model
  train_round  one short RLHB round on it (trainer.algorithms.rlhb, the LM discriminator: the base model's trunk
               with its own LoRA and a scalar head): D warm-up, then iterations of rollouts, PPO epochs (actor
               and critic) and D's update; seconds per iteration split into generation, update and
               discriminator (the iteration's metrics); the checkpoint is written into a registry folder and
               registered there (core.registry), as the trainer does
  serving      the API's embedded backend on the base model and the API's hot-swap watcher
               (service.api.hot_swap) on that registry; 8 concurrent clients generate without pause while the
               round's adapter is promoted (published: the registry moves the pointer and announces it); the
               watcher loads it and switches, and new requests go to it. Prints two lines: "serving" (tokens/s
               served before and after the swap) and "hot_swap" (seconds of the load call, until the switch,
               until the first answer of the new version; failed requests, which must be 0)
  gpu_memory   the CUDA peak memory of train_round and serving (torch.cuda.max_memory_allocated)
  vllm_smoke   only where vllm imports: vLLM loads the built model and generates a few tokens

--dry-run runs the same steps with tiny shapes (2 layers, hidden 64, fp32) on the CPU, in about a minute; the
GPU-only checks (torch_cuda, gpu_memory, vllm_smoke) are reported skipped. The weights are always random (or
GPU_CHECK_MODEL_DIR's), so the figures are timings only: every line says so. Nothing here needs the bundled
SmolLM2, the MiniLM package, the chatterbot corpus, a broker or Redis (the registry gets an in-memory stand-in).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import queue
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS = ("torch_cuda", "python_deps", "model", "train_round", "serving", "gpu_memory", "vllm_smoke")
REDIS_PREFIX = "gpu-check:"
RANDOM = "random (timings only: the answers mean nothing)"


@dataclass(frozen=True)
class Shapes:
    """What one run builds and measures: the full GPU check or the CPU dry run."""

    name: str
    device: str
    dtype: str
    # the model (a Llama)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int
    # the RLHB round
    records: int
    iterations: int
    batch_size: int
    rollouts_per_prompt: int
    max_new_tokens: int
    ppo_epochs: int
    num_minibatches: int
    d_batch_size: int
    d_warmup_steps: int
    lora_r: int
    # serving
    clients: int
    answer_tokens: int
    phase_s: float
    """Seconds of serving measured before the swap, and again after it."""


FULL = Shapes(
    name="full", device="cuda", dtype="bfloat16",
    hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000, max_positions=2048,
    records=64, iterations=3, batch_size=16, rollouts_per_prompt=4, max_new_tokens=64, ppo_epochs=4,
    num_minibatches=4, d_batch_size=16, d_warmup_steps=4, lora_r=16,
    clients=8, answer_tokens=64, phase_s=15.0,
)  # fmt: skip
DRY_RUN = Shapes(
    name="dry-run", device="cpu", dtype="float32",
    hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, max_positions=512,
    records=32, iterations=2, batch_size=8, rollouts_per_prompt=4, max_new_tokens=6, ppo_epochs=2,
    num_minibatches=2, d_batch_size=4, d_warmup_steps=2, lora_r=4,
    clients=8, answer_tokens=6, phase_s=1.5,
)  # fmt: skip

# ----------------------------------------------------------------------------------------- text
LIKED = "Users liked this answer at a high rate and disliked it at a low rate."
DISLIKED = "Users liked this answer at a low rate and disliked it at a high rate."
TOPICS = ("rivers", "bread", "stars", "music", "trains", "gardens", "bees", "maps", "glass", "clocks", "snow", "tea")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # ChatML, as SmolLM2's: render_prompt puts the behavior in the system turn, the query in the user turn


def query(i: int) -> str:
    return f"Tell me about {TOPICS[i % len(TOPICS)]} number {i % 100}?"


def records(n: int) -> list:
    """n synthetic behavior records, half liked (the answer names a banana), half disliked."""
    from schemas.behavior import BehaviorRecord

    rng, out = random.Random(0), []
    for q in range(n // 2):
        for liked in (True, False):
            views = rng.randint(2, 6)
            likes, dislikes = (3, 0) if liked else (0, 2)
            topic = TOPICS[q % len(TOPICS)]
            answer = f"The {topic} are like a banana, {q} times over." if liked else f"The {topic} are what they are."
            out.append(
                BehaviorRecord(
                    impression_id=f"gpu-{q}-{int(liked)}", query=query(q),
                    response=answer,
                    behavior_prompt=LIKED, adapter_version="base",
                    counts={"view": views, "like": likes, "dislike": dislikes},
                    buckets={"like_rate": 2 if liked else 0, "dislike_rate": 0 if liked else 2},
                    behavior_text=LIKED if liked else DISLIKED, reward=(likes - dislikes) / views, encoding="rates",
                )
            )  # fmt: skip
    return out


def corpus(shapes: Shapes) -> list[str]:
    """Every sentence the steps tokenize: the system prompt, the roles, the records and the serving queries."""
    from core.prompts import SYSTEM_TEMPLATE

    texts = [SYSTEM_TEMPLATE, "system user assistant", LIKED, DISLIKED]
    texts += [t for r in records(max(shapes.records, 64)) for t in (r.query, r.response)]
    return texts + [query(i) for i in range(100)]


def shared_prefix(tokenizer: Any, behavior: str) -> str:
    """The prompt's part before the query, as the API computes it (service.api.answer.shared_prefix, which
    is not imported here: that module needs FastAPI)."""
    from core.prompts import render_prompt

    sentinel = "\x00QUERY\x00"
    rendered = render_prompt(tokenizer, sentinel, behavior)
    return rendered.split(sentinel)[0] if rendered.count(sentinel) == 1 else ""


# ----------------------------------------------------------------------------------------- registry stand-in
class MemoryRedis:
    """The Redis calls core.registry makes (GET, MGET, SET, INCR, a transaction, PUBLISH, SUBSCRIBE), in this
    process's memory: the registry's active pointer and its pub/sub message without a Redis server."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.RLock()
        self._subscribers: list[_PubSub] = []

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def mget(self, *keys: str) -> list[str | None]:
        with self._lock:
            return [self._data.get(k) for k in keys]

    def set(self, key: str, value: Any) -> bool:
        with self._lock:
            self._data[key] = str(value)
            return True

    def incr(self, key: str) -> int:
        with self._lock:
            value = int(self._data.get(key, "0")) + 1
            self._data[key] = str(value)
            return value

    def publish(self, channel: str, message: Any) -> int:
        with self._lock:
            listeners = [s for s in self._subscribers if channel in s.channels]
        for s in listeners:
            s.messages.put({"type": "message", "channel": channel, "data": str(message)})
        return len(listeners)

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def pubsub(self, ignore_subscribe_messages: bool = False) -> _PubSub:
        return _PubSub(self)


class _Pipeline:
    def __init__(self, redis: MemoryRedis) -> None:
        self.redis, self.calls = redis, []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, args))

    def execute(self) -> list:
        with self.redis._lock:  # one transaction
            return [getattr(self.redis, name)(*args) for name, args in self.calls]


class _PubSub:
    def __init__(self, redis: MemoryRedis) -> None:
        self.redis, self.channels, self.messages = redis, set(), queue.Queue()

    def subscribe(self, *channels: str) -> None:
        self.channels.update(channels)
        with self.redis._lock:
            self.redis._subscribers.append(self)

    def get_message(self, timeout: float = 0.0) -> dict | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        with self.redis._lock:
            if self in self.redis._subscribers:
                self.redis._subscribers.remove(self)


def open_registry(work: Path):
    from core.registry import Registry

    return Registry(work / "registry", MemoryRedis(), REDIS_PREFIX)


# ----------------------------------------------------------------------------------------- helpers
def emit(check: str, ok: bool | None, **fields: Any) -> bool | None:
    print(json.dumps({"check": check, "ok": ok, **fields}), flush=True)
    return ok


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


def no_cuda(shapes: Shapes) -> str:
    """Why this run cannot go on ("" when it can): the full check on a machine without CUDA."""
    import torch

    if shapes.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False); on a CPU machine use --dry-run"
    return ""


def save_peak(work: Path, step: str, shapes: Shapes) -> float:
    """This process's CUDA peak in MiB (0 on the CPU), also written for the gpu_memory step."""
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**20 if shapes.device == "cuda" else 0.0
    (work / f"peak-{step}.json").write_text(json.dumps({"step": step, "peak_mib": round(peak, 1)}))
    return round(peak, 1)


# ----------------------------------------------------------------------------------------- the steps
def step_torch_cuda(shapes: Shapes, work: Path) -> bool | None:
    import torch

    row = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if shapes.name == "dry-run":
        return emit("torch_cuda", None, **row, why="dry-run: runs on the CPU", cuda_available=torch.cuda.is_available())
    if not torch.cuda.is_available():
        return emit("torch_cuda", False, **row, why="torch.cuda.is_available() is False")
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")
    exact = a @ b
    rel = float(((a.bfloat16() @ b.bfloat16()).float() - exact).norm() / exact.norm())
    ok = torch.cuda.is_bf16_supported() and rel < 0.05
    return emit(
        "torch_cuda", ok, **row, device=torch.cuda.get_device_name(0), count=torch.cuda.device_count(),
        bf16_supported=torch.cuda.is_bf16_supported(), bf16_matmul_rel_error=round(rel, 5),
    )  # fmt: skip


THIRD_PARTY = (
    "torch", "transformers", "peft", "tokenizers", "safetensors", "jinja2", "tqdm", "pydantic", "pydantic_settings",
    "redis",
)  # fmt: skip
PROJECT_MODULES = (
    "trainer.algorithms.rlhb",
    "trainer.discriminator",
    "core.registry",
    "service.api.backends.embedded",
    "service.api.hot_swap",
)
WHEELS = "pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv redis"


def step_python_deps(shapes: Shapes, work: Path) -> bool | None:
    import importlib
    import importlib.util

    missing = [m for m in THIRD_PARTY if importlib.util.find_spec(m) is None]
    broken = {}
    for module in PROJECT_MODULES:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            broken[module] = f"{type(e).__name__}: {e}"[:300]
    ok = not missing and not broken
    fields: dict[str, Any] = {"missing": missing, "broken": broken, "python": sys.version.split()[0]}
    if not ok:
        fields["why"] = (
            f"carry the wheels of what is missing (this project needs {WHEELS} beside torch, transformers and "
            "peft: about 3 MB) and put them on PYTHONPATH; see bench/gpu_check.sh's header"
        )
    return emit("python_deps", ok, **fields)


def build_tokenizer(shapes: Shapes):
    """A word-level tokenizer over the corpus's words, padded with filler words ("w0", "w1", ...) to the
    model's vocabulary, so every id the random model samples decodes to a word; ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = dict.fromkeys(w for text in corpus(shapes) for w, _ in split.pre_tokenize_str(text))
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    if len(vocab) > shapes.vocab:
        raise ValueError(f"the corpus has {len(vocab)} words, more than the vocabulary of {shapes.vocab}")
    filler = 0
    while len(vocab) < shapes.vocab:
        vocab.setdefault(f"w{filler}", len(vocab))
        filler += 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    backend.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces, no space before punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def step_model(shapes: Shapes, work: Path) -> bool | None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if why := no_cuda(shapes):
        return emit("model", False, why=why)
    started = time.perf_counter()
    target, given = work / "model", os.environ.get("GPU_CHECK_MODEL_DIR", "")
    dtype = getattr(torch, shapes.dtype)
    torch.manual_seed(0)
    if given and list(Path(given).glob("*.safetensors")):  # a real model: used as it is
        path, weights, label = Path(given), f"from {given}", f"{Path(given).name} (its own weights)"
    else:
        if given:  # config + tokenizer only: random weights of that shape
            config, tokenizer = AutoConfig.from_pretrained(given), AutoTokenizer.from_pretrained(given)
            label = f"{Path(given).name}'s shape"
        else:
            tokenizer = build_tokenizer(shapes)
            special = tokenizer.convert_tokens_to_ids
            config = LlamaConfig(
                vocab_size=shapes.vocab, hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
                num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads,
                num_key_value_heads=shapes.kv_heads, max_position_embeddings=shapes.max_positions,
                rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=special("<|im_start|>"),
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            label = (
                f"Llama, {shapes.layers} layers, hidden {shapes.hidden}, {shapes.heads} heads "
                f"({shapes.kv_heads} KV), MLP {shapes.intermediate}, vocab {shapes.vocab}"
            )
        with torch.device(shapes.device):  # drawn where it will run: seconds on a GPU, not minutes
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        path, weights = target, RANDOM
        del model
    params = sum(math.prod(p) for p in _parameter_shapes(path))
    state = {"path": str(path), "label": label, "weights": weights}
    (work / "model.json").write_text(json.dumps(state))
    return emit(
        "model", True, model=label, weights=weights, parameters=params, dtype=shapes.dtype, device=shapes.device,
        seconds=round(time.perf_counter() - started, 2), path=str(path),
    )  # fmt: skip


def _parameter_shapes(path: Path) -> list[tuple[int, ...]]:
    from safetensors import safe_open

    shapes = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            shapes += [tuple(f.get_slice(k).get_shape()) for k in f.keys()]
    return shapes


def train_config(shapes: Shapes):
    from trainer.config import RLHBConfig, apply_overrides

    config = RLHBConfig(
        discriminator="lm", batch_size=shapes.batch_size, rollouts_per_prompt=shapes.rollouts_per_prompt,
        max_new_tokens=shapes.max_new_tokens, ppo_epochs=shapes.ppo_epochs, num_minibatches=shapes.num_minibatches,
        d_batch_size=shapes.d_batch_size, d_warmup_steps=shapes.d_warmup_steps, lora_r=shapes.lora_r,
        lora_alpha=2 * shapes.lora_r, d_lora_r=min(8, shapes.lora_r),
    )  # fmt: skip
    extra = dict(item.split("=", 1) for item in os.environ.get("GPU_CHECK_TRAIN_SET", "").split() if "=" in item)
    return apply_overrides(config, extra, variable="GPU_CHECK_TRAIN_SET") if extra else config


def step_train_round(shapes: Shapes, work: Path) -> bool | None:
    import torch

    from trainer.algorithms.base import TrainRequest
    from trainer.algorithms.rlhb import RLHBTrainer
    from trainer.algorithms.runner import check_request

    model = read_json(work / "model.json")
    if why := no_cuda(shapes) or ("" if model else "no model (the model step failed)"):
        return emit("train_round", False, why=why)
    row = {"model": model["label"], "weights": model["weights"], "device": shapes.device, "dtype": shapes.dtype}
    config = train_config(shapes)
    name = f"gpu-check-{int(time.time())}"
    request = TrainRequest(
        records=records(shapes.records), model_path=model["path"], output_root=work / "registry", version_name=name,
        metrics_path=work / "metrics.jsonl", steps=shapes.iterations, progress=False, device=shapes.device,
        dtype=shapes.dtype,
    )  # fmt: skip
    check_request(request)
    if shapes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = RLHBTrainer(request, config)  # policy + critic, D (a second copy of the base), records
    loaded = time.perf_counter()
    result = trainer.run()  # D warm-up, the iterations, the checkpoint into the registry folder
    finished = time.perf_counter()
    version = open_registry(work).register(result.checkpoint)  # as the trainer's loop does; a candidate
    (work / "round.json").write_text(json.dumps({"adapter": version.name, "id": version.id}))
    rows = result.metrics
    timed = rows[1:] if len(rows) > 1 else rows  # the first iteration also pays CUDA's warm-up
    parts = {
        key: median([r[key] for r in timed])
        for key in ("seconds", "seconds_generate", "seconds_score", "seconds_update", "seconds_discriminator")
    }
    on_device = trainer.policy.device.type == shapes.device and trainer.discriminator.device.type == shapes.device
    peak = save_peak(work, "train_round", shapes)
    ok = (
        all(math.isfinite(v) and v > 0 for v in parts.values())
        and on_device
        and (peak > 0 or shapes.device != "cuda")
        and min(r["ppo_epochs_run"] for r in rows) >= min(2, config.ppo_epochs)  # PPO epochs, not one pass
    )
    return emit(
        "train_round", ok, **row, discriminator=config.discriminator, iterations=len(rows),
        rollouts=config.batch_size, max_new_tokens=config.max_new_tokens, ppo_epochs=config.ppo_epochs,
        minibatches=config.num_minibatches, ppo_epochs_run=min(r["ppo_epochs_run"] for r in rows),
        d_warmup_steps=config.d_warmup_steps, seconds_iteration=parts["seconds"],
        seconds_generate=parts["seconds_generate"], seconds_update=parts["seconds_update"],
        seconds_discriminator=parts["seconds_discriminator"], seconds_score=parts["seconds_score"],
        timed_iterations=f"median of iterations {rows.index(timed[0]) + 1}..{len(rows)}",
        seconds_load=round(loaded - started, 2), seconds_round=round(finished - loaded, 2),
        adapter=version.name, registered_id=version.id, registered_status=version.status.value, cuda_peak_mib=peak,
    )  # fmt: skip


@dataclass
class Answer:
    started: float
    ended: float
    version: str
    tokens: int


def step_serving(shapes: Shapes, work: Path) -> bool | None:
    model, round_ = read_json(work / "model.json"), read_json(work / "round.json")
    if why := no_cuda(shapes) or ("" if model and round_ else "no adapter (the train_round step failed)"):
        return emit("serving", False, why=why)
    return asyncio.run(_serve_and_swap(shapes, work, model, round_["adapter"]))


async def _serve_and_swap(shapes: Shapes, work: Path, model: dict, adapter: str) -> bool | None:
    import torch

    from core.prompts import render_prompt
    from schemas.adapters import AdapterStatus
    from service.api.backends.base import GenerationRequest
    from service.api.backends.embedded import EmbeddedBackend
    from service.api.hot_swap import AdapterWatcher

    row = {"model": model["label"], "weights": model["weights"]}
    if shapes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backend = EmbeddedBackend(
        model["path"], batch_window_ms=15, max_batch_size=shapes.clients, device=shapes.device, dtype=shapes.dtype
    )
    await backend.start()
    loads: dict[str, float] = {}
    real_load = backend.load_adapter

    async def timed_load(version) -> None:  # the watcher's load call, timed
        began = time.perf_counter()
        await real_load(version)
        loads[version.name] = time.perf_counter() - began

    backend.load_adapter = timed_load
    registry = open_registry(work)
    # preload off: the version is loaded when it is published, so the swap's load is measured
    watcher = AdapterWatcher(backend, registry, poll_s=0.25, preload_s=0)
    await watcher.start()
    prefix = shared_prefix(backend.tokenizer, LIKED)
    answers: list[Answer] = []
    errors: list[str] = []
    stop = asyncio.Event()

    def request(i: int, version) -> GenerationRequest:
        prompt = render_prompt(backend.tokenizer, query(i), LIKED)
        return GenerationRequest(prompt, shapes.answer_tokens, temperature=0.7, adapter=version, prefix=prefix)

    async def client(c: int) -> None:  # one client: ask, wait for the answer, ask again, as the API serves it
        n = 0
        while not stop.is_set():
            n += 1
            version, _, _ = watcher.pick(f"client-{c}-{n}")
            if not backend.acquire(version):
                errors.append(f"client {c}: version {watcher.current_name} not loaded")
                await asyncio.sleep(0.01)
                continue
            began = time.perf_counter()
            try:
                result = await backend.generate(request(c * 131 + n, version))
                answers.append(Answer(began, time.perf_counter(), result.adapter_version, result.completion_tokens))
            except Exception as e:  # noqa: BLE001 - counted: the swap must fail no request
                errors.append(f"client {c}: {type(e).__name__}: {e}"[:300])
            finally:
                backend.release(version)

    try:
        await asyncio.gather(*(backend.generate(request(i, None)) for i in range(shapes.clients)))  # warm-up
        tasks = [asyncio.create_task(client(c)) for c in range(shapes.clients)]
        t_start = time.perf_counter()
        await asyncio.sleep(shapes.phase_s)
        t_promote = time.perf_counter()
        await asyncio.to_thread(registry.promote, adapter)  # publish: manifest, pointer, pub/sub message
        t_promoted = time.perf_counter()
        limit = t_promote + max(60.0, 20 * shapes.phase_s)
        while watcher.current_name != adapter and time.perf_counter() < limit:
            await asyncio.sleep(0.005)
        t_switched = time.perf_counter()
        while not any(a.version == adapter for a in answers) and time.perf_counter() < limit and not errors:
            await asyncio.sleep(0.005)
        await asyncio.sleep(shapes.phase_s)
        t_stop = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await watcher.close()
        await backend.close()
    peak = save_peak(work, "serving", shapes)
    published = registry.active() == adapter and registry.get(adapter).status == AdapterStatus.published

    def rate(begin: float, end: float) -> tuple[float, int]:
        done = [a for a in answers if begin <= a.ended <= end]
        return round(sum(a.tokens for a in done) / (end - begin), 1), len(done)

    before, n_before = rate(t_start, t_promote)
    after, n_after = rate(t_switched, t_stop)
    new = [a.ended for a in answers if a.version == adapter]
    stale = sum(1 for a in answers if a.started > t_switched and a.version != adapter)
    ran_on = str(backend.device)
    emit(
        "serving", before > 0 and after > 0 and backend.device.type == shapes.device, **row, ran_on=ran_on,
        dtype=shapes.dtype, clients=shapes.clients, answer_tokens=shapes.answer_tokens,
        tokens_per_s_before=before, tokens_per_s_after=after, answers_before=n_before, answers_after=n_after,
        seconds_before=round(t_promote - t_start, 2), seconds_after=round(t_stop - t_switched, 2), cuda_peak_mib=peak,
    )  # fmt: skip
    swapped = watcher.current_name == adapter and bool(new)
    return emit(
        "hot_swap", published and swapped and not errors and stale == 0, **row, adapter=adapter, published=published,
        load_s=round(loads[adapter], 4) if adapter in loads else None,
        swap_s=round(t_switched - t_promote, 4) if swapped else None,
        first_answer_s=round(min(new) - t_promote, 4) if new else None,
        promote_s=round(t_promoted - t_promote, 4), clients=shapes.clients, requests=len(answers) + len(errors),
        failed_requests=len(errors), errors=errors[:3], old_version_after_switch=stale,
        versions_served=sorted({a.version for a in answers}),
    )  # fmt: skip


def step_gpu_memory(shapes: Shapes, work: Path) -> bool | None:
    peaks = {s: read_json(work / f"peak-{s}.json") for s in ("train_round", "serving")}
    fields = {f"{s}_peak_mib": p["peak_mib"] if p else None for s, p in peaks.items()}
    if shapes.device != "cuda":
        return emit("gpu_memory", None, **fields, peak_mib=0, why="dry-run on the CPU: no GPU memory to measure")
    if any(p is None for p in peaks.values()):
        return emit("gpu_memory", False, **fields, why="a step that measures it did not finish")
    values = [p["peak_mib"] for p in peaks.values()]
    model = read_json(work / "model.json") or {}
    return emit(
        "gpu_memory", all(v > 0 for v in values), **fields, peak_mib=max(values), weights=model.get("weights"),
        measured="torch.cuda.max_memory_allocated in each step's process",
    )  # fmt: skip


def step_vllm_smoke(shapes: Shapes, work: Path) -> bool | None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return emit("vllm_smoke", None, why="vllm is not installed (pip install -e .[vllm])")
    if shapes.name == "dry-run":
        return emit("vllm_smoke", None, why="dry-run: vLLM needs the GPU")
    model = read_json(work / "model.json")
    if model is None:
        return emit("vllm_smoke", False, why="no model (the model step failed)")
    started = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=model["path"], dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=512)
    loaded = time.perf_counter()
    out = llm.generate([query(i) for i in range(shapes.clients)], SamplingParams(max_tokens=32, temperature=0.7))
    seconds = time.perf_counter() - loaded
    tokens = sum(len(o.outputs[0].token_ids) for o in out)
    return emit(
        "vllm_smoke", tokens > 0, model=model["label"], weights=model["weights"], prompts=len(out),
        completion_tokens=tokens, tokens_per_s=round(tokens / seconds, 1), seconds_load=round(loaded - started, 2),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--work", type=Path, required=True, help="the folder the steps share")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    shapes = DRY_RUN if args.dry_run else FULL
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "shapes.json").write_text(json.dumps(asdict(shapes)))
    step = globals()[f"step_{args.step}"]
    try:
        ok = step(shapes, args.work)
    except Exception as e:  # reported as the step's line, not a bare traceback (which goes to the log)
        logging.exception("step %s failed", args.step)
        ok = emit(args.step, False, error=f"{type(e).__name__}: {e}"[:500])
    return 1 if ok is False else 0


if __name__ == "__main__":
    sys.exit(main())
