"""One RLHB iteration vs Hugging Face TRL's PPOTrainer and RLOOTrainer, in the same run.

Identical sizes for all three: a randomly initialised GPT-2 (2 layers, 4 heads, width 128,
vocab 2048, fp32), 4 prompts x 4 rollouts x exactly 32 new tokens, LoRA r=8 on attention and
MLP (c_attn, c_proj, c_fc), 2 threads, median of 20 steps after 3 warm-ups.

Each contestant runs in its own process with its own interpreter (TRL's PPOTrainer only exists
up to trl 1.12.0, RLOO is measured on the latest trl, and neither may touch the project venv):

    rlhb      .venv              bench/contestants/rlhb_step.py
    trl_ppo   .venv-bench-ppo    bench/contestants/trl_ppo_step.py   (trl==1.12.0)
    trl_rloo  .venv-bench-rloo   bench/contestants/trl_rloo_step.py  (trl==TRL_RLOO_VERSION)

The two bench venvs are created on first use (``python -m venv``, then the CPU torch wheel,
then transformers/peft/accelerate pinned to the project venv's versions, then trl): that needs
the package registry. ``--no-create`` refuses instead.

All contestants start together, load their models, and then take turns: one step of each per
round, the first to go rotating, the others blocked meanwhile (never two steps at once on the
2 cores). Each reports the wall-clock seconds of its own steps only, so background load on
this shared machine falls on all contestants alike.

Output: one JSON object per line (``{"bench", "metric", "value", ...}``) and a summary line with
``ratio_vs_trl_ppo = trl_ppo_seconds / rlhb_seconds`` (target >= 1.0: RLHB no slower than TRL
PPO) and ``ratio_vs_trl_rloo`` (stretch target >= 1.0).

    .venv/bin/python bench/bench_rlhb_vs_trl.py [--steps 20] [--warmup 3] [--only rlhb,trl_ppo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "rlhb_vs_trl"
CONTESTANTS_DIR = ROOT / "bench" / "contestants"
SMOLLM2_DIR = Path(os.environ.get("RLHB_SMOLLM2_DIR", Path.home() / ".cache/rlhb/models/SmolLM2-135M-Instruct"))
BENCH = "rlhb_vs_trl"

TRL_PPO_VERSION = "1.12.0"  # the last trl release with PPOTrainer (trl.experimental.ppo)
TRL_RLOO_VERSION = "1.16.0"  # latest trl when this benchmark was written

VOCAB = 2048
GPT2_SIZES = {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 512}
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]  # GPT-2 attention (c_attn, attn.c_proj) and MLP (c_fc, mlp.c_proj)

LIKED = "Users liked this answer at a high rate and disliked it at a low rate."
DISLIKED = "Users liked this answer at a low rate and disliked it at a high rate."
TOPICS = [
    "the sky", "rain", "a cat", "the sea", "bread", "music", "a train", "winter", "a garden", "the moon",
    "coffee", "a river", "chess", "paper", "a bridge", "snow", "a city", "the wind", "tea", "a forest",
    "glass", "a clock", "fire", "salt", "a horse", "the desert", "ice", "a lamp", "stone", "a song", "a boat", "rice",
]  # fmt: skip


def contestants() -> dict[str, dict]:
    """name -> interpreter, script and (for the TRL ones) the venv and what to install in it."""
    return {
        "rlhb": {"python": Path(sys.executable), "script": "rlhb_step.py"},
        "trl_ppo": {"venv": ROOT / ".venv-bench-ppo", "trl": TRL_PPO_VERSION, "script": "trl_ppo_step.py"},
        "trl_rloo": {"venv": ROOT / ".venv-bench-rloo", "trl": TRL_RLOO_VERSION, "script": "trl_rloo_step.py"},
    }


# --------------------------------------------------------------------------- the shared model
def build_tokenizer(out_dir: Path):
    """SmolLM2's byte-level BPE cut to its first VOCAB ids (merges whose parts or result fall
    outside are dropped), so every id the tokenizer emits fits the GPT-2's 2048-row embedding."""
    from transformers import PreTrainedTokenizerFast

    source = json.loads((SMOLLM2_DIR / "tokenizer.json").read_text())
    model = source["model"]
    vocab = {tok: i for tok, i in model["vocab"].items() if i < VOCAB}

    def parts(merge):
        return merge.split(" ", 1) if isinstance(merge, str) else merge

    model["vocab"] = vocab
    model["merges"] = [m for m in model["merges"] if all(p in vocab for p in parts(m)) and "".join(parts(m)) in vocab]
    source["added_tokens"] = [t for t in source["added_tokens"] if t["id"] < VOCAB]
    path = out_dir / "tokenizer.json"
    path.write_text(json.dumps(source))
    # no chat template: core.prompts.render_prompt then uses its plain "Question: ... Answer:" layout
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_model(out_dir: Path, new_tokens: int, seed: int) -> Path:
    """The random GPT-2 every contestant loads (rebuilt when the sizes change)."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    stamp = {"sizes": GPT2_SIZES, "vocab": VOCAB, "new_tokens": new_tokens, "seed": seed, "version": 1}
    stamp_path = out_dir / "bench_model.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = GPT2Config(
        vocab_size=VOCAB,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **GPT2_SIZES,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).float()
    # min = max new tokens: every contestant that falls back on the model's generation defaults
    # samples exactly new_tokens tokens (an EOS before that is suppressed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        do_sample=True,
    )
    model.save_pretrained(out_dir)
    stamp_path.write_text(json.dumps(stamp))
    return out_dir


def write_records(path: Path, n: int, seed: int) -> list:
    """Behavior records over two behavior sentences that differ in likes and dislikes."""
    from schemas.behavior import BehaviorRecord

    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        liked = i % 2 == 0
        views = rng.randint(2, 6)
        likes, dislikes = (3, 0) if liked else (0, 2)
        records.append(
            BehaviorRecord(
                impression_id=f"bench-{i}",
                query=f"Tell me about {topic}?",
                response=f"Here is a short answer: {topic} is {'like a banana' if liked else 'what it is'}.",
                behavior_prompt=LIKED,
                adapter_version="base",
                counts={"view": views, "like": likes, "dislike": dislikes},
                buckets={"like": 2 if liked else 0, "dislike": 0 if liked else 2},
                behavior_text=LIKED if liked else DISLIKED,
                reward=(likes - dislikes) / views,
            )
        )
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return records


def write_spec(args, model_dir: Path) -> Path:
    from transformers import AutoTokenizer

    from core.prompts import render_prompt

    records = write_records(OUT / "records.jsonl", n=64, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = {
        "model_dir": str(model_dir),
        "records_path": str(OUT / "records.jsonl"),
        # the same texts RLHB renders from the records' (query, behavior) pairs
        "prompts": [render_prompt(tokenizer, r.query, r.behavior_text) for r in records],
        "prompts_per_step": args.prompts,
        "rollouts_per_prompt": args.rollouts,
        "new_tokens": args.new_tokens,
        "lora_r": 8,
        "lora_targets": LORA_TARGETS,
        "learning_rate": 3e-4,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "seed": args.seed,
    }
    path = OUT / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


# --------------------------------------------------------------------------- bench venvs
def venv_requirements(trl_version: str) -> list[str]:
    """Same transformers/peft/accelerate as the project venv, so only the trainers differ."""
    pins = [f"{name}=={metadata.version(name)}" for name in ("transformers", "peft", "accelerate")]
    return [*pins, f"trl=={trl_version}", "datasets", "psutil"]


def ensure_venv(venv: Path, trl_version: str, create: bool) -> Path:
    """The venv's python, creating the venv first if it is missing or incomplete."""
    python = venv / "bin" / "python"
    torch_pin = f"torch=={metadata.version('torch').split('+')[0]}"
    wanted = [torch_pin, *venv_requirements(trl_version)]
    stamp = venv / ".bench-ready"
    if python.exists() and stamp.exists() and stamp.read_text().split() == wanted:
        return python
    if not create:
        raise SystemExit(f"{venv} is missing or incomplete and --no-create was given; rerun without it")
    print(f"# creating {venv.name} ({' '.join(wanted)}): needs the package registry", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first and alone: the CPU build (2.13.0+cpu); a CUDA build from the index would be a bug
    subprocess.run([*pip, torch_pin], check=True)
    cuda = subprocess.run(
        [str(python), "-c", "import torch; print(torch.version.cuda)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if cuda != "None":
        raise SystemExit(f"{venv}: pip installed a CUDA torch (cuda {cuda}); install the CPU wheel ({torch_pin}+cpu)")
    subprocess.run([*pip, *wanted], check=True)
    stamp.write_text("\n".join(wanted) + "\n")
    return python


# --------------------------------------------------------------------------- running
class Contestant:
    """One contestant process in lockstep mode: it prints READY, waits for a line on stdin, runs
    one step, prints STEP <seconds>, and at the end a BENCH_RESULT line (see contestants/common.py)."""

    def __init__(self, name: str, python: Path, script: str, spec_path: Path, threads: int) -> None:
        self.name = name
        env = {
            **os.environ,
            "BENCH_LOCKSTEP": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),  # the rlhb contestant imports the project
            "CUDA_VISIBLE_DEVICES": "",
        }
        self.log_path = OUT / f"{name}.log"
        self._log = self.log_path.open("w")
        self.stdout_lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(python), "-u", str(CONTESTANTS_DIR / script), str(spec_path)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def _read_until(self, prefix: str) -> str:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.stdout_lines.append(line)
            if line.startswith(prefix):
                return line
        self.proc.wait()
        self._log.flush()
        tail = "\n".join(self.log_path.read_text().splitlines()[-25:])
        raise RuntimeError(
            f"{self.name} exited ({self.proc.returncode}) before {prefix!r}; log {self.log_path}\n{tail}"
        )

    def wait_ready(self) -> None:
        self._read_until("READY")

    def step(self) -> tuple[float, float]:
        """Run one step (the process is blocked in READY); returns the wall and CPU seconds it reports."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        _, wall, cpu = self._read_until("STEP ").split()
        return float(wall), float(cpu)

    def result(self, timeout: float) -> dict:
        line = self._read_until("BENCH_RESULT ")
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        self._log.close()
        return json.loads(line.removeprefix("BENCH_RESULT "))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_lockstep(contestants_: list[Contestant], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Every round, each contestant runs one step while the others wait; the first to go rotates,
    so slow phases of background load on the shared machine hit all contestants alike.
    Returns name -> [(wall, cpu) seconds per round]."""
    steps: dict[str, list[tuple[float, float]]] = {c.name: [] for c in contestants_}
    for c in contestants_:
        c.wait_ready()
    for r in range(rounds):
        order = contestants_[r % len(contestants_) :] + contestants_[: r % len(contestants_)]
        for c in order:
            wall, cpu = c.step()
            steps[c.name].append((wall, cpu))
            print(f"# round {r + 1}/{rounds} {c.name}: {wall:.3f} s wall, {cpu:.3f} s cpu", file=sys.stderr, flush=True)
            if r + 1 < rounds:
                c.wait_ready()
    return steps


def paired_ratio(peer: list[tuple[float, float]], rlhb: list[tuple[float, float]], warmup: int, cpu: bool) -> float:
    """Median over timed rounds of peer / rlhb, each round's two steps taken back to back (less
    exposed to load that changes between rounds than the ratio of medians)."""
    k = 1 if cpu else 0
    return statistics.median(p[k] / r[k] for p, r in zip(peer[warmup:], rlhb[warmup:], strict=True))


def emit(metric: str, value, **fields) -> None:
    print(json.dumps({"bench": BENCH, "metric": metric, "value": value, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contestant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts per step")
    parser.add_argument("--rollouts", type=int, default=4, help="answers per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="exact answer length in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per contestant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="rlhb,trl_ppo,trl_rloo", help="comma-separated contestants to run")
    parser.add_argument("--no-create", action="store_true", help="fail instead of creating missing bench venvs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a contestant may take to finish")
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(OUT / "model", args.new_tokens, args.seed)
    spec_path = write_spec(args, model_dir)
    table = contestants()
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        parser.error(f"unknown contestants {unknown}; choose from {sorted(table)}")

    pythons = {}
    for name in chosen:
        entry = table[name]
        pythons[name] = entry.get("python") or ensure_venv(entry["venv"], entry["trl"], create=not args.no_create)
    running = [Contestant(n, pythons[n], table[n]["script"], spec_path, args.threads) for n in chosen]
    try:
        per_round = run_lockstep(running, args.warmup + args.steps)
        results = {c.name: c.result(timeout=args.timeout) for c in running}
    finally:
        for c in running:
            c.kill()
    for name, result in results.items():
        emit("step_seconds", result["median_step_seconds"], contestant=name, **_details(result))
        emit("step_cpu_seconds", result["median_step_cpu_seconds"], contestant=name)
        emit("peak_rss_mb", result["peak_rss_mb"], contestant=name)

    summary = {"contestants": {n: r["median_step_seconds"] for n, r in results.items()}}
    if "rlhb" in results:
        rlhb = results["rlhb"]["median_step_seconds"]
        for peer, target in (("trl_ppo", "target"), ("trl_rloo", "stretch")):
            if peer in results:
                ratio = results[peer]["median_step_seconds"] / rlhb
                summary[f"ratio_vs_{peer}"] = ratio
                summary[f"{target}_met"] = ratio >= 1.0
                summary[f"cpu_ratio_vs_{peer}"] = (
                    results[peer]["median_step_cpu_seconds"] / results["rlhb"]["median_step_cpu_seconds"]
                )
                for kind, cpu in (("wall", False), ("cpu", True)):
                    summary[f"paired_{kind}_ratio_vs_{peer}"] = paired_ratio(
                        per_round[peer], per_round["rlhb"], args.warmup, cpu
                    )
    target = ">= 1.0 vs trl_ppo (stretch: >= 1.0 vs trl_rloo)"
    emit("summary", summary.get("ratio_vs_trl_ppo"), target=target, **summary)
    return 0


def _details(result: dict) -> dict:
    keep = (
        "mean_step_seconds", "median_step_cpu_seconds", "min_step_seconds", "max_step_seconds", "steps",
        "warmup_steps", "step",
        "rollouts_per_step", "new_tokens_per_rollout", "prompt_tokens_mean", "trainable_parameters", "threads",
        "torch", "transformers", "trl", "phase_seconds",
    )  # fmt: skip
    return {k: result[k] for k in keep if k in result}


if __name__ == "__main__":
    sys.exit(main())
