"""The optimizer step both reward models take (pairwise.py, behavior_classifier.py)."""

from __future__ import annotations

import torch


def step_or_diverge(loss: torch.Tensor, optimizer: torch.optim.Optimizer, what: str, lr: float) -> float:
    """One backward + optimizer step on ``loss``; its value. TrainingDiverged (nothing stepped)
    when the loss is not finite, naming ``what`` and the learning rate to lower."""
    if not torch.isfinite(loss):
        from trainer.algorithms.base import TrainingDiverged

        raise TrainingDiverged(f"{what} loss became {loss.item()}; lower lr (now {lr})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
