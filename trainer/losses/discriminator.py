"""Behavior-conditioned discriminator: its loss and the rewards read from it (RLHB eq. 2-4).

D(s, a; b) is the probability that the (query, answer, behavior) triplet comes from real
logged traffic. The discriminator outputs a logit z, D = sigmoid(z). It is trained by
maximizing                                                                     (eq. 4)

    E_{real}[ log D(s, a; b) ] + E_{fake}[ log(1 - D(s, a; b)) ]

which is minimizing the binary cross-entropy with label 1 for real and 0 for fake.

Departures from the paper:
- Eq. 3 and 4 read "1 - log D" for the fake term. That is an extraction garble of
  log(1 - D), the GAN objective of GAIL, which the paper cites: "1 - log D" is unbounded
  as D -> 0 (one confidently rejected fake outweighs everything), so the objective has no
  optimum, whereas log(1 - D) has the optimum D* = p_real / (p_real + p_fake). We use
  log(1 - D).
- The loss is the sum of the mean BCE over real and the (optionally weighted) mean BCE over
  fake, so each side counts equally whatever N and M are. ``fake_weights`` lets bootstrapped
  fakes (the kappa share of top-rewarded generations) or behavior-swapped reals weigh
  differently from plain rollouts; the paper weighs them all equally (the default).
- ``real_label`` < 1 is one-sided label smoothing (Salimans et al. 2016, "Improved Techniques
  for Training GANs"): reals are trained toward ``real_label`` instead of 1, fakes toward 0, so
  D cannot grow arbitrarily confident on the logged answers and its gradient to the policy
  stays informative; 1.0 (no smoothing) is the paper.
- Logits, not probabilities, are taken everywhere (numerically stable log-sigmoid).
- Rewards: eq. 2 uses log D as the action value (``kind="log_d"``, the default). The
  paper's training curves report a reward "around 0.5" that declines to ~0.4, i.e. D
  itself: ``kind="prob"``. ``kind="logit"`` gives log D - log(1 - D) (AIRL-style, unbounded
  both ways). ``contrastive_reward`` is our addition: on this project's data the raw D
  under the most-preferred behavior barely tracked true preference (it keeps an
  (s, a)-only component that behavior-swapped fakes never train), while the contrast
  z(s, a; b_preferred) - z(s, a; b_opposite) did (see docs/architecture.md).
- All rewards are detached: PPO treats them as constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REWARD_KINDS = ("log_d", "prob", "logit")


def discriminator_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    fake_weights: torch.Tensor | None = None,
    real_label: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative of eq. 4 as binary cross-entropy with logits.

    Args:
        real_logits: (N,) discriminator logits on logged (real) triplets.
        fake_logits: (M,) logits on fakes (rollouts, behavior-swapped reals, bootstrapped).
        fake_weights: (M,) non-negative weights of the fakes, or None for equal weights.
        real_label: target for the reals, in (0.5, 1]; below 1 is one-sided label smoothing.

    Returns:
        scalar loss and stats: acc_real (share of reals with D > 0.5), acc_fake (share of
        fakes with D < 0.5), d_real / d_fake (mean D on each side), loss_real, loss_fake.
    """
    if real_logits.dim() != 1 or fake_logits.dim() != 1:
        raise ValueError(
            f"real_logits and fake_logits must be 1-D; got {tuple(real_logits.shape)}, {tuple(fake_logits.shape)}"
        )
    if real_logits.numel() == 0 or fake_logits.numel() == 0:
        raise ValueError("the discriminator needs at least one real and one fake example")
    if not 0.5 < real_label <= 1.0:
        raise ValueError(f"real_label must be in (0.5, 1]; got {real_label}")
    # -log D(real) = softplus(-z); -log(1 - D(fake)) = softplus(z); a smoothed real target t mixes both
    loss_real = (real_label * F.softplus(-real_logits) + (1.0 - real_label) * F.softplus(real_logits)).mean()  # ()
    bce_fake = F.softplus(fake_logits)  # (M,)
    if fake_weights is None:
        loss_fake = bce_fake.mean()
    else:
        if fake_weights.shape != fake_logits.shape:
            raise ValueError(
                f"fake_weights must match fake_logits {tuple(fake_logits.shape)}; got {tuple(fake_weights.shape)}"
            )
        if (fake_weights < 0).any() or fake_weights.sum() <= 0:
            raise ValueError("fake_weights must be non-negative with a positive sum")
        w = fake_weights.detach().to(bce_fake.dtype)
        loss_fake = (w * bce_fake).sum() / w.sum()
    loss = loss_real + loss_fake
    with torch.no_grad():
        stats = {
            "acc_real": (real_logits > 0).float().mean().item(),
            "acc_fake": (fake_logits < 0).float().mean().item(),
            "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(),
            "loss_real": loss_real.item(),
            "loss_fake": loss_fake.item(),
        }
    return loss, stats


def pairwise_auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """AUROC of scores: P(a positive outranks a negative), ties 1/2 (Mann-Whitney U / (N M)).

    positive: (N,) scores of the real triplets; negative: (M,) scores of the fakes."""
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    diff = positive.detach().reshape(-1, 1) - negative.detach().reshape(1, -1)  # (N, M)
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def discriminator_reward(logits: torch.Tensor, kind: str = "log_d") -> torch.Tensor:
    """Sequence reward from discriminator logits (any shape), detached.

    kind: "log_d" = log D (eq. 2, <= 0), "prob" = D in (0, 1), "logit" = log D - log(1 - D).
    """
    logits = logits.detach()
    if kind == "log_d":
        return F.logsigmoid(logits)
    if kind == "prob":
        return torch.sigmoid(logits)
    if kind == "logit":
        return logits.clone()
    raise ValueError(f"unknown discriminator reward kind={kind!r}; choose one of {REWARD_KINDS}")


def contrastive_reward(logit_b: torch.Tensor, logit_opposite: torch.Tensor) -> torch.Tensor:
    """z(s, a; b) - z(s, a; b_opposite): how much more real the answer looks under the wanted
    behavior than under its opposite. Shapes match, e.g. (B,); detached.

    The (s, a)-only part of the logit (how "real" the answer looks whatever the behavior)
    cancels, leaving the behavior-dependent part, which is what preference is about.
    """
    if logit_b.shape != logit_opposite.shape:
        raise ValueError(f"logit_b {tuple(logit_b.shape)} and logit_opposite {tuple(logit_opposite.shape)} must match")
    return (logit_b - logit_opposite).detach()
