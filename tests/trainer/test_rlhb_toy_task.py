"""RLHB learns a toy behavior: liked answers contain "good" (see ``toy_task``).

Under the most-preferred behavior sentence, a short run must raise both the discriminator's
reward for the policy's answers and the share of answers that contain the feature.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.toy_task import LIKED, build_toy_model, has_feature, toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer
from trainer.rollouts import Prompt

STEPS = 8


@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory, tiny_model_dir):
    return build_toy_model(tmp_path_factory.mktemp("toy-model"), tiny_model_dir)


def toy_config() -> Config:
    return Config(
        batch_size=16, rollouts_per_prompt=4, max_new_tokens=4, lora_r=8, learning_rate=5e-3, kl_coef=0.01,
        ppo_epochs=2, minibatch_size=8, d_warmup_steps=10, d_learning_rate=5e-5, d_head_learning_rate=1e-3,
        d_batch_size=8, heldout_max=8, threads=1,
        # D's stabilisers: without them its held-out accuracy decays under the adversarial updates
        # (1.0 -> 0.5 in 8 iterations here; bench/demo_experiments.md E5 at scale)
        swap_share=0.5, d_adversarial_lr_scale=0.2,
    )  # fmt: skip


def sample_answers(trainer: RLHBTrainer, n_prompts: int = 8, k: int = 8) -> list[str]:
    torch.manual_seed(1234)  # the same sampling noise before and after training
    prompts = [Prompt(f"Tell me about item {i}.", LIKED) for i in range(n_prompts)]
    return trainer.policy.generate(prompts, k).responses


def run_toy(model_dir, out, seed: int) -> tuple[float, float, float, float, list[dict]]:
    """(share before, share after, reward before, reward after, per-iteration metrics)."""
    request = TrainRequest(
        records=toy_records(96), model_path=str(model_dir), output_root=out, version_name="toy",
        seed=seed, steps=STEPS, progress=False,
    )  # fmt: skip
    trainer = RLHBTrainer(request, toy_config())
    trainer.warmup()
    assert trainer.heldout_acc >= 0.75, "D must tell real from behavior-swapped triplets after warm-up"
    before = sample_answers(trainer)
    history = [trainer.iteration(i) for i in range(STEPS)]
    after = sample_answers(trainer)
    # judged by the same (final) discriminator, under the behavior the policy was asked for
    reward_before = trainer.reward(["Tell me about item 0."] * len(before), before, [LIKED] * len(before)).mean()
    reward_after = trainer.reward(["Tell me about item 0."] * len(after), after, [LIKED] * len(after)).mean()
    share_before = sum(map(has_feature, before)) / len(before)
    share_after = sum(map(has_feature, after)) / len(after)
    print(
        f"seed {seed}: share {share_before:.2f} -> {share_after:.2f}; reward {reward_before:.2f} -> {reward_after:.2f}"
    )
    print("d_reward per iteration", [round(m["d_reward"], 2) for m in history])
    return share_before, share_after, float(reward_before), float(reward_after), history


def test_rlhb_raises_discriminator_reward_and_the_liked_feature(toy_model_dir, tmp_path):
    # Two seeds, judged on the mean lift: one 8-step run on 12 toy queries is noisy (measured with
    # the held-out split by query: share after 0.50, 0.80, 0.83, 0.86 for seeds 0-3, from 0.39).
    first = int(os.environ.get("RLHB_TOY_SEED", "0"))
    lifts = []
    for seed in (first, first + 1):
        share_before, share_after, reward_before, reward_after, history = run_toy(
            toy_model_dir, tmp_path / f"s{seed}", seed
        )
        lifts.append(share_after - share_before)
        assert share_after > share_before
        assert reward_after > reward_before + 0.25
        assert not any(m["d_at_chance"] for m in history)
    assert sum(lifts) / len(lifts) >= 0.15
