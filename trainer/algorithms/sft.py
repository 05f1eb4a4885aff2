"""SFT baseline: supervised fine-tuning of the LoRA policy on the top-rewarded logged answers
(the RLHB paper's "SFT" row; in PRO's words, SFT "utilizes just the most preferred response").

    1. select: records whose shaped reward exceeds ``min_reward``, best first, at most
       ``top_fraction`` of all records (``per_query=True``: only the best answer per query)
    2. each step: a batch of the selected (prompt, answer) pairs, token-mean NLL of the answer
       (the PRO paper's eq. 1), one AdamW step on the adapter
    3. one checkpoint

Metrics per step: ``loss`` (token-mean NLL), ``grad_norm``; and the selection's
``selected``, ``selected_min_reward``, ``selected_mean_reward``.

Under torchrun (``trainer.distributed``) every rank draws the same batch and trains on its
share (``batch_shard``), its loss weighted so the averaged gradient is the whole batch's token
mean; the rank-averaged ``loss`` metric is the whole batch's.

Departures from the papers: none in the loss; the selection rule (threshold + top share,
ties broken by impression id) is ours, since logs hold one answer per query more often than
a ranked set. Identical (query, answer) records are selected once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.behavior import BehaviorRecord
from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.conditioning import behavior_chooser
from trainer.algorithms.runner import check_request, run_iterations, seed_everything
from trainer.algorithms.supervised import AdapterOptimizer, SupervisedConfig, answer_logprobs
from trainer.distributed import BatchShard
from trainer.policy import Policy
from trainer.records import RecordsError, as_records
from trainer.reward_models.split import query_key
from trainer.rollouts import Prompt

ALGORITHM = "sft"


@dataclass
class Config(SupervisedConfig):
    """SFT: which records to imitate, and the supervised settings."""

    top_fraction: float = 0.2
    """Select at most this share of all records (the highest shaped rewards)."""
    min_reward: float = 0.0
    """Select only records whose shaped reward is strictly above this."""
    per_query: bool = False
    """Keep only the best answer of each query (best-of-n when queries have several answers)."""
    batch_size: int = 8
    """(prompt, answer) pairs per optimizer step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1]; got {self.top_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


def select_top(
    records: Sequence[BehaviorRecord], top_fraction: float, min_reward: float, per_query: bool = False
) -> list[BehaviorRecord]:
    """The records SFT imitates, best first (ties: by impression id)."""
    bad = next((r for r in records if not math.isfinite(r.reward)), None)
    if bad is not None:
        raise RecordsError(f"record {bad.impression_id!r} has reward {bad.reward}: shaped rewards must be finite")
    ranked = sorted((r for r in records if r.reward > min_reward), key=lambda r: (-r.reward, r.impression_id))
    seen: set[tuple[str, str]] = set()
    seen_queries: set[str] = set()
    chosen = []
    for r in ranked:
        key = (query_key(r.query), r.response)
        if key in seen or (per_query and key[0] in seen_queries):
            continue
        seen.add(key)
        seen_queries.add(key[0])
        chosen.append(r)
    limit = max(1, math.floor(top_fraction * len(records)))
    return chosen[:limit]


class SFTTrainer:
    """The LoRA policy and its optimizer, over the selected records."""

    def __init__(self, request: TrainRequest, config: Config) -> None:
        check_request(request)
        records = as_records(request.records)
        self.request, self.config = request, config
        seed_everything(request.seed, config.threads)
        self.selected = select_top(records, config.top_fraction, config.min_reward, config.per_query)
        if not self.selected:
            raise RecordsError(
                f"SFT found no record with shaped reward > min_reward={config.min_reward} among {len(records)} "
                "records: there is nothing to imitate yet (collect likes first, or lower min_reward)"
            )
        behavior_of = behavior_chooser(records, config.prompt_behavior, request.encoding)
        self.examples = [(Prompt(r.query, behavior_of(r)), r.response) for r in self.selected]
        parent = Path(request.parent.path) if request.parent is not None else None
        self.policy = Policy.load(
            request.model_path, config.policy_config(), adapter_path=parent, device=request.device, dtype=request.dtype
        )
        self.optimizer = AdapterOptimizer(self.policy, config)
        self.rng = random.Random(request.seed)
        self._queue: list[int] = []
        self.batch_shard = BatchShard()  # the whole batch; trainer.distributed.prepare_trainer sets this rank's
        rewards = [r.reward for r in self.selected]
        self.selection_metrics = {
            "selected": float(len(self.selected)),
            "selected_min_reward": min(rewards),
            "selected_mean_reward": sum(rewards) / len(rewards),
        }

    def _next_batch(self) -> list[tuple[Prompt, str]]:
        """Shuffled passes over the selection; a batch never repeats an example."""
        size = min(self.config.batch_size, len(self.examples))
        if len(self._queue) < size:
            order = list(range(len(self.examples)))
            self.rng.shuffle(order)
            self._queue = order
        picks, self._queue = self._queue[:size], self._queue[size:]
        return [self.examples[i] for i in picks]

    def iteration(self, i: int) -> dict[str, float]:
        batch, real = self.batch_shard.take(self._next_batch())  # this rank's share (all of it alone)
        logprobs, lengths = answer_logprobs(self.policy, [p for p, _ in batch], [a for _, a in batch])  # (B,), (B,)
        loss = -logprobs.sum() / lengths.sum()  # token-mean NLL (PRO paper eq. 1)
        weight = self.batch_shard.weight(float(lengths.sum()) if real else 0.0)  # N ranks: share of the batch's tokens
        if weight != 1.0:
            loss = loss * weight
        self.batch_shard.check_finite("SFT loss", loss)
        grad_norm = self.optimizer.step(loss, "SFT loss")
        return {"iteration": i, "loss": loss.item(), "grad_norm": grad_norm, **self.selection_metrics}

    def save_adapter(self, folder: Path) -> None:
        self.policy.save_adapter(folder)

    def run(self) -> RunResult:
        return run_iterations(self.request, algorithm=ALGORITHM, step=self.iteration, save_adapter=self.save_adapter)


def build(request: TrainRequest, config: Config) -> SFTTrainer:
    """The trainer object (``trainer.distributed.build_trainer``)."""
    return SFTTrainer(request, config)


def run(request: TrainRequest, config: Config | None = None) -> RunResult:
    """Fine-tune on the top-rewarded records; writes one checkpoint."""
    return SFTTrainer(request, config or Config()).run()
