"""One PPO iteration, reusable by every algorithm that turns a sequence score into a policy
update (RLHB, RLHBC, RLHF): generate, score, KL-penalize, GAE, actor epochs, critic epochs.

In the paper's order (section 4.2-4.3):

    1. roll out k answers per (query, behavior) prompt with the current policy (pi_old)
    2. score each answer with ``score_fn`` (the discriminator, classifier or reward model)
    3. per-token rewards: the score at the last token minus eta * KL to the reference (eq. 10); with
       ``kl_placement="loss"`` the score alone, and eta * KL joins the actor's loss in step 5 (GRPO)
    4. advantages and returns by GAE (eq. 7-9)
    5. PPO epochs on the actor (clipped surrogate, eq. 5-6), then on the critic (eq. 11), each
       epoch over shuffled minibatches (defaults: 4 epochs x 4 minibatches, as CleanRL and TRL)
    6. with ``adaptive_kl``: move eta toward ``kl_target`` for the next iteration

The caller updates its own reward model afterwards (RLHB: the discriminator).

Metrics of the update, as CleanRL logs them, each averaged over the actor's (or critic's)
minibatch steps: ``clipfrac`` (share of tokens whose ratio left [1 - eps, 1 + eps]),
``approx_kl`` (k3) and ``old_approx_kl`` (k1) between pi_old and the policy being updated,
``entropy``, ``policy_loss`` (as minimized: with any entropy bonus and KL term), ``kl_loss`` (with
``kl_placement="loss"``: the per-token KL estimate the loss added, mean over steps); ``value_loss`` and
``value_clipfrac``; once per batch: ``explained_var`` of the rollout-time values against the GAE returns,
``kl_coef`` (the eta used for this batch), ``score_std`` (the spread of the scores), ``ppo_epochs_run`` and
``ppo_updates`` (actor steps taken; fewer than ppo_epochs x minibatches when ``target_kl`` stopped the epochs
early, ``ppo_early_stop`` = 1). At the very first minibatch of an iteration the ratio is exactly 1, so with one
epoch over one minibatch every one of clipfrac, approx_kl and old_approx_kl is 0: PPO's clip never acts.

Usage::

    core = PPOCore(Policy.load(model_path, config), config)
    result = core.iteration(prompts, score_fn)   # prompts: list[Prompt], len = config.prompts_per_batch
    result.metrics  # dict of floats; result.rollouts has the batch, log-probs and scores

``score_fn(queries, responses, behaviors) -> Tensor (B,)`` gets one entry per rollout.

Departures from the paper: see ``trainer.losses`` for the math; here, the critic trains on the
features recorded at rollout time (see ``trainer.policy``), advantages are whitened, and the
sequence score may be clipped (``score_clip``) so one wild reward cannot blow up an update, and
a rollout that ran to the token budget without ending may lose ``missing_eos_penalty`` (TRL's
option; ``missing_eos_share`` logs how many did, whatever the penalty), one with fewer than ``short_answer_words``
words may lose ``short_answer_penalty`` (``short_answer_share``), one that repeats itself may lose
``repeated_ngram_penalty`` x its share of repeated 3-grams (``rollout_repetition``), and ``center_scores`` may
subtract the first batch's mean score (Ziegler et al. 2019; see its docstring for why). ``target_kl`` stops
only the actor's epochs (the critic is a separate head on detached features here, so its epochs
do not move the policy). Under ``torch.distributed`` the KL that decides an early stop and the
KL fed to the adaptive controller are averaged over ranks, so every rank takes the same number
of steps and keeps the same eta.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.text_measures import repeated_ngram_rate, words
from trainer.algorithms.base import TrainingDiverged
from trainer.config import PPOConfig
from trainer.losses.gae import gae, whiten
from trainer.losses.kl import adaptive_kl_coef, kl_loss, kl_penalized_rewards
from trainer.losses.masked import masked_mean
from trainer.losses.ppo import entropy_from_logits, explained_variance, ppo_policy_loss, value_loss
from trainer.policy import Policy
from trainer.rollouts import Prompt, Rollouts, SequenceBatch, missing_eos

ScoreFn = Callable[[list[str], list[str], list[str]], torch.Tensor]


@dataclass
class IterationResult:
    metrics: dict[str, float]
    rollouts: Rollouts  # the batch, rollout-time log-probs/values and ``scores`` (B,)


def check_finite(name: str, value: torch.Tensor | float) -> None:
    """Raise TrainingDiverged if a loss is NaN or infinite (before any optimizer step uses it)."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise TrainingDiverged(
            f"{name} became {v}: training stopped and no checkpoint was written. Lower the learning rate, "
            "raise max_grad_norm clipping, or check the reward for NaN/inf values."
        )


def mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over the ranks of a ``torch.distributed`` job (itself when single-process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / dist.get_world_size()


class PPOCore:
    """The policy, its two optimizers, the current KL coefficient, and the PPO iteration."""

    fuse_first_forward: bool = True
    """With one epoch over one minibatch, the rollout-time policy forward doubles as the update's
    forward: it runs once with gradient and pi_old is its detached log-probs. Same numbers (the
    ratio is exactly 1 at the first update either way), one policy forward fewer."""

    def __init__(self, policy: Policy, config: PPOConfig) -> None:
        self.policy = policy
        self.config = config
        self.kl_coef = config.kl_coef
        """eta of eq. 10 for the next batch: constant, or moved by the adaptive controller."""
        self.score_offset: float | None = None
        """With ``center_scores``: the mean score of this core's first batch, subtracted from every later one."""
        self.actor_steps: list[dict[str, float]] = []
        """The last update's actor steps in order, each with its epoch and its loss's stats (diagnostics)."""
        self.actor_optimizer = torch.optim.AdamW(policy.actor_parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.critic_optimizer = torch.optim.AdamW(
            policy.critic_parameters(), lr=config.critic_learning_rate, weight_decay=0.0
        )
        self.sampler = None
        """With ``rollout_backend="vllm"``: the vLLM servers that sample the rollouts (trainer/vllm_rollouts.py)."""
        if config.rollout_backend == "vllm":
            from trainer.vllm_rollouts import VllmRolloutSampler

            self.sampler = VllmRolloutSampler(config)

    def close(self) -> None:
        """Unload the rollout adapter from the vLLM servers (nothing to do with in-process sampling)."""
        if self.sampler is not None:
            self.sampler.close()

    # ------------------------------------------------------------------ steps 1-2
    def rollout(self, prompts: Sequence[Prompt]) -> Rollouts:
        """Sample k answers per prompt and record pi_old, pi_ref log-probs and values."""
        if self.config.kl_reference == "start" and not self.policy.reference_frozen:
            self.policy.freeze_reference()  # the policy as this round's PPO found it (after any steering)
        try:
            if self.sampler is not None:
                batch = self.sampler.generate(self.policy, prompts, self.config.rollouts_per_prompt)
            else:
                batch = self.policy.generate(prompts, self.config.rollouts_per_prompt)
        except RuntimeError as e:
            if "inf" not in str(e) and "nan" not in str(e):
                raise
            # torch.multinomial refuses NaN/inf probabilities: the weights have diverged
            raise TrainingDiverged(
                f"sampling failed on NaN/inf probabilities ({e}): the policy weights diverged; no checkpoint was "
                "written. Lower the learning rate or raise max_grad_norm clipping."
            ) from e
        fused = (
            self.fuse_first_forward and self.config.ppo_epochs == 1 and self.config.effective_minibatch >= len(batch)
        )
        return self.evaluate(batch, keep_graph=fused)

    def evaluate(self, batch: SequenceBatch, keep_graph: bool = False) -> Rollouts:
        """pi_old and pi_ref log-probs and the critic's values for a batch (no update).

        keep_graph=True keeps the policy forward's autograd graph in ``Rollouts.live_forward``
        for a single full-batch update (see ``fuse_first_forward``).
        """
        with torch.set_grad_enabled(keep_graph):
            policy_out = self.policy.forward(batch, keep_logits=keep_graph)
        with torch.no_grad():
            ref_out = self.policy.forward(batch, reference=True)
            values = self.policy.values(policy_out.features)
        return Rollouts(
            batch=batch,
            logprobs=policy_out.logprobs.detach(),
            ref_logprobs=ref_out.logprobs,
            values=values,
            features=policy_out.features,
            live_forward=policy_out if keep_graph else None,
        )

    # ------------------------------------------------------------------ steps 3-5
    def update(self, rollouts: Rollouts, scores: torch.Tensor) -> dict[str, float]:
        """Rewards (eq. 10), GAE (eq. 7-9), then actor epochs and critic epochs. Returns metrics."""
        cfg = self.config
        mask = rollouts.batch.response_mask  # (B, T)
        scores = scores.detach().float()  # (B,)
        if scores.shape != (len(rollouts.batch),):
            raise ValueError(f"score_fn must return shape ({len(rollouts.batch)},); got {tuple(scores.shape)}")
        if not torch.isfinite(scores).all():
            raise TrainingDiverged("the reward function returned NaN/inf scores: no checkpoint was written")
        rollouts.scores = scores  # what the reward function said (d_reward, rm_reward, kappa's top generations)
        unfinished = missing_eos(rollouts.batch, self.policy.eos_ids).float()  # (B,) 1 = ran to the budget
        scores = scores - cfg.missing_eos_penalty * unfinished  # TRL's missing_eos_penalty (0: off)
        short = torch.tensor(
            [len(words(r)) < cfg.short_answer_words for r in rollouts.batch.responses],
            dtype=torch.float32,
            device=scores.device,
        )  # (B,) 1 = near-empty
        scores = scores - cfg.short_answer_penalty * short  # its other end (0: off)
        repetition = torch.tensor(
            [repeated_ngram_rate(r) for r in rollouts.batch.responses], dtype=torch.float32, device=scores.device
        )  # (B,) share of repeated word 3-grams, 0-1
        scores = scores - cfg.repeated_ngram_penalty * repetition  # (0: off)
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        if cfg.center_scores and self.score_offset is None:  # the round's first batch sets it (Ziegler et al.)
            self.score_offset = mean_over_ranks(scores.mean().item(), scores.device)
        centered = scores - (self.score_offset or 0.0)  # (B,)
        kl_coef = self.kl_coef
        in_reward = cfg.kl_placement == "reward"  # "loss": the reward is the score alone, the KL joins the actor loss
        rewards, kl = kl_penalized_rewards(
            centered, rollouts.logprobs, rollouts.ref_logprobs, mask, kl_coef if in_reward else 0.0, cfg.kl_estimator
        )  # (B, T), (B, T)
        advantages, returns = gae(rewards, rollouts.values, mask, cfg.gamma, cfg.lam)  # (B, T), (B, T)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)

        actor_stats = self._actor_epochs(rollouts, advantages, 0.0 if in_reward else kl_coef)
        critic_stats = self._critic_epochs(rollouts, returns)
        lengths = mask.sum(1).float()
        mean_kl = (kl * mask).sum(1).mean().item()  # KL(pi || pi_ref) per answer (sum over tokens)
        if cfg.adaptive_kl:  # step 6: eta for the next batch (TRL updates after the step, too)
            batch_kl = mean_over_ranks(mean_kl, scores.device)
            self.kl_coef = adaptive_kl_coef(kl_coef, batch_kl, cfg.kl_target, len(rollouts.batch), cfg.kl_horizon)
        return {
            "mean_score": scores.mean().item(),  # before centering: comparable across runs
            # what whitening divides a reward by, near enough: how a KL in the loss weighs against one in the reward
            "score_std": scores.std().item() if len(scores) > 1 else 0.0,
            "mean_return": (rewards * mask).sum(1).mean().item(),  # score - offset - eta * KL, per answer
            "score_offset": self.score_offset or 0.0,
            "kl": mean_kl,
            "kl_coef": kl_coef,  # the eta these rewards used
            "response_length": lengths.mean().item(),
            "missing_eos_share": unfinished.mean().item(),
            "short_answer_share": short.mean().item(),
            "rollout_repetition": repetition.mean().item(),
            "mean_value": masked_mean(rollouts.values, mask).item(),
            # CleanRL: how well the rollout-time values predicted the returns, over the whole batch
            "explained_var": explained_variance(rollouts.values, returns, mask),
            **actor_stats,
            **critic_stats,
        }

    def _minibatches(self, size: int) -> list[torch.Tensor]:
        step = self.config.effective_minibatch
        # drawn from the CPU generator on every device (same shuffles on CPU and GPU for one seed),
        # then moved next to the tensors they index
        order = torch.randperm(size).to(self.policy.device)  # (B,)
        return [order[i : i + step] for i in range(0, size, step)]

    def _actor_epochs(self, rollouts: Rollouts, advantages: torch.Tensor, loss_kl_coef: float) -> dict[str, float]:
        """PPO epochs on the actor; ``loss_kl_coef`` > 0 adds that times the KL to the reference to each step's loss."""
        cfg = self.config
        totals = {"policy_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "old_approx_kl": 0.0, "entropy": 0.0}
        if loss_kl_coef:
            totals["kl_loss"] = 0.0
        count = epochs_run = 0
        stopped = False
        live, rollouts.live_forward = rollouts.live_forward, None  # the graph is used once, then freed
        self.actor_steps = []
        for epoch in range(cfg.ppo_epochs):
            epoch_kl, epoch_steps = 0.0, 0
            everything = [torch.arange(len(rollouts.batch), device=self.policy.device)]  # the fused full batch
            for rows in self._minibatches(len(rollouts.batch)) if live is None else everything:
                sub = rollouts.batch.select(rows)
                mask = sub.response_mask
                out = self.policy.forward(sub, keep_logits=True) if live is None else live
                loss, stats = ppo_policy_loss(
                    out.logprobs, rollouts.logprobs[rows], advantages[rows], mask, cfg.clip_range
                )
                if loss_kl_coef:
                    ref_kl = kl_loss(out.logprobs, rollouts.ref_logprobs[rows], mask, cfg.kl_estimator)
                    loss = loss + loss_kl_coef * ref_kl
                    totals["kl_loss"] += ref_kl.item()
                if cfg.entropy_coef:
                    entropy = entropy_from_logits(out.logits, mask)
                    loss = loss - cfg.entropy_coef * entropy
                else:
                    with torch.no_grad():
                        entropy = entropy_from_logits(out.logits, mask)
                check_finite("policy loss", loss)
                self.actor_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.policy.actor_parameters(), cfg.max_grad_norm)
                self.actor_optimizer.step()
                totals["policy_loss"] += loss.item()
                for key in ("clipfrac", "approx_kl", "old_approx_kl"):
                    totals[key] += stats[key]
                totals["entropy"] += entropy.item()
                count += 1
                self.actor_steps.append({"epoch": float(epoch), **stats})
                epoch_kl += stats["approx_kl"]
                epoch_steps += 1
            epochs_run += 1
            if cfg.target_kl is not None:  # CleanRL: stop the epochs once the policy moved too far from pi_old
                device = rollouts.logprobs.device
                if mean_over_ranks(epoch_kl / epoch_steps, device) > cfg.target_kl:
                    stopped = epochs_run < cfg.ppo_epochs
                    break
        return {
            **{k: v / count for k, v in totals.items()},
            "ppo_epochs_run": float(epochs_run),
            "ppo_updates": float(count),
            "ppo_early_stop": float(stopped),
        }

    def _critic_epochs(self, rollouts: Rollouts, returns: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        totals = {"value_loss": 0.0, "value_clipfrac": 0.0}
        count = 0
        for _ in range(cfg.ppo_epochs):
            for rows in self._minibatches(len(rollouts.batch)):
                mask = rollouts.batch.response_mask[rows]
                values = self.policy.values(rollouts.features[rows])  # (b, T)
                loss, stats = value_loss(values, rollouts.values[rows], returns[rows], mask, cfg.clip_range_value)
                check_finite("value loss", loss)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.policy.critic_parameters(), cfg.max_grad_norm)
                self.critic_optimizer.step()
                totals["value_loss"] += loss.item()
                totals["value_clipfrac"] += stats["clipfrac"]
                count += 1
        return {k: v / count for k, v in totals.items()}

    # ------------------------------------------------------------------ all of it
    def iteration(self, prompts: Sequence[Prompt], score_fn: ScoreFn) -> IterationResult:
        """Steps 1-5 for one batch of prompts; ``metrics`` includes seconds per phase."""
        t0 = time.perf_counter()
        rollouts = self.rollout(prompts)
        t1 = time.perf_counter()
        batch = rollouts.batch
        scores = torch.as_tensor(score_fn(batch.queries, batch.responses, batch.behaviors), dtype=torch.float32)
        scores = scores.to(self.policy.device)  # (B,); a reward model may score on another device
        t2 = time.perf_counter()
        metrics = self.update(rollouts, scores)
        t3 = time.perf_counter()
        metrics.update(seconds_generate=t1 - t0, seconds_score=t2 - t1, seconds_update=t3 - t2)
        return IterationResult(metrics=metrics, rollouts=rollouts)
