"""Generalized advantage estimation over response tokens (RLHB paper, eq. 7-9).

The episode is one response: time step t is the t-th generated token, the reward r_t is the
KL-penalized per-token reward of eq. 10 (the sequence score sits on the last real token),
and V(s_t; b_t) is the critic's value at that token.

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)                      (eq. 8)
    A_t     = sum_l (gamma * lambda)^l * delta_{t+l}                 (eq. 7)
    R_t     = A_t + V(s_t)                                           (eq. 9)

Departures from the paper:
- Eq. 7 is an infinite sum; the episode ends at the last real token, so the value after it
  is 0 (the response is finished: nothing more will be rewarded) and the sum is finite.
  It is computed by the usual backward recursion A_t = delta_t + gamma*lambda*A_{t+1}.
- Outputs are detached: advantages weight the policy loss and returns are the critic's
  regression target (eq. 11); neither may carry gradient into the critic.
- Padding positions of the outputs are 0.
- ``whiten`` (normalizing advantages over real tokens of the batch) is not in the paper;
  it is standard PPO practice (InstructGPT, TRL) and keeps the step size independent of the
  reward scale of whichever reward model (discriminator, classifier, RM) is in use.
"""

from __future__ import annotations

import torch

from trainer.losses.masked import masked_mean, masked_var


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns per response token.

    Args:
        rewards: (B, T) per-token rewards (eq. 10), any value on padding.
        values: (B, T) critic values V(s_t; b_t), any value on padding.
        mask: (B, T) 1 for real response tokens, 0 for right padding.
        gamma: discount factor in [0, 1].
        lam: GAE lambda in [0, 1].

    Returns:
        advantages (B, T) (eq. 7) and returns (B, T) (eq. 9), detached, 0 on padding.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must all be (B, T); got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1]; got gamma={gamma}, lam={lam}")
    with torch.no_grad():
        m = mask.to(values.dtype)  # (B, T)
        real = mask.bool()  # (B, T)
        # where, not * m: padding may hold inf/NaN and 0 * inf is NaN
        rewards = torch.where(real, rewards.to(values.dtype), torch.zeros_like(values))  # (B, T)
        values = torch.where(real, values, torch.zeros_like(values))  # (B, T)
        # 1 where token t+1 is real: the bootstrap value after the last real token is 0
        next_real = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)  # (B, T)
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_real
        deltas = rewards + gamma * next_values - values  # (B, T)  eq. 8

        advantages = torch.zeros_like(values)  # (B, T)
        running = torch.zeros_like(values[:, 0])  # (B,)
        for t in reversed(range(values.shape[1])):
            # next_real cuts the recursion at the end of each response  (eq. 7)
            running = deltas[:, t] + gamma * lam * next_real[:, t] * running
            advantages[:, t] = running
        advantages = advantages * m
        returns = (advantages + values) * m  # (B, T)  eq. 9
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalize ``x`` to zero mean and unit variance over real tokens of the whole batch.

    x, mask: (B, T). With ``shift_mean=False`` the original mean is added back (only the
    scale changes), as TRL does for rewards. Padding positions of the result are 0.
    """
    mean = masked_mean(x, mask)  # ()
    var = masked_var(x, mask)  # ()
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
