"""PPO actor and critic losses (RLHB paper, eq. 5, 6, 11).

    l_t  = pi_theta(a_t | s_t, b_t) / pi_old(a_t | s_t, b_t)                 (eq. 6)
    L(theta) = E_t[ min(l_t A_t, clip(l_t, 1 - eps, 1 + eps) A_t) ]          (eq. 5)
    L(phi)   = E_t[ || V_phi(s_t; b_t) - R_t ||^2 ]                           (eq. 11)

Departures from the paper:
- Eq. 5 is an objective to maximize; ``ppo_policy_loss`` returns its negative, to minimize.
- E_t is a mean over all real tokens of the minibatch (token-level, as in TRL), not a
  per-sequence mean: long responses weigh more. Padding never counts.
- Eq. 11 is a plain squared error. ``value_loss`` uses 0.5 * squared error (gradient = the
  residual, the usual convention) and optionally the PPO2 value clipping (OpenAI baselines,
  TRL): the new value may move at most ``clip_range_value`` from the rollout-time value, and
  the larger (pessimistic) of the clipped and unclipped errors is taken.
- ``entropy_from_logits`` is a diagnostic (and an optional bonus); the paper has no entropy term.
- Stats are detached Python floats, for logging, named and computed as CleanRL logs them
  (``ppo_continuous_action.py``): clipfrac = share of real tokens with |l_t - 1| > eps,
  approx_kl = k3 = E[(l_t - 1) - log l_t], old_approx_kl = k1 = E[-log l_t] (both estimate
  KL(pi_old || pi_theta), tokens sampled from pi_old), explained variance of the values.
"""

from __future__ import annotations

import torch

from trainer.losses.masked import masked_mean, masked_var

__all__ = ["entropy_from_logits", "explained_variance", "masked_mean", "ppo_policy_loss", "value_loss"]


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-surrogate policy loss (negative of eq. 5).

    Args:
        logprobs: (B, T) log pi_theta of the sampled tokens, with gradient.
        old_logprobs: (B, T) log pi_old of the same tokens, recorded at rollout time.
        advantages: (B, T) A_t from GAE (eq. 7), usually whitened.
        mask: (B, T) 1 for real response tokens.
        clip_range: eps in eq. 5, > 0.

    Returns:
        scalar loss and stats: clipfrac (share of real tokens whose ratio l_t lies outside
        [1 - eps, 1 + eps], CleanRL / OpenAI baselines), approx_kl (k3 estimate of
        KL(pi_old || pi_theta), CleanRL's ``approx_kl``), old_approx_kl (k1 estimate, CleanRL's
        ``old_approx_kl``), ratio_mean. At the first step after the rollout theta = theta_old:
        l_t = 1 exactly, so clipfrac = approx_kl = old_approx_kl = 0.
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0; got {clip_range}")
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)  eq. 6
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    # max of the negatives = min of eq. 5: the pessimistic bound
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # ()
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_range).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item(),  # k3
            "old_approx_kl": masked_mean(-log_ratio, mask).item(),  # k1
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss (eq. 11): 0.5 * squared error to the GAE returns, optionally clipped.

    Args:
        values: (B, T) V_phi(s_t; b_t) now, with gradient.
        old_values: (B, T) the critic's values at rollout time (used only for clipping).
        returns: (B, T) R_t from GAE (eq. 9).
        mask: (B, T) 1 for real response tokens.
        clip_range_value: max move of a value away from ``old_values``; None = no clipping.

    Returns:
        scalar loss and stats: clipfrac (share where the clipped error was larger),
        mse (unclipped mean squared error), explained_var (1 - Var[R - V] / Var[R]).
    """
    if clip_range_value is not None and clip_range_value <= 0:
        raise ValueError(f"clip_range_value must be > 0 or None; got {clip_range_value}")
    old_values = old_values.detach()
    returns = returns.detach()
    err_unclipped = (values - returns) ** 2  # (B, T)
    if clip_range_value is None:
        err = err_unclipped
        clipfrac = 0.0
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        err_clipped = (v_clipped - returns) ** 2  # (B, T)
        err = torch.maximum(err_unclipped, err_clipped)
        clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask).item()
    loss = 0.5 * masked_mean(err, mask)  # ()  eq. 11
    with torch.no_grad():
        stats = {
            "clipfrac": clipfrac,
            "mse": masked_mean(err_unclipped, mask).item(),
            "explained_var": explained_variance(values, returns, mask),
        }
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over real tokens (CleanRL's ``explained_variance``).

    values: (B, T) the critic's predictions; returns: (B, T) the GAE targets (eq. 9); mask: (B, T).
    1 = perfect, 0 = no better than a constant, < 0 = worse; NaN when the returns do not vary.
    """
    with torch.no_grad():
        values, returns = values.detach().float(), returns.detach().float()
        var_returns = masked_var(returns, mask)  # ()
        if not var_returns > 0:
            return float("nan")
        return float(1.0 - masked_var(returns - values, mask) / var_returns)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the next-token distributions over real tokens.

    logits: (B, T, V) at the positions that produced the response tokens; mask: (B, T).
    Returns a scalar with gradient.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    p_logp = logp.exp() * logp  # (B, T, V)
    # masked logits (-inf, e.g. banned tokens) give 0 * -inf = NaN; their true term is 0
    p_logp = torch.where(torch.isfinite(logp), p_logp, torch.zeros_like(p_logp))
    entropy = -p_logp.sum(dim=-1)  # (B, T)
    return masked_mean(entropy, mask)
