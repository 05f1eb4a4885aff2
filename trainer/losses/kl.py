"""Per-token KL penalty and the KL-penalized reward (RLHB paper, eq. 10).

    r_t - eta * KL(pi_old(a_t | s_t, b_t), pi_theta(a_t | s_t, b_t))        (eq. 10)

Departures from the paper:
- The paper writes the KL between pi_old and pi_theta. Taken literally that is ~0 at
  rollout time (the rollout policy *is* pi_old) and would not "prevent deviation from the
  initial model", which is the purpose the paper states. We follow the standard reading
  (InstructGPT, TRL, the PRO paper's eq. 3): KL between the current policy and a frozen
  reference policy; here the reference is the same base model with the LoRA adapter
  disabled. ``ref_logprobs`` must come from that reference.
- The KL is estimated per sampled token from log-probabilities of the sampled token only
  (no full-vocabulary sum). Default estimator k1 = log pi(a_t) - log pi_ref(a_t): unbiased
  for KL(pi || pi_ref) when a_t ~ pi, and its sum over the response is exactly the
  sequence log-ratio, which is what InstructGPT/TRL penalize. It can be negative per token.
  ``kind="k3"`` gives Schulman's (r - 1) - log r with r = pi_ref / pi: also unbiased,
  never negative, lower variance; ``kind="k2"`` gives 0.5 * (log r)^2 (biased, >= 0).
- r_t is a sequence-level score (discriminator, classifier or RM), so it is added at the
  last real token and every earlier token gets only the KL term.
- eta is a constant in the paper. ``adaptive_kl_coef`` optionally adapts it between
  iterations toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from
  Human Preferences", section 2.2; TRL's ``AdaptiveKLController``):

      e_t     = clip(KL_t / KL_target - 1, -0.2, 0.2)
      eta_t+1 = eta_t * (1 + K_beta * e_t),  K_beta = n_steps / horizon

- Where the KL goes. Eq. 10 puts it in the reward (``kl_penalized_rewards``); GRPO (Shao et al. 2024,
  "DeepSeekMath", eq. 3) and verl's ``use_kl_loss`` add it to the actor's loss instead (``kl_loss``). In the
  reward, an answer's KL is summed over its tokens and reaches every earlier token through GAE, so ending sooner
  pays less: a prior toward short answers whatever the users said (bench/demo_experiments.md E34, E36). In the
  loss, each sampled token's estimate pulls only that token's probability back toward the reference; nothing
  credits stopping early. Its gradient, for tokens sampled from pi (at PPO's first step pi_old = pi):
      k1 = log(pi / pi_ref):           grad = grad log pi;                E = 0 (no pull at all)
      k2 = 0.5 * log(pi / pi_ref)^2:   grad = log(pi / pi_ref) grad log pi; E = grad KL(pi || pi_ref)
      k3 = (r - 1) - log r, r = pi_ref / pi: grad = (1 - r) grad log pi;    E = grad KL(pi_ref || pi)
  so k2 is the one whose expected gradient is that of the KL eq. 10 names; k3 (GRPO's) pulls on the reverse KL,
  which also holds the policy near the reference; k1 is refused.
"""

from __future__ import annotations

import torch

from trainer.losses.masked import masked_mean

