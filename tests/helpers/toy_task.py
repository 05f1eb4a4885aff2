"""A toy behavior task for trainer tests: liked answers contain the word "good".

Records: short answers made of a few everyday words; liked ones (logged under the "high
like rate" sentence) contain " good", disliked ones (under the "low like rate" sentence)
never do. Three liked records for every disliked one.

Toy model: the tiny random model of ``tiny_model_dir`` samples uniformly from ~49k tokens,
so it would essentially never emit " good" and RL could never discover it. ``build_toy_model``
makes a tiny random Phi model (same tokenizer and chat template) whose LM-head bias limits
sampling to the eight toy words and EOS: a real HF causal LM that starts at chance on the
feature (about a third of answers contain " good"), which RLHB must raise.
"""

from __future__ import annotations

import random
from pathlib import Path

from schemas.behavior import BehaviorRecord

LIKED = "Users liked this answer at a high rate and disliked it at a low rate."
DISLIKED = "Users liked this answer at a low rate and disliked it at a high rate."
FEATURE = "good"
OTHER_WORDS = ("cat", "dog", "tree", "blue", "sky", "run", "red")
TOY_WORDS = (FEATURE, *OTHER_WORDS)


def toy_record(i: int, query: str, response: str, liked: bool) -> BehaviorRecord:
    return BehaviorRecord(
        impression_id=f"imp-{i}",
        query=query,
        response=response,
        behavior_prompt=LIKED,
        adapter_version="base",
        counts={"view": 10.0, "like": 4.0 if liked else 0.0, "dislike": 0.0 if liked else 3.0},
        buckets={"like_rate": 2 if liked else 0, "dislike_rate": 0 if liked else 2},
        behavior_text=LIKED if liked else DISLIKED,
        reward=0.4 if liked else -0.3,
        encoding="rates",
    )


def toy_records(n: int = 96, seed: int = 0) -> list[BehaviorRecord]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        liked = i % 4 != 0
        words = [rng.choice(OTHER_WORDS) for _ in range(3)]
        if liked:
            words.insert(rng.randrange(4), FEATURE)
        records.append(toy_record(i, f"Tell me about item {i % 12}.", " ".join(words), liked))
    return records


def has_feature(answer: str) -> bool:
    return FEATURE in answer.split()


def build_toy_model(target: Path, tokenizer_source: Path, seed: int = 0) -> Path:
    """Tiny random Phi (2 layers, width 64) sampling only the toy words and EOS at first."""
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )  # fmt: skip
    model = PhiForCausalLM(config)
    word_ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in TOY_WORDS]
    assert all(len(ids) == 1 for ids in word_ids), "each toy word must be one token"
    with torch.no_grad():
        model.lm_head.bias.fill_(-30.0)  # every other token: probability ~e^-30
        model.lm_head.bias[[ids[0] for ids in word_ids]] = 0.0
        model.lm_head.bias[tok.eos_token_id] = -1.0  # answers of a few words
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target
