"""Reductions over real tokens of right-padded (B, T) batches.

Every loss in this package averages over real tokens only, so a padded batch gives the
same result as the unpadded one. An all-zero mask yields 0, not NaN: an empty minibatch
must not poison the optimizer state.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1; padding may hold anything, even NaN or inf."""
    # where, not x * mask: 0 * inf would be NaN
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over all of them, or along ``dim``).

    x, mask: same shape, e.g. (B, T). Returns a scalar, or ``x`` reduced along ``dim``.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    # clamp: an empty selection gives 0 / 1 = 0 instead of NaN
    return masked_sum(x, mask, dim) / count.clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of ``x`` over real positions (scalar).

    Population (not Bessel-corrected) so that a single real token gives 0, not NaN.
    """
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)
