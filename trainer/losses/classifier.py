"""Multi-head behavior classifier, the reward model of RLHBC (RLHB paper, eq. 1).

One head per behavior indicator (PV, clicks, likes, dislikes, ...), each predicting which
of C buckets the indicator's log(1+x) falls into:

    CE(b_hat, b) = -(1/N) sum_i sum_j b_ij log b_hat_ij                     (eq. 1)

with N samples, C classes and b one-hot.

Departures from the paper:
- Eq. 1 is written for one head; the multi-head loss is the (optionally weighted) mean of
  the per-head losses. Targets equal to ``ignore_index`` (-100: indicator unknown for that
  record) are skipped, and a head's loss averages over its known targets only.
- The paper combines the heads into a scalar reward by the shaped reward
  (likes - dislikes) / (PV + clicks) on counts. A classifier predicts buckets of log counts,
  not counts, and PV/clicks mostly measure exposure, which the answer does not control. So
  ``classifier_reward`` maps each head's expected bucket to [0, 1], counts it up for a
  positive indicator and down for a negative one (dislikes), and takes a weighted mean:
  a reward in [-1, 1] that is monotone in every head in the right direction. Give PV/clicks
  weight 0 to reward content alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multihead_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    head_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Eq. 1 per head, averaged over heads.

    Args:
        logits: (B, H, C) per-head bucket logits.
        targets: (B, H) long bucket indices in [0, C), or ``ignore_index``.
        head_weights: (H,) non-negative weights, or None for equal weights.

    Returns:
        scalar loss.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, H, C) and targets (B, H); got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    batch, heads, classes = logits.shape
    # (B, H, C) -> (B, C, H): cross_entropy's class dim is 1
    per_item = F.cross_entropy(
        logits.permute(0, 2, 1), targets, ignore_index=ignore_index, reduction="none"
    )  # (B, H), 0 where ignored
    known = (targets != ignore_index).to(per_item.dtype)  # (B, H)
    per_head = per_item.sum(0) / known.sum(0).clamp_min(1.0)  # (H,)  eq. 1, mean over N
    if head_weights is None:
        return per_head.mean()
    if head_weights.shape != (heads,) or (head_weights < 0).any() or head_weights.sum() <= 0:
        raise ValueError(f"head_weights must be ({heads},), non-negative, with a positive sum")
    w = head_weights.to(per_head.dtype)
    return (w * per_head).sum() / w.sum()


def expected_bucket(logits: torch.Tensor) -> torch.Tensor:
    """Expected bucket index sum_c c * p(c) per head, in [0, C - 1].

    logits: (B, H, C) -> (B, H).
    """
    probs = torch.softmax(logits, dim=-1)  # (B, H, C)
    buckets = torch.arange(logits.shape[-1], dtype=probs.dtype, device=probs.device)  # (C,)
    return probs @ buckets


def classifier_reward(
    logits: torch.Tensor,
    positive_heads_mask: torch.Tensor,
    num_classes: int,
    head_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar reward in [-1, 1] per sample from the heads' expected buckets, detached.

    Args:
        logits: (B, H, C) per-head bucket logits.
        positive_heads_mask: (H,) bool, True for indicators where more is better (PV, clicks,
            likes), False where more is worse (dislikes).
        num_classes: C (checked against ``logits``).
        head_weights: (H,) non-negative weights, or None for equal weights.

    Returns:
        (B,) reward: +1 when every positive head is surely in its top bucket and every
        negative head in its bottom bucket, -1 for the opposite.
    """
    if logits.dim() != 3 or logits.shape[-1] != num_classes or num_classes < 2:
        raise ValueError(
            f"logits must be (B, H, num_classes={num_classes}) with num_classes >= 2; got {tuple(logits.shape)}"
        )
    heads = logits.shape[1]
    if positive_heads_mask.shape != (heads,):
        raise ValueError(f"positive_heads_mask must be ({heads},); got {tuple(positive_heads_mask.shape)}")
    with torch.no_grad():
        level = expected_bucket(logits) / (num_classes - 1)  # (B, H) in [0, 1]
        sign = torch.where(positive_heads_mask.bool(), 1.0, -1.0).to(level.dtype)  # (H,)
        per_head = sign * (2.0 * level - 1.0)  # (B, H) in [-1, 1]
        if head_weights is None:
            return per_head.mean(dim=1)
        if head_weights.shape != (heads,) or (head_weights < 0).any() or head_weights.sum() <= 0:
            raise ValueError(f"head_weights must be ({heads},), non-negative, with a positive sum")
        w = head_weights.to(level.dtype)
        return (per_head * w).sum(dim=1) / w.sum()
