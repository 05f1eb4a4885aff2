"""Checks every algorithm test makes: which parameters a run moved, and that its checkpoint
is a standard PEFT adapter with correct metadata."""

from __future__ import annotations

from pathlib import Path

import torch


def snapshot(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[bool, torch.Tensor]]:
    return {
        f"{name}.{pname}": (p.requires_grad, p.detach().clone())
        for name, module in modules.items()
        for pname, p in module.named_parameters()
    }


def assert_trained_only_trainable(before: dict, modules: dict[str, torch.nn.Module]) -> None:
    """Every parameter that was trainable changed; every frozen one is bit-identical."""
    after = snapshot(modules)
    assert after.keys() == before.keys()
    trained = [k for k, (trainable, _) in before.items() if trainable]
    frozen = [k for k, (trainable, _) in before.items() if not trainable]
    assert any("lora_A" in k for k in trained) and any("lora_B" in k for k in trained)
    unchanged = [k for k in trained if torch.equal(before[k][1], after[k][1])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged[:5]}"
    moved = [k for k in frozen if not torch.equal(before[k][1], after[k][1])]
    assert not moved, f"frozen parameters that changed: {moved[:5]}"
    assert len(frozen) > 0


def assert_peft_checkpoint(result, model_dir: Path, policy_model, algorithm: str, steps: int, parent=None) -> None:
    """The version dir loads with peft onto the base model and holds exactly the trained
    adapter; metadata names the algorithm, step, parent and the weights' sha256."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from trainer.checkpoints import WEIGHTS, read_metadata, sha256_file

    path = Path(result.checkpoint)
    assert (path / "adapter_config.json").is_file() and (path / WEIGHTS).is_file()
    meta = read_metadata(path)
    assert meta == result.version
    assert meta.algorithm == algorithm and meta.step == steps and meta.name == path.name
    assert meta.parent == (parent.name if parent is not None else None)
    assert meta.sha256 == sha256_file(path / WEIGHTS)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(path))
    saved = get_peft_model_state_dict(loaded)
    trained = get_peft_model_state_dict(policy_model)
    assert saved.keys() == trained.keys() and saved
    assert all(torch.equal(saved[k], trained[k]) for k in saved)
