"""Pairwise reward-model loss of the RLHF baseline (RLHB paper, eq. 12).

    L(psi) = -log sigmoid(r_psi(s, a_w) - r_psi(s, a_l))                    (eq. 12)

Departures from the paper: none in the formula; the loss is averaged over the batch of
pairs, computed with log-sigmoid for stability, and stats are detached Python floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss for (chosen, rejected) reward pairs.

    Args:
        chosen_scores: (B,) r(s, a_w) of the preferred answers.
        rejected_scores: (B,) r(s, a_l) of the other answers to the same queries.

    Returns:
        scalar loss and stats: accuracy (share of pairs ranked right, ties count as wrong)
        and margin (mean r_w - r_l).
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(
            f"chosen_scores and rejected_scores must both be (B,); got {tuple(chosen_scores.shape)}, "
            f"{tuple(rejected_scores.shape)}"
        )
    if chosen_scores.numel() == 0:
        raise ValueError("pairwise_loss needs at least one pair")
    margin = chosen_scores - rejected_scores  # (B,)
    loss = -F.logsigmoid(margin).mean()  # eq. 12
    with torch.no_grad():
        stats = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
    return loss, stats
