"""kill -9 of a trainer process while it writes a checkpoint: the registry stays consistent,
the active adapter stays loadable, and the restarted trainer rebuilds its buffer from the
records topic and redoes the round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from core.registry import Registry
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.toy_task import toy_records
from tests.helpers.trainer_loop import produce_records, trainer_env, wait_for
from trainer.loop import read_rounds, read_status


def assert_loadable(model_dir, version) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), version.path)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


# Runs `rlhb trainer` with os.replace wrapped so that the rename of a finished temp checkpoint
# folder (metadata.json written) sleeps first: the test kills the process at that exact point,
# which it observes from outside (a temp folder holding metadata.json). Test-only code: the
# trainer itself has no pause hook.
PAUSE_BEFORE_RENAME = """
import os, runpy, sys, time
from pathlib import Path
from core.checkpoint_format import METADATA, is_temp_name
_replace = os.replace
def _paused_replace(src, dst, *args, **kwargs):
    if is_temp_name(Path(src).name) and (Path(src) / METADATA).is_file():
        time.sleep(120)
    return _replace(src, dst, *args, **kwargs)
os.replace = _paused_replace
sys.argv = ["rlhb", "trainer"]
runpy.run_module("rlhb.cli", run_name="__main__", alter_sys=True)
"""


def start_trainer(env: dict, log_path, pause_before_rename: bool = False) -> subprocess.Popen:
    argv = ["-c", PAUSE_BEFORE_RENAME] if pause_before_rename else ["-m", "rlhb.cli", "trainer"]
    return subprocess.Popen(
        [sys.executable, *argv], env={**os.environ, **env},
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_then_resume(
    tmp_path, kafka_bootstrap, redis_url, redis_prefix, redis_client, unique_topics, tiny_model_dir
):
    adapters = tmp_path / "adapters"
    registry = Registry(adapters, redis_client, redis_prefix)
    registry.register(write_test_adapter(tiny_model_dir, adapters, "seed-v", seed=1, scale=0.01))
    registry.promote("seed-v")
    env = trainer_env(
        bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
        adapter_dir=adapters, state_dir=tmp_path / "state", model_dir=tiny_model_dir, records_per_round=40,
    )  # fmt: skip
    produce_records(kafka_bootstrap, unique_topics["records"], toy_records(40))
    log = tmp_path / "trainer.log"

    proc = start_trainer(env, log, pause_before_rename=True)
    try:
        half = wait_for(
            lambda: [p for p in adapters.glob(".rlhb-r*.tmp-*") if (p / "metadata.json").exists()],
            timeout=180, what=f"a half-written checkpoint (log: {log.read_text()[-2000:] if log.exists() else ''})",
        )  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    # consistent: the half-written version is not registered, the pointer did not move
    after = Registry(adapters, redis_client, redis_prefix)
    assert [v.name for v in after.list()] == ["seed-v"]
    assert after.active() == "seed-v" and redis_client.get(after.active_key) == "seed-v"
    assert json.loads((adapters / "manifest.json").read_text())["active"] == "seed-v"
    assert_loadable(tiny_model_dir, after.validate("seed-v"))
    assert half[0].exists()  # left behind by the kill, cleaned by the next start
    assert not read_rounds(redis_client, redis_prefix)  # the round never finished

    proc = start_trainer(env, log)
    try:
        rounds = wait_for(
            lambda: read_rounds(redis_client, redis_prefix),
            timeout=180,
            what=f"the redone round (log: {log.read_text()[-2000:]})",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    redone = rounds[0]
    assert redone["outcome"] == "published", redone
    assert redone["train_records"] + redone["heldout_records"] == 40  # buffer rebuilt from the topic
    assert redone["parent"] == "seed-v"
    assert not half[0].exists()
    final = Registry(adapters, redis_client, redis_prefix)
    assert final.active() == redone["version"]
    assert_loadable(tiny_model_dir, final.validate(redone["version"]))
    status = read_status(redis_client, redis_prefix)
    assert status["state"] == "stopped" and status["buffer"] == 40 and status["new_records"] == 0