KL_KINDS = ("k1", "k2", "k3")
KL_LOSS_KINDS = ("k2", "k3")
"""Estimators with a non-zero expected gradient in the loss (k1's is zero; see the module docstring)."""
KL_CONTROL_ERROR_CLIP = 0.2
"""Bound on the proportional error of the adaptive KL controller (Ziegler et al. 2019)."""


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate from the sampled tokens' log-probabilities.

    Args:
        logprobs: (B, T) log pi(a_t | s, b, a_<t) of the sampled tokens under the policy.
        ref_logprobs: (B, T) the same under the frozen reference policy (adapter disabled).
        kind: "k1" (default), "k2" or "k3"; see the module docstring.

    Returns:
        (B, T) KL estimate per token (no masking; multiply by the mask or use masked_mean).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T) log pi - log pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # r = pi_ref / pi; (r - 1) - log r >= 0 for all r > 0
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator kind={kind!r}; choose one of {KL_KINDS}")


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of eq. 10: -kl_coef * KL on every real token, plus the score on the last.

    Args:
        score: (B,) sequence-level reward r (discriminator / classifier / RM).
        logprobs: (B, T) sampled-token log-probs under the rollout policy.
        ref_logprobs: (B, T) the same under the reference policy.
        mask: (B, T) 1 for real response tokens (right-padded); each row needs >= 1.
        kl_coef: eta in eq. 10, >= 0.
        kind: KL estimator, see ``per_token_kl``.

    Returns:
        rewards (B, T) and kl (B, T), both detached and 0 on padding.
    """
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs, ref_logprobs and mask must all be (B, T); got {tuple(logprobs.shape)}, "
            f"{tuple(ref_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if score.shape != logprobs.shape[:1]:
        raise ValueError(f"score must be (B,) = {tuple(logprobs.shape[:1])}; got {tuple(score.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0; got {kl_coef}")
    real = mask.bool()  # (B, T)
    if not real.any(dim=1).all():
        empty = (~real.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no real response token: nowhere to put the score")
    with torch.no_grad():
        kl = per_token_kl(logprobs, ref_logprobs, kind)  # (B, T)
        kl = torch.where(real, kl, torch.zeros_like(kl))
        rewards = -kl_coef * kl  # (B, T)
        # index of the last real token (argmax of position * mask picks the last 1)
        positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
        last = (positions * real).argmax(dim=1)  # (B,)
        rows = torch.arange(mask.shape[0], device=mask.device)  # (B,)
        rewards[rows, last] += score.to(rewards.dtype)
    return rewards, kl


def adaptive_kl_coef(kl_coef: float, current_kl: float, target: float, n_steps: int, horizon: int) -> float:
    """One step of the adaptive KL controller (Ziegler et al. 2019; TRL ``AdaptiveKLController``).

    Args:
        kl_coef: eta used for this batch (eq. 10), >= 0.
        current_kl: the batch's KL(pi || pi_ref) per answer (sum over its tokens, mean over answers).
        target: the KL per answer to steer toward, > 0.
        n_steps: samples in the batch (TRL passes the batch size).
        horizon: samples over which the error is corrected, > 0 (TRL: 10000).

    Returns:
        the next eta: larger when current_kl > target (a stronger pull back to the reference),
        smaller when below; the proportional error is clipped to [-0.2, 0.2], so one step moves
        eta by at most 20% * n_steps / horizon.
    """
    if target <= 0 or horizon <= 0 or n_steps < 0 or kl_coef < 0:
        raise ValueError(
            f"need target > 0, horizon > 0, n_steps >= 0, kl_coef >= 0; got target={target}, "
            f"horizon={horizon}, n_steps={n_steps}, kl_coef={kl_coef}"
        )
    if not abs(current_kl) < float("inf"):
        raise ValueError(f"current_kl must be finite; got {current_kl}")
    error = min(max(current_kl / target - 1.0, -KL_CONTROL_ERROR_CLIP), KL_CONTROL_ERROR_CLIP)
    return kl_coef * (1.0 + error * n_steps / horizon)


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "k2") -> torch.Tensor:
    """Mean per-token KL estimate over real tokens, with gradient: the actor-loss form of the KL term (GRPO).

    Args:
        logprobs: (B, T) log pi_theta of the sampled tokens, with gradient (the update's forward).
        ref_logprobs: (B, T) the same under the reference policy (no gradient needed).
        mask: (B, T) 1 for real response tokens.
        kind: "k2" (default; its expected gradient is that of KL(pi || pi_ref)) or "k3" (GRPO's).

    Returns:
        scalar: add kl_coef times it to the actor loss. The mean is over real tokens (as the PPO loss), so the
        term's weight does not depend on how long the answers are.
    """
    if kind not in KL_LOSS_KINDS:
        raise ValueError(
            f"kind must be one of {KL_LOSS_KINDS} for a KL in the loss; got {kind!r} (k1's expected gradient is 0)"
        )
    return masked_mean(per_token_kl(logprobs, ref_logprobs.detach(), kind), mask)  # ()
