"""Real LoRA adapter folders for tests (no training): ``write_test_adapter``.

The folder has the layout trainer/checkpoints.py writes (PEFT files + metadata.json with the
weights' sha256) and is written to a temp dir then renamed, like a real checkpoint. lora_B
is random and non-zero, so the adapter changes the model's outputs (a fresh LoRA would not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from core.registry import sha256_file, weights_file


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run fastest on one thread, and much faster than on two when the machine
    is busy (2 threads oversubscribe the 2 cores); the previous setting is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_test_adapter(
    model_dir: Path,
    out_root: Path,
    name: str,
    seed: int = 0,
    parent: str | None = None,
    scale: float = 0.5,
    nan: bool = False,
    metrics: dict[str, float] | None = None,
    algorithm: str = "test",
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    """Write ``out_root/<name>/``: a LoRA (r=4, on ``target_modules``) on the model in ``model_dir``.

    ``scale``: std of the random lora_B entries (larger -> further from the base model).
    ``nan``: put a NaN in one lora_B weight (for gate tests).
    ``target_modules``: add "lm_head" to move the output distribution far (large KL): on a tiny
    random model the final norm keeps attention-only LoRAs close to the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), lora_dropout=0.0)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.normal_(0.0, scale)
        if nan:
            next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    meta = {
        "name": name,
        "id": 1,
        "path": str(out_root / name),
        "parent": parent,
        "algorithm": algorithm,
        "step": 0,
        "status": "candidate",
        "sha256": sha256_file(weights_file(tmp)),
        "metrics": metrics or {},
        "created_at": time.time(),
    }
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out_root / name)
    return out_root / name


def write_trained_adapter(
    model_dir: Path,
    out_root: Path,
    name: str,
    examples: list[tuple[str, str, str]],
    steps: int = 30,
    lr: float = 5e-3,
    seed: int = 0,
    parent: str | None = None,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
) -> Path:
    """Like ``write_test_adapter``, but the LoRA is fitted (plain SFT) to ``examples`` =
    [(query, behavior sentence, answer)], so it prefers answers like those. Add "lm_head" to
    ``target_modules`` to make the preferred answers dominate sampling on the tiny random model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.prompts import render_prompt

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules))
    model = get_peft_model(base, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rows = []
    for q, b, a in examples:
        prompt = tok(render_prompt(tok, q, b), add_special_tokens=False)["input_ids"]
        answer = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((torch.tensor([prompt + answer]), torch.tensor(answer)))
    model.train()
    with one_torch_thread():
        for step in range(steps):
            ids, answer = rows[step % len(rows)]
            # LM head only over the answer positions: the 49k-token vocab dominates the cost
            logits = model(input_ids=ids, logits_to_keep=len(answer) + 1).logits[0, :-1]  # (T, V)
            loss = torch.nn.functional.cross_entropy(logits, answer)
            loss.backward()
            opt.step()
            opt.zero_grad()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    meta = {"name": name, "parent": parent, "algorithm": "test-sft", "sha256": sha256_file(weights_file(tmp))}
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out_root / name)
    return out_root / name
