"""Preference Ranking Optimization, PRO (Song et al., "Preference Ranking Optimization for
Human Alignment", eq. 1 and 5-11): the listwise baseline.

For one query with candidates y^1 > y^2 > ... > y^l (ranked by shaped reward, best first):

    r_pi(x, y^k) = (1/|y^k|) sum_t log P_pi(y^k_t | x, y^k_<t)                   (eq. 6)
    L_PRO = -sum_{k=1}^{l-1} log exp(r_pi(y^k) / T_k^k)
                                  / sum_{i=k}^{l} exp(r_pi(y^i) / T_k^i)         (eq. 8, 9)
    T_k^{i>k} = 1 / (r_phi(y^k) - r_phi(y^i)),   T_k^k = min_{i>k} T_k^i        (eq. 10, 11)
    L = L_PRO + beta * L_SFT,  L_SFT = -sum_t log P_pi(y^1_t | x, y^1_<t)        (eq. 7, 1)
    beta = 0.05 * (l - 1)^2                                     (section 4.1 of the paper)

Without reward-model scores (``rewards=None``) every temperature is 1 (eq. 8).

Departures from the paper (the authors' public code agrees with each of these):
- Temperatures enter as multipliers 1/T = reward gap, so a tie (gap 0, T infinite) is the
  finite limit exp(0) = 1 instead of a division by zero; a stage whose negatives all tie
  with the positive has no gradient.
- The stage log-softmax uses logsumexp (the authors add 1e-10 inside a log of sums).
- L_SFT is eq. 1's *summed* token NLL of the top candidate (not length-normalized, as in
  the authors' code), so its weight grows with answer length.
- The loss is the batch mean of the per-query sum over stages (not divided by l - 1).
- Variable list lengths: a candidate with ``seq_lengths == 0`` is padding; padding comes
  last. A stage counts only if its positive and at least one negative are real, and the
  default beta uses each query's own l.
- ``rewards`` must be non-increasing along the list (ties allowed): the list is a ranking.
"""

from __future__ import annotations

import torch


