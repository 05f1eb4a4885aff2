"""The PPO update on the tiny model: the clip acts with the defaults, its metrics, early stop
on target_kl and the adaptive KL coefficient."""

from __future__ import annotations

import math

import pytest
import torch

from core.text_measures import repeated_ngram_rate, words
from trainer.algorithms.ppo_core import PPOCore
from trainer.config import PPOConfig
from trainer.losses.kl import adaptive_kl_coef
from trainer.policy import Policy
from trainer.rollouts import Prompt, SequenceBatch, missing_eos

PROMPTS = [Prompt(f"Tell me about item {i}.", "The answer was liked by most users.") for i in range(2)]
METRICS = (
    "clipfrac", "approx_kl", "old_approx_kl", "entropy", "policy_loss", "value_loss", "value_clipfrac",
    "explained_var", "kl", "kl_coef", "ppo_epochs_run", "ppo_updates", "ppo_early_stop",
)  # fmt: skip


def score(queries: list[str], responses: list[str], behaviors: list[str]) -> torch.Tensor:
    """A reward that varies across rollouts: longer answers score higher."""
    return torch.tensor([len(r) / 20.0 for r in responses])


def make_core(model_dir, **overrides) -> PPOCore:
    base = dict(
        batch_size=8, rollouts_per_prompt=4, max_new_tokens=6, lora_r=4, value_head_hidden=16, threads=1,
        learning_rate=2e-2,  # a big step, so the ratio leaves [0.8, 1.2] within a few minibatches
    )  # fmt: skip
    base.update(overrides)
    torch.manual_seed(0)
    config = PPOConfig(**base)
    return PPOCore(Policy.load(str(model_dir), config), config)


def test_one_epoch_over_one_minibatch_never_clips(tiny_model_dir):
    """The old defaults: the ratio is exactly 1, so eq. 5's clip never acts (a plain policy gradient)."""
    for fused in (True, False):
        core = make_core(tiny_model_dir, ppo_epochs=1, num_minibatches=1)
        core.fuse_first_forward = fused
        metrics = core.iteration(PROMPTS, score).metrics
        assert metrics["ppo_updates"] == 1 and len(core.actor_steps) == 1
        assert metrics["clipfrac"] == 0.0
        assert abs(metrics["approx_kl"]) < 1e-9 and abs(metrics["old_approx_kl"]) < 1e-6
        assert core.actor_steps[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_the_defaults_take_several_epochs_and_the_clip_acts(tiny_model_dir):
    core = make_core(tiny_model_dir)  # default epochs and minibatches
    config = core.config
    metrics = core.iteration(PROMPTS, score).metrics
    for key in METRICS:
        assert key in metrics and math.isfinite(metrics[key]), key
    minibatches = config.batch_size // config.effective_minibatch
    assert config.ppo_epochs > 1 and minibatches > 1
    assert metrics["ppo_updates"] == config.ppo_epochs * minibatches == len(core.actor_steps)
    assert metrics["ppo_epochs_run"] == config.ppo_epochs and metrics["ppo_early_stop"] == 0.0
    first = core.actor_steps[0]  # first minibatch of the first epoch: theta is still theta_old
    assert first["epoch"] == 0 and first["clipfrac"] == 0.0 and abs(first["approx_kl"]) < 1e-9
    later = core.actor_steps[minibatches:]  # every later epoch sees a policy that has moved
    assert all(step["approx_kl"] > 0 for step in later)
    assert metrics["clipfrac"] > 0 and max(step["clipfrac"] for step in later) > 0
    assert metrics["approx_kl"] > 0
    # the metrics are means over the minibatch steps
    for key in ("clipfrac", "approx_kl", "old_approx_kl"):
        assert metrics[key] == pytest.approx(sum(s[key] for s in core.actor_steps) / len(core.actor_steps))
    assert metrics["kl_coef"] == config.kl_coef and core.kl_coef == config.kl_coef  # constant by default


def test_target_kl_stops_the_epochs_early(tiny_model_dir):
    core = make_core(tiny_model_dir, ppo_epochs=4, num_minibatches=2, target_kl=1e-8)
    metrics = core.iteration(PROMPTS, score).metrics
    # the first epoch's second minibatch already sees a moved policy: its KL > 1e-8 stops after epoch 1
    assert metrics["ppo_epochs_run"] == 1 and metrics["ppo_updates"] == 2 and metrics["ppo_early_stop"] == 1.0
    assert len(core.actor_steps) == 2
    relaxed = make_core(tiny_model_dir, ppo_epochs=4, num_minibatches=2, target_kl=1e6)
    metrics = relaxed.iteration(PROMPTS, score).metrics
    assert metrics["ppo_epochs_run"] == 4 and metrics["ppo_updates"] == 8 and metrics["ppo_early_stop"] == 0.0


@pytest.mark.parametrize(("kl_target", "direction"), [(1e-6, 1), (1e6, -1)])
def test_adaptive_kl_coefficient_follows_the_controller(tiny_model_dir, kl_target, direction):
    start = 0.05
    core = make_core(
        tiny_model_dir, ppo_epochs=1, num_minibatches=2, adaptive_kl=True, kl_coef=start, kl_target=kl_target,
        kl_horizon=8, kl_estimator="k3",  # k3 >= 0 per token
    )  # fmt: skip
    first = core.iteration(PROMPTS, score).metrics
    # a fresh LoRA is the reference: KL 0, below any target -> the coefficient falls, by the clipped 20%
    assert first["kl"] == 0.0 and first["kl_coef"] == start
    assert core.kl_coef == pytest.approx(start * 0.8)
    second = core.iteration(PROMPTS, score).metrics
    assert second["kl_coef"] == pytest.approx(start * 0.8)  # the next batch's rewards use the new coefficient
    assert second["kl"] > 0  # the policy has moved away from the reference
    assert core.kl_coef == pytest.approx(adaptive_kl_coef(start * 0.8, second["kl"], kl_target, 8, 8))
    # KL above a tiny target -> rises; below a huge one -> falls; the error clipped at +-20%
    assert core.kl_coef == pytest.approx(start * 0.8 * (1 + 0.2 * direction))


def test_missing_eos_marks_the_rows_that_ran_to_the_budget():
    eos, pad = 2, 0
    batch = SequenceBatch(
        prompt_ids=torch.zeros(3, 1, dtype=torch.long), prompt_mask=torch.ones(3, 1, dtype=torch.long),
        response_ids=torch.tensor([[5, 6, eos, pad], [5, 6, 7, 8], [eos, pad, pad, pad]]),
        response_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]),
        queries=["q"] * 3, behaviors=["b"] * 3, responses=["a b", "a b c d", ""],
    )  # fmt: skip
    assert missing_eos(batch, {eos}).tolist() == [False, True, False]
    assert missing_eos(batch, {eos, 8}).tolist() == [False, False, False]  # any of the model's EOS ids ends it


