"""Shared by the benchmark contestants; standard library only, because each contestant runs
in its own virtualenv (the TRL ones cannot import this project).

A contestant reads the spec JSON written by ``bench/bench_rlhb_vs_trl.py``, times
``warmup + steps`` training steps (``StepTimer``), and prints one JSON object (``emit``) as its
last stdout line.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "


@dataclass(frozen=True)
class Spec:
    """The benchmark's sizes: every contestant gets the same ones."""

    model_dir: str
    """HF folder: the random GPT-2 (2 layers, 4 heads, width 128, vocab 2048) and its tokenizer."""
    records_path: str
    """JSONL of behavior records (RLHB samples its prompts from them)."""
    prompts: list[str]
    """Rendered prompt texts (query + behavior sentence), the same ones RLHB builds from the records."""
    prompts_per_step: int
    """Distinct prompts per training step."""
    rollouts_per_prompt: int
    """Answers sampled per prompt."""
    new_tokens: int
    """Exact answer length in tokens (min = max; no early EOS)."""
    lora_r: int
    """LoRA rank of the policy adapter."""
    lora_targets: list[str]
    """Module names the LoRA adapts (GPT-2: attention c_attn/c_proj and MLP c_fc/c_proj)."""
    learning_rate: float
    """Policy learning rate."""
    threads: int
    """torch intra-op threads."""
    warmup: int
    """Untimed steps before measuring."""
    steps: int
    """Timed steps; the median is reported."""
    seed: int
    """Seed for torch and sampling."""

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.rollouts_per_prompt


def load_spec(argv: list[str] | None = None) -> Spec:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: <contestant>.py SPEC.json")
    return Spec(**json.loads(Path(args[0]).read_text()))


def setup_torch(spec: Spec):
    """Threads and seed before anything builds a tensor."""
    import torch

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    if torch.version.cuda is not None:
        # a CUDA wheel would be a different build of torch than the main venv's: not comparable
        raise SystemExit(f"this venv has a CUDA build of torch ({torch.__version__}); install the CPU wheel")
    return torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class StepTimer:
    """Wall-clock seconds of each step.

    Call ``start()`` where a step begins and ``mark()`` where it ends. Under the orchestrator
    (env ``BENCH_LOCKSTEP=1``) ``start()`` first prints ``READY`` and blocks until a line arrives
    on stdin, and ``mark()`` prints ``STEP <wall seconds> <cpu seconds>``: the orchestrator then runs the
    contestants' steps in turns, so load from other processes on this shared machine falls on
    all of them alike. Time spent blocked is not counted.
    """

    warmup: int
    lockstep: bool = field(default_factory=lambda: os.environ.get("BENCH_LOCKSTEP") == "1")
    durations: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU seconds of the step (all threads of this process): less sensitive to other load than wall time."""
    _started: float | None = None
    _cpu_started: float = 0.0

    def start(self) -> None:
        if self.lockstep:
            print("READY", flush=True)
            if not sys.stdin.readline():
                raise SystemExit("orchestrator closed stdin")
        self._cpu_started = time.process_time()
        self._started = time.perf_counter()

    def mark(self) -> None:
        if self._started is None:
            raise RuntimeError("StepTimer.mark() without start()")
        seconds = time.perf_counter() - self._started
        cpu = time.process_time() - self._cpu_started
        self.durations.append(seconds)
        self.cpu.append(cpu)
        self._started = None
        if self.lockstep:
            print(f"STEP {seconds:.6f} {cpu:.6f}", flush=True)

    @property
    def timed(self) -> list[float]:
        return self.durations[self.warmup :]


def emit(name: str, spec: Spec, timer: StepTimer, step_contents: str, **extra) -> None:
    """Print the result line the orchestrator parses."""
    import torch
    import transformers

    timed = timer.timed
    if len(timed) < spec.steps:
        raise SystemExit(f"{name}: only {len(timed)} timed steps of {spec.steps}")
    result = {
        "contestant": name,
        "median_step_seconds": statistics.median(timed),
        "mean_step_seconds": statistics.fmean(timed),
        "median_step_cpu_seconds": statistics.median(timer.cpu[spec.warmup :]),
        "min_step_seconds": min(timed),
        "max_step_seconds": max(timed),
        "steps": len(timed),
        "warmup_steps": spec.warmup,
        "peak_rss_mb": peak_rss_mb(),
        "step": step_contents,
        "rollouts_per_step": spec.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.executable,
        "pid": os.getpid(),
        **extra,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
