"""bench/gpu_check.sh, the script a GPU session runs, in --dry-run mode (this machine has no GPU):
it exits 0, runs nothing, and prints the plan as one JSON line per check plus a summary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_dry_run_prints_the_plan_and_exits_0():
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    checks = [row["check"] for row in rows]
    assert checks == ["dry_run", "nvidia-smi", "torch_cuda", "train_round", "serving", "vllm_smoke", "summary"]
    plan = {row["check"]: row for row in rows[1:-1]}
    assert "nvidia-smi" in plan["nvidia-smi"]["plan"]
    assert (
        "RLHB_DEVICE=cuda RLHB_DTYPE=bfloat16" in plan["train_round"]["plan"] and "train" in plan["train_round"]["plan"]
    )
    # what this machine must have to run the script (torch, the package) is there
    assert plan["torch_cuda"]["available"] and plan["train_round"]["available"] and plan["serving"]["available"]
    assert "EmbeddedBackend" in plan["serving"]["plan"]
    assert rows[-1] == {**rows[-1], "check": "summary", "dry_run": True, "ok": True}


def test_unknown_arguments_are_a_usage_error():
    proc = _run("--bogus")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
