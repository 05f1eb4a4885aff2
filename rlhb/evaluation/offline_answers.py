"""Answers generated in process (no API): for versions the API will not serve, and for experiments.

The prompt is the API's (``core.prompts.render_prompt``), so an answer here comes from the
same distribution as one served for the same version, behavior sentence, token cap and
temperature; only the batching differs (one left-padded ``generate`` per chunk).
"""

from __future__ import annotations


def load_generator(model_path: str, adapter: str | None, threads: int):
    """(tokenizer, model in eval mode): the base at ``model_path``, with the LoRA at ``adapter`` if given."""
    from core.model_loading import load_causal_lm

    # left padding: generation continues every row from its last real token
    model, tok = load_causal_lm(model_path, dtype="float32", threads=threads, padding_side="left")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return tok, model.eval()


def generate_answers(tok, model, questions, behavior: str, max_new_tokens: int, temperature: float) -> list[str]:
    """One answer per question (sampled at ``temperature``, greedy at 0); seed torch before calling."""
    import torch

    from core.prompts import render_prompt

    enc = tok(
        [render_prompt(tok, q, behavior) for q in questions],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=1.0,
            pad_token_id=tok.pad_token_id,
        )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
