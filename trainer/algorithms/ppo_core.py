"""One PPO iteration, reusable by every algorithm that turns a sequence score into a policy
update (RLHB, RLHBC, RLHF): generate, score, KL-penalize, GAE, actor epochs, critic epochs.

In the paper's order (section 4.2-4.3):

    1. roll out k answers per (query, behavior) prompt with the current policy (pi_old)
    2. score each answer with ``score_fn`` (the discriminator, classifier or reward model)
    3. per-token rewards: the score at the last token minus eta * KL to the reference (eq. 10)
    4. advantages and returns by GAE (eq. 7-9)
    5. PPO epochs on the actor (clipped surrogate, eq. 5-6), then on the critic (eq. 11)

The caller updates its own reward model afterwards (RLHB: the discriminator).

Usage::

    core = PPOCore(Policy.load(model_path, config), config)
    result = core.iteration(prompts, score_fn)   # prompts: list[Prompt], len = config.prompts_per_batch
    result.metrics  # dict of floats; result.rollouts has the batch, log-probs and scores

``score_fn(queries, responses, behaviors) -> Tensor (B,)`` gets one entry per rollout.

Departures from the paper: see ``trainer.losses`` for the math; here, the critic trains on
the features recorded at rollout time (see ``trainer.policy``), advantages are whitened, and
the sequence score may be clipped (``score_clip``) so one wild reward cannot blow up an update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trainer.algorithms.base import TrainingDiverged
from trainer.config import PPOConfig
from trainer.losses.gae import gae, whiten
from trainer.losses.kl import kl_penalized_rewards
from trainer.losses.masked import masked_mean
from trainer.losses.ppo import entropy_from_logits, ppo_policy_loss, value_loss
from trainer.policy import Policy
from trainer.rollouts import Prompt, Rollouts, SequenceBatch

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


class PPOCore:
    """The policy, its two optimizers, and the PPO iteration."""

    fuse_first_forward: bool = True
    """With one epoch over one minibatch (the defaults), the rollout-time policy forward doubles as
    the update's forward: it runs once with gradient and pi_old is its detached log-probs. Same
    numbers (the ratio is exactly 1 at the first update either way), one policy forward fewer."""

    def __init__(self, policy: Policy, config: PPOConfig) -> None:
        self.policy = policy
        self.config = config
        self.actor_optimizer = torch.optim.AdamW(policy.actor_parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.critic_optimizer = torch.optim.AdamW(
            policy.critic_parameters(), lr=config.critic_learning_rate, weight_decay=0.0
        )

    # ------------------------------------------------------------------ steps 1-2
    def rollout(self, prompts: Sequence[Prompt]) -> Rollouts:
        """Sample k answers per prompt and record pi_old, pi_ref log-probs and values."""
        try:
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
        rollouts.scores = scores
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        rewards, kl = kl_penalized_rewards(
            scores, rollouts.logprobs, rollouts.ref_logprobs, mask, cfg.kl_coef, cfg.kl_estimator
        )  # (B, T), (B, T)
        advantages, returns = gae(rewards, rollouts.values, mask, cfg.gamma, cfg.lam)  # (B, T), (B, T)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)

        actor_stats = self._actor_epochs(rollouts, advantages)
        critic_stats = self._critic_epochs(rollouts, returns)
        lengths = mask.sum(1).float()
        return {
            "mean_score": scores.mean().item(),
            "mean_return": (rewards * mask).sum(1).mean().item(),  # score - eta * KL, per answer
            "kl": (kl * mask).sum(1).mean().item(),  # KL(pi || pi_ref) per answer (sum over tokens)
            "response_length": lengths.mean().item(),
            "mean_value": masked_mean(rollouts.values, mask).item(),
            **actor_stats,
            **critic_stats,
        }

    def _minibatches(self, size: int) -> list[torch.Tensor]:
        step = self.config.effective_minibatch
        order = torch.randperm(size)
        return [order[i : i + step] for i in range(0, size, step)]

    def _actor_epochs(self, rollouts: Rollouts, advantages: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        totals = {"policy_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "entropy": 0.0}
        count = 0
        live, rollouts.live_forward = rollouts.live_forward, None  # the graph is used once, then freed
        for _ in range(cfg.ppo_epochs):
            for rows in self._minibatches(len(rollouts.batch)) if live is None else [torch.arange(len(rollouts.batch))]:
                sub = rollouts.batch.select(rows)
                mask = sub.response_mask
                out = self.policy.forward(sub, keep_logits=True) if live is None else live
                loss, stats = ppo_policy_loss(
                    out.logprobs, rollouts.logprobs[rows], advantages[rows], mask, cfg.clip_range
                )
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
                totals["clipfrac"] += stats["clipfrac"]
                totals["approx_kl"] += stats["approx_kl"]
                totals["entropy"] += entropy.item()
                count += 1
        return {k: v / count for k, v in totals.items()}

    def _critic_epochs(self, rollouts: Rollouts, returns: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        totals = {"value_loss": 0.0, "value_clipfrac": 0.0, "explained_var": 0.0}
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
                totals["explained_var"] += stats["explained_var"]
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
        t2 = time.perf_counter()
        metrics = self.update(rollouts, scores)
        t3 = time.perf_counter()
        metrics.update(seconds_generate=t1 - t0, seconds_score=t2 - t1, seconds_update=t3 - t2)
        return IterationResult(metrics=metrics, rollouts=rollouts)
