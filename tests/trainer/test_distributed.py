"""DDP: two real processes under torchrun (gloo, CPU) run RLHB iterations on the tiny model.

Each rank samples its own prompts and rollouts, so without gradient averaging the replicas'
LoRA, value head and discriminator would drift apart after the first update; the test checks
they are bit-identical after two iterations, that they moved, and that only rank 0 wrote the
checkpoint and the metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.behavior_toy import toy_records
from trainer import distributed

TINY_RLHB = {
    "batch_size": 4,
    "rollouts_per_prompt": 2,
    "max_new_tokens": 8,
    "lora_r": 4,
    "lora_alpha": 8,
    "value_head_hidden": 16,
    "discriminator": "lm",
    "d_lora_r": 4,
    "d_batch_size": 4,
    "d_max_tokens": 96,
    "heldout_max": 4,
    "threads": 1,
}


def test_two_ranks_stay_identical_under_torchrun(tmp_path, tiny_model_dir):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(r.model_dump_json() + "\n" for r in toy_records(n_queries=12)))
    out, digests, metrics = tmp_path / "versions", tmp_path / "digests", tmp_path / "metrics.jsonl"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "trainer.distributed",
        "--records", str(records), "--model-path", str(tiny_model_dir), "--output-root", str(out),
        "--version-name", "ddp-v1", "--steps", "2", "--seed", "3", "--metrics", str(metrics),
        "--digest-dir", str(digests), "--backend", "gloo", "--config", json.dumps(TINY_RLHB),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # same start (broadcast from rank 0), same end (averaged gradients), and training moved them
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["final"] != ranks[0]["initial"]
    # the replicas saw different rollouts: identical parameters are the work of gradient sync
    local0, local1 = (r["local_metrics"] for r in ranks)
    assert len(local0) == len(local1) == 2
    assert any(local0[i][key] != local1[i][key] for i in range(2) for key in ("mean_score", "mean_return", "kl")), (
        "both ranks generated the same rollouts; per-rank sampling seeds are not in effect"
    )

    # rank 0 alone wrote the checkpoint and the (rank-averaged) metrics
    assert ranks[0]["checkpoint"] == str(out / "ddp-v1") and ranks[1]["checkpoint"] is None
    assert sorted(p.name for p in out.iterdir()) == ["ddp-v1"]
    assert (out / "ddp-v1" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1] and all(r["world_size"] == 2 for r in rows)
    mean_score = (local0[0]["mean_score"] + local1[0]["mean_score"]) / 2
    assert rows[0]["mean_score"] == pytest.approx(mean_score)


def test_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_from_env()
    assert ctx == distributed.SINGLE_PROCESS and ctx.is_main and not ctx.distributed
    assert distributed.reduce_metrics({"loss": 1.5}, ctx) == {"loss": 1.5}
    assert distributed.all_ranks_ok(False, ctx) is False


def test_partial_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT unset.*torchrun"):
        distributed.init_from_env()