def test_missing_eos_penalty_lowers_the_score_of_answers_cut_at_the_budget(tiny_model_dir):
    """TRL's missing_eos_penalty: the rollouts that hit max_new_tokens without EOS lose the penalty, the
    others keep their score, and missing_eos_share says how many there were (logged with or without it)."""
    raw: list[torch.Tensor] = []

    def recording(queries, responses, behaviors):
        raw.append(score(queries, responses, behaviors))
        return raw[-1]

    core = make_core(tiny_model_dir, max_new_tokens=3, missing_eos_penalty=2.5)
    head = core.policy.model.get_output_embeddings()  # make EOS likely: some rollouts end within 3 tokens
    bias = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype)
    bias[sorted(core.policy.eos_ids)] = 8.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    result = core.iteration(PROMPTS, recording)
    cut = missing_eos(result.rollouts.batch, core.policy.eos_ids)  # (B,)
    assert 0 < cut.sum() < len(cut)  # both kinds in the batch, so the test can tell them apart
    penalized = raw[0] - 2.5 * cut.float()  # (B,) the score PPO's rewards start from
    assert result.metrics["mean_score"] == pytest.approx(penalized.mean().item())
    assert torch.equal(result.rollouts.scores, raw[0])  # the reward function's own scores stay as they were
    assert result.metrics["missing_eos_share"] == pytest.approx(cut.float().mean().item())
    plain = make_core(tiny_model_dir, max_new_tokens=3).iteration(PROMPTS, score)
    assert plain.metrics["missing_eos_share"] > 0  # logged when the penalty is off, too
    assert plain.metrics["mean_score"] == pytest.approx(score(None, plain.rollouts.batch.responses, None).mean().item())


def test_short_answer_penalty_lowers_the_score_of_near_empty_answers(tiny_model_dir):
    """The other end of missing_eos_penalty: rollouts with fewer than short_answer_words words lose the penalty,
    the others keep their score, and short_answer_share says how many there were."""
    raw: list[torch.Tensor] = []

    def recording(queries, responses, behaviors):
        raw.append(score(queries, responses, behaviors))
        return raw[-1]

    core = make_core(tiny_model_dir, max_new_tokens=4, short_answer_penalty=1.5, short_answer_words=2)
    head = core.policy.model.get_output_embeddings()  # make EOS likely: some rollouts end after 0-1 words
    bias = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype)
    bias[sorted(core.policy.eos_ids)] = 6.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    result = core.iteration(PROMPTS, recording)
    short = torch.tensor([len(words(r)) < 2 for r in result.rollouts.batch.responses], dtype=torch.float32)
    assert 0 < short.sum() < len(short)  # both kinds in the batch, so the test can tell them apart
    assert result.metrics["short_answer_share"] == pytest.approx(short.mean().item())
    assert result.metrics["mean_score"] == pytest.approx((raw[0] - 1.5 * short).mean().item())


