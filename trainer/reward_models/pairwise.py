"""RLHF's reward model: a Bradley-Terry scorer r_psi(s, a) trained on pairs of logged answers
to the same query, the one with the higher shaped reward preferred (RLHB paper, eq. 12).

Departures from the paper:
- The paper trains on annotated preference pairs; here a pair is two records with the same
  query (compared after collapsing case and spaces) whose shaped rewards differ by more than
  ``min_margin``: the higher one is a_w. Identical answers to one query are merged (their
  rewards averaged) so an answer is never paired with itself.
- At most ``max_pairs_per_query`` pairs per query (sampled with the seed), so one popular
  query cannot dominate the loss.
- Pairs are split by query into train and held-out; the held-out pairwise accuracy (the share
  of pairs the model orders right, the "win rate" of a_w over a_l) is reported.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch
from torch import nn

from schemas.behavior import BehaviorRecord
from trainer.losses.bradley_terry import pairwise_loss
from trainer.reward_models.encoder import EncoderConfig, PairEncoder
from trainer.reward_models.optim import step_or_diverge
from trainer.reward_models.split import query_key, split_by_query


@dataclass(frozen=True)
class Pair:
    """Two answers to one query; ``chosen`` had the higher shaped reward."""

    query: str
    chosen: str
    rejected: str
    margin: float


@dataclass(frozen=True)
class PairwiseConfig:
    """How to build pairs and train the Bradley-Terry reward model."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Backbone that encodes (query, answer)."""
    min_margin: float = 0.0
    """Pair two answers only when their shaped rewards differ by more than this."""
    max_pairs_per_query: int = 16
    """Cap on pairs drawn from one query."""
    epochs: int = 3
    """Passes over the training pairs."""
    batch_size: int = 8
    """Pairs per optimizer step (2x answers per forward)."""
    lr: float = 5e-5
    """AdamW learning rate."""
    held_out_fraction: float = 0.2
    """Share of queries kept out of training to measure pairwise accuracy (0: none)."""

    def __post_init__(self) -> None:
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0; got {self.min_margin}")
        if self.max_pairs_per_query < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("max_pairs_per_query, epochs and batch_size must all be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0 <= self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in [0, 1); got {self.held_out_fraction}")


def build_pairs(
    records: Sequence[BehaviorRecord], min_margin: float = 0.0, max_pairs_per_query: int = 16, seed: int = 0
) -> list[Pair]:
    """Preference pairs from records that share a query, ordered by shaped reward."""
    by_query: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first_text: dict[str, str] = {}
    for r in records:
        if not math.isfinite(r.reward):
            raise ValueError(f"record {r.impression_id!r} has reward {r.reward}: shaped rewards must be finite")
        key = query_key(r.query)
        first_text.setdefault(key, r.query)
        by_query[key][r.response].append(r.reward)
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for key in sorted(by_query):
        answers = sorted(((sum(v) / len(v), a) for a, v in by_query[key].items()), reverse=True)
        candidates = [
            Pair(first_text[key], hi_a, lo_a, hi_r - lo_r)
            for (hi_r, hi_a), (lo_r, lo_a) in combinations(answers, 2)
            if hi_r - lo_r > min_margin
        ]
        if len(candidates) > max_pairs_per_query:
            candidates = rng.sample(candidates, max_pairs_per_query)
        pairs.extend(candidates)
    return pairs


class PairwiseRewardModel(nn.Module):
    """Encoder + scalar head: (query, answer) -> (B,) reward r_psi(s, a)."""

    def __init__(self, config: PairwiseConfig):
        super().__init__()
        self.config = config
        self.encoder = PairEncoder(config.encoder)
        self.head = nn.Linear(self.encoder.dim, 1)

    def forward(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        return self.head(self.encoder(queries, answers)).squeeze(-1)  # (B,)

    @torch.no_grad()
    def score(self, queries: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(B,) rewards, no gradient."""
        was_training = self.training
        self.eval()
        out = [
            self(queries[i : i + batch_size], answers[i : i + batch_size]) for i in range(0, len(queries), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def pair_scores(self, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) scores, each (B,), from one forward over 2B answers."""
        queries = [p.query for p in pairs] * 2
        answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        scores = self(queries, answers)  # (2B,)
        return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def pairwise_accuracy(model: PairwiseRewardModel, pairs: Sequence[Pair]) -> float:
    """Share of pairs whose chosen answer scores higher (ties count as wrong)."""
    chosen = model.score([p.query for p in pairs], [p.chosen for p in pairs])
    rejected = model.score([p.query for p in pairs], [p.rejected for p in pairs])
    return (chosen > rejected).float().mean().item()


def train_pairwise_rm(
    records: Sequence[BehaviorRecord], config: PairwiseConfig, seed: int = 0
) -> tuple[PairwiseRewardModel, dict[str, float]]:
    """Fit eq. 12 on pairs built from the records; returns the model (eval mode) and metrics
    (``train_loss``, ``train_accuracy``, ``held_out_accuracy``, pair counts)."""
    pairs = build_pairs(records, config.min_margin, config.max_pairs_per_query, seed)
    if not pairs:
        n_queries = len({query_key(r.query) for r in records})
        raise ValueError(
            f"the pairwise reward model needs two or more answers to the same query whose shaped rewards differ "
            f"by more than min_margin={config.min_margin}; the {len(records)} records hold {n_queries} distinct "
            "queries and no such pair. Log several answers per query (sample k > 1 at serving) or use rlhbc"
        )
    train, held_out = split_by_query(pairs, config.held_out_fraction, seed, query_of=lambda p: p.query)
    torch.manual_seed(seed)
    model = PairwiseRewardModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rng = random.Random(seed)
    model.train()
    losses, accs = [], []
    for _ in range(config.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), config.batch_size):
            chosen, rejected = model.pair_scores([train[j] for j in order[i : i + config.batch_size]])
            loss, stats = pairwise_loss(chosen, rejected)  # eq. 12
            losses.append(step_or_diverge(loss, optimizer, "pairwise reward model", config.lr))
            accs.append(stats["accuracy"])
    model.eval()
    tail = max(1, min(10, len(losses)))
    metrics = {
        "train_loss": sum(losses[-tail:]) / tail,
        "train_accuracy": sum(accs[-tail:]) / tail,
        "train_pairs": float(len(train)),
        "held_out_pairs": float(len(held_out)),
    }
    if held_out:
        metrics["held_out_accuracy"] = pairwise_accuracy(model, held_out)
    return model, metrics
