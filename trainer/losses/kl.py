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
"""

from __future__ import annotations

import torch

KL_KINDS = ("k1", "k2", "k3")


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