def test_repeated_ngram_penalty_lowers_the_score_by_the_share_of_repeated_3grams(tiny_model_dir):
    """A rollout loses repeated_ngram_penalty x its repeated 3-gram rate, and rollout_repetition logs the batch's mean
    rate whether the penalty is on or off."""
    raw: list[torch.Tensor] = []

    def recording(queries, responses, behaviors):
        raw.append(score(queries, responses, behaviors))
        return raw[-1]

    core = make_core(tiny_model_dir, max_new_tokens=12, repeated_ngram_penalty=3.0)
    head = core.policy.model.get_output_embeddings()  # a handful of likely tokens: some rollouts repeat 3-grams
    bias = torch.full((head.weight.shape[0],), -8.0, dtype=head.weight.dtype)
    eos = sorted(core.policy.eos_ids)
    likely = [t for t in range(200, 400) if t not in eos][:3]
    bias[likely] = 8.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    result = core.iteration(PROMPTS, recording)
    rates = torch.tensor([repeated_ngram_rate(r) for r in result.rollouts.batch.responses])  # (B,)
    assert rates.max() > 0  # repetition in the batch, so the penalty has something to take
    assert result.metrics["rollout_repetition"] == pytest.approx(rates.mean().item())
    assert result.metrics["mean_score"] == pytest.approx((raw[0] - 3.0 * rates).mean().item(), abs=1e-5)
    plain = make_core(tiny_model_dir, max_new_tokens=12).iteration(PROMPTS, score)
    assert plain.metrics["mean_score"] == pytest.approx(score(None, plain.rollouts.batch.responses, None).mean().item())


def test_center_scores_subtracts_the_first_batchs_mean_for_the_rest_of_the_round(tiny_model_dir):
    """Ziegler et al.'s reward normalization (mean only): the first batch sets the offset, later batches keep it,
    and the rewards PPO learns from are centered (at iteration 0 the policy is its reference, so KL is 0 and the
    mean return is the mean centered score: 0)."""

    def negative(queries, responses, behaviors):  # far from 0 on average, as D's log-probabilities are
        return score(queries, responses, behaviors) - 4.0

    core = make_core(tiny_model_dir, center_scores=True)
    first = core.iteration(PROMPTS, negative)
    assert first.metrics["mean_score"] < -1
    assert first.metrics["score_offset"] == pytest.approx(first.metrics["mean_score"])
    assert first.metrics["mean_return"] == pytest.approx(0.0, abs=1e-4)
    second = core.iteration(PROMPTS, negative)
    assert second.metrics["score_offset"] == first.metrics["score_offset"]  # not moved by the second batch
    plain = make_core(tiny_model_dir).iteration(PROMPTS, negative)  # off: the rewards keep the raw mean
    assert plain.metrics["score_offset"] == 0.0
    assert plain.metrics["mean_return"] == pytest.approx(plain.metrics["mean_score"], abs=1e-4)


def test_kl_in_the_loss_leaves_the_reward_alone_and_holds_the_policy(tiny_model_dir):
    """kl_placement="loss" (GRPO): the rewards are the score alone (mean_return = mean_score, though the policy
    has moved), the actor's loss carries the KL (logged kl_loss), and a large coefficient there keeps the policy
    nearer the reference than none does."""
    loose = make_core(tiny_model_dir, kl_placement="loss", kl_estimator="k2", kl_coef=0.0)
    held = make_core(tiny_model_dir, kl_placement="loss", kl_estimator="k2", kl_coef=50.0)
    in_reward = make_core(tiny_model_dir, kl_coef=0.5, kl_estimator="k3")  # eq. 10's placement (k3 >= 0)
    runs = {}
    for name, core in (("loose", loose), ("held", held), ("in_reward", in_reward)):
        runs[name] = [core.iteration(PROMPTS, score).metrics for _ in range(3)]
    for metrics in runs["held"]:
        assert metrics["mean_return"] == pytest.approx(metrics["mean_score"], abs=1e-5)  # no KL in the reward
        assert "kl_loss" in metrics and "score_std" in metrics
    assert runs["held"][-1]["kl"] > 0 and runs["held"][-1]["kl_loss"] > 0  # it moved, and the loss saw it
    assert runs["in_reward"][-1]["mean_return"] < runs["in_reward"][-1]["mean_score"] - 1e-4  # eq. 10 charges it
    assert "kl_loss" not in runs["in_reward"][-1]
    assert runs["held"][-1]["kl"] < runs["loose"][-1]["kl"]
