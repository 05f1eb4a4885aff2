"""Policy plumbing on the tiny model: padding, EOS masks, log-prob alignment, prompt limits."""

from __future__ import annotations

import torch

from trainer.config import PPOConfig
from trainer.policy import Policy
from trainer.rollouts import Prompt, response_mask_from_eos

BEHAVIOR = "Users liked this answer at a high rate and disliked it at a low rate."


def test_response_mask_runs_through_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [2, 9, 9, 9, 9], [7, 7, 7, 7, 7]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(response_mask_from_eos(ids, {2}), expected)


def test_generate_and_forward_agree_with_a_plain_full_forward(tiny_model_dir):
    torch.manual_seed(0)
    policy = Policy.load(str(tiny_model_dir), PPOConfig(max_new_tokens=5, lora_r=2))
    prompts = [Prompt("Hi", BEHAVIOR), Prompt("What is the capital of France, and why?", BEHAVIOR)]
    batch = policy.generate(prompts, 2)
    assert batch.prompt_ids.shape[0] == 4 and batch.prompt_index.tolist() == [0, 0, 1, 1]
    assert (batch.prompt_mask[:2, 0] == 0).all() and (batch.prompt_mask[:, -1] == 1).all()  # left padding
    assert batch.response_mask.sum(1).min() >= 1
    # plant an EOS mid-answer: the mask must stop there and the text must not contain it
    batch.response_ids[0, 1] = policy.tokenizer.eos_token_id
    batch.response_mask[0] = response_mask_from_eos(batch.response_ids[:1], policy.eos_ids)[0]
    assert batch.response_mask[0].tolist()[:3] == [1, 1, 0]

    with torch.no_grad():
        out = policy.forward(batch)
        ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
        mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
        full = policy.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
        t = batch.response_ids.shape[1]
        manual = torch.log_softmax(full[:, -t - 1 : -1].float(), -1).gather(2, batch.response_ids.unsqueeze(-1))[..., 0]
    real = batch.response_mask.bool()
    assert torch.allclose(out.logprobs[real], manual[real], atol=1e-4)
    assert out.features.shape == (4, t, policy.model.config.hidden_size)
    assert policy.values(out.features).shape == (4, t)


def test_rollouts_of_one_prompt_share_its_prefill_and_sample_what_a_full_prefill_samples(smollm2_dir, monkeypatch):
    """The KV cache of each distinct prompt is computed once and repeated for its rollouts: the same seed
    gives the same answers as prefilling every repeated row, and the prefill forward sees one row per
    prompt. SmolLM2, not the tiny random model: the tiny model's next token barely depends on the context,
    so a misaligned cache (checked by hand: prompts' caches swapped) gave it the same answers; SmolLM2's
    answers with swapped caches are gibberish."""
    torch.manual_seed(0)
    policy = Policy.load(str(smollm2_dir), PPOConfig(max_new_tokens=12, lora_r=2))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)  # a LoRA that changes the answers: the prefill runs with it merged too
    prompts = [Prompt(q, BEHAVIOR) for q in ("Hi", "What is the capital of France, and why?", "Are you sad")]
    prefill_rows = []
    original = Policy._shared_prefill

    def counted(self, ids, mask, k):
        prefill_rows.append(ids.shape[0])
        return original(self, ids, mask, k)

    monkeypatch.setattr(Policy, "_shared_prefill", counted)
    torch.manual_seed(1)
    shared = policy.generate(prompts, 4)
    monkeypatch.setattr(Policy, "_shared_prefill", lambda self, ids, mask, k: {})
    torch.manual_seed(1)
    full = policy.generate(prompts, 4)
    assert prefill_rows == [3] and shared.prompt_ids.shape[0] == 12
    assert len(set(shared.responses)) > 3  # the rollouts of a prompt differ: sampling, not one answer copied
    assert shared.responses == full.responses and torch.equal(shared.response_ids, full.response_ids)
    assert torch.equal(shared.prompt_ids, full.prompt_ids) and torch.equal(shared.prompt_mask, full.prompt_mask)


def test_long_queries_are_cut_but_the_behavior_sentence_never_is(tiny_model_dir):
    policy = Policy.load(str(tiny_model_dir), PPOConfig(max_prompt_tokens=64, lora_r=2))
    text = policy.render(Prompt("filler " * 300 + "What is two plus two?", BEHAVIOR))
    assert len(policy.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 64
    assert BEHAVIOR in text and text.rstrip().endswith("assistant") and "What is two plus two?" in text
