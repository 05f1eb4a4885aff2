"""Behavior contrast of the steering stage (``trainer.algorithms.steer``; not in the RLHB paper).

For a logged triplet (s, a, b) and the mirrored sentence b_opp (high likes <-> low likes):

    delta    = log pi(a | s, b) - log pi(a | s, b_opp)          summed over the answer's tokens
    L        = -log sigmoid(beta * delta)                        averaged over the batch

The policy is its own discriminator of the sentence: L falls when the logged answer is likelier
under the sentence it was logged with than under its mirror. The form is DPO's (Rafailov et al.
2023) with the same answer under two prompts instead of two answers under one, and the mirrored
prompt in the reference's place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def behavior_contrast_loss(own: torch.Tensor, mirrored: torch.Tensor, beta: float) -> torch.Tensor:
    """Scalar L above.

    Args:
        own: (M,) summed log pi(a | s, b) of M logged answers under their own sentences.
        mirrored: (M,) summed log pi(a | s, b_opp) of the same answers under the mirrored sentences.
        beta: scale of delta (> 0).
    """
    if own.shape != mirrored.shape or own.dim() != 1:
        raise ValueError(f"own and mirrored must both be (M,); got {tuple(own.shape)}, {tuple(mirrored.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    return F.softplus(-beta * (own - mirrored)).mean()  # softplus(-x) = -log sigmoid(x), stable