def pro_loss(
    seq_logprobs: torch.Tensor,
    seq_lengths: torch.Tensor,
    rewards: torch.Tensor | None = None,
    sft_weight_beta: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PRO loss (eq. 7) for a batch of ranked candidate lists.

    Args:
        seq_logprobs: (B, L) sum of the response tokens' log-probs for each candidate, with
            gradient. Candidate 0 is the best; candidates are ordered by rank.
        seq_lengths: (B, L) number of response tokens per candidate; 0 marks padding.
        rewards: (B, L) reward-model / shaped-reward scores for the dynamic temperature
            (eq. 9-11), non-increasing along L; None for plain eq. 8.
        sft_weight_beta: beta in eq. 7; None = 0.05 * (l - 1)^2 per query.

    Returns:
        scalar loss and stats: pro_loss (ranking term), sft_loss (mean summed NLL of the top
        candidate), beta (mean), rank_accuracy (share of queries whose top candidate has a
        strictly higher length-normalized log-prob than every other candidate).
    """
    if seq_logprobs.dim() != 2 or seq_lengths.shape != seq_logprobs.shape:
        raise ValueError(
            f"seq_logprobs and seq_lengths must both be (B, L); got {tuple(seq_logprobs.shape)}, "
            f"{tuple(seq_lengths.shape)}"
        )
    if rewards is not None and rewards.shape != seq_logprobs.shape:
        raise ValueError(f"rewards must be (B, L) = {tuple(seq_logprobs.shape)}; got {tuple(rewards.shape)}")
    if sft_weight_beta is not None and sft_weight_beta < 0:
        raise ValueError(f"sft_weight_beta must be >= 0 or None; got {sft_weight_beta}")
    real = seq_lengths > 0  # (B, L)
    if (real[:, 1:] & ~real[:, :-1]).any():
        raise ValueError("padding candidates (seq_lengths == 0) must come after all real ones")
    if rewards is not None:
        drops = rewards[:, :-1] - rewards[:, 1:]  # (B, L-1) must be >= 0 between real candidates
        if ((drops < -1e-6) & real[:, 1:]).any():
            raise ValueError("rewards must be non-increasing along each list: candidate 0 is the best")

    dtype = seq_logprobs.dtype
    num_lists, list_len = seq_logprobs.shape
    # padding candidates: any value, kept out of every sum below
    safe_logprobs = torch.where(real, seq_logprobs, torch.zeros_like(seq_logprobs))  # (B, L)
    scores = safe_logprobs / seq_lengths.to(dtype).clamp_min(1.0)  # (B, L)  eq. 6
    very_negative = torch.finfo(dtype).min / 4  # finite "-inf": keeps gradients NaN-free
    if rewards is not None:
        # constants (eq. 10 uses reward-model scores); padding may hold NaN, which would leak
        # into gradients through 0 * NaN
        rewards = torch.where(real, rewards.detach().to(dtype), torch.zeros_like(scores))

    ranking = torch.zeros(num_lists, dtype=dtype, device=seq_logprobs.device)  # (B,)
    for k in range(list_len - 1):
        neg_real = real[:, k + 1 :]  # (B, L-k-1)
        active = real[:, k] & neg_real.any(dim=1)  # (B,) stage k exists for this query
        if rewards is None:
            neg_inv_temp = torch.ones_like(scores[:, k + 1 :])  # (B, L-k-1)  eq. 8
            pos_inv_temp = torch.ones_like(scores[:, k])  # (B,)
        else:
            gaps = rewards[:, k : k + 1] - rewards[:, k + 1 :]  # (B, L-k-1)
            neg_inv_temp = gaps  # 1 / T_k^i  eq. 10
            # T_k^k = min_i T_k^i  <=>  1/T_k^k = max_i of the gaps over real negatives  (eq. 11)
            pos_inv_temp = gaps.masked_fill(~neg_real, very_negative).max(dim=1).values  # (B,)
            pos_inv_temp = torch.where(active, pos_inv_temp, torch.zeros_like(pos_inv_temp))
        pos_logit = scores[:, k] * pos_inv_temp  # (B,)
        neg_logits = (scores[:, k + 1 :] * neg_inv_temp).masked_fill(~neg_real, very_negative)
        all_logits = torch.cat([pos_logit[:, None], neg_logits], dim=1)  # (B, L-k)
        stage = torch.logsumexp(all_logits, dim=1) - pos_logit  # (B,)  -log softmax, eq. 8/9
        ranking = ranking + torch.where(active, stage, torch.zeros_like(stage))

    sft = -safe_logprobs[:, 0]  # (B,)  eq. 1 on the top candidate (summed NLL)
    num_real = real.sum(dim=1).to(dtype)  # (B,)  l per query
    if sft_weight_beta is None:
        beta = 0.05 * (num_real - 1.0).clamp_min(0.0) ** 2  # (B,)
    else:
        beta = torch.full_like(num_real, sft_weight_beta)
    beta = torch.where(real[:, 0], beta, torch.zeros_like(beta))  # an empty list contributes 0
    loss = (ranking + beta * sft).mean()  # eq. 7
    with torch.no_grad():
        masked_scores = scores.masked_fill(~real, very_negative)
        # strict: a tie is not a correct ranking (as in bradley_terry.pairwise_loss)
        top_wins = (masked_scores[:, 1:] < masked_scores[:, :1]).all(dim=1) & (num_real > 1)
        multi = (num_real > 1).to(dtype)
        stats = {
            "pro_loss": ranking.mean().item(),
            "sft_loss": (sft * real[:, 0]).mean().item(),
            "beta": beta.mean().item(),
            "rank_accuracy": (top_wins.to(dtype).sum() / multi.sum().clamp_min(1.0)).item(),
        }
    return loss, stats
