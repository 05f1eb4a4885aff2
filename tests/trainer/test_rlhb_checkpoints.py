"""RLHB runs write standard, immutable PEFT checkpoints; NaN stops a run without one."""

from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint_format import read_metadata, sha256_file
from tests.helpers.toy_task import toy_records
from trainer.algorithms import default_config, get_algorithm
from trainer.algorithms.base import TrainingDiverged, TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer

TINY = dict(
    batch_size=4, rollouts_per_prompt=2, max_new_tokens=3, d_batch_size=4, heldout_max=4, lora_r=4,
    value_head_hidden=8, threads=1, discriminator="lm", d_lora_r=2,
)  # fmt: skip
METRIC_KEYS = (
    "d_loss", "d_reward", "mean_return", "kl", "value_loss", "entropy", "clipfrac", "d_heldout_acc", "seconds",
)  # fmt: skip


def request(model_dir, root, name="v1", **kw) -> TrainRequest:
    return TrainRequest(
        records=toy_records(24), model_path=str(model_dir), output_root=root, version_name=name, steps=2,
        progress=False, metrics_path=root / f"{name}.metrics.jsonl", **kw,
    )  # fmt: skip


def test_run_writes_a_peft_checkpoint_with_metadata_and_metrics(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert isinstance(default_config("rlhb"), Config)
    result = get_algorithm("rlhb")(request(tiny_model_dir, tmp_path), Config(**TINY))
    folder = tmp_path / "v1"
    assert result.checkpoint == folder.resolve()
    assert {"adapter_config.json", "adapter_model.safetensors", "metadata.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"

    meta = read_metadata(folder)
    assert meta == result.version
    assert meta.name == "v1" and meta.algorithm == "rlhb" and meta.step == 2 and meta.id >= 1
    assert meta.sha256 == sha256_file(folder / "adapter_model.safetensors")
    assert meta.parent is None and "d_heldout_acc" in meta.metrics

    lines = [json.loads(line) for line in (tmp_path / "v1.metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines == result.metrics
    for key in METRIC_KEYS:
        assert key in lines[0], key

    # loads with plain peft, and the weights are the trained ones (LoRA B is no longer zero)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder))
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    assert (folder / "trainer_state" / "value_head.safetensors").is_file()
    # "all-linear" is saved as short module names (what vLLM's LoRA loader expects), LM head excluded
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj",
    ]  # fmt: skip

    # versions are immutable: the same name again is refused before any training
    with pytest.raises(FileExistsError):
        get_algorithm("rlhb")(request(tiny_model_dir, tmp_path), Config(**TINY))


def test_chained_run_starts_from_the_parent_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    first = get_algorithm("rlhb")(request(tiny_model_dir, tmp_path, "first"), Config(**TINY))
    trainer = RLHBTrainer(request(tiny_model_dir, tmp_path, "second", parent=first.version), Config(**TINY))
    saved = load_file(str(first.checkpoint / "adapter_model.safetensors"))
    current = {k: v for k, v in trainer.policy.model.state_dict().items() if "lora_" in k}
    for key, value in saved.items():
        match = [v for k, v in current.items() if k.replace(".default", "") == key]
        assert match and torch.equal(match[0], value), key
    result = trainer.run()
    assert result.version.parent == "first" and result.version.id > first.version.id


def test_nan_loss_raises_training_diverged_and_writes_no_checkpoint(tiny_model_dir, tmp_path):
    trainer = RLHBTrainer(request(tiny_model_dir, tmp_path, "broken"), Config(**TINY))
    with torch.no_grad():  # a diverged weight, as after an exploding update
        next(p for n, p in trainer.policy.model.named_parameters() if "lora_A" in n).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        trainer.run()
    assert not (tmp_path / "broken").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
