"""PPO against a learned, frozen reward model: the loop RLHBC and RLHF share.

    1. train the reward model on the records (the caller: classifier or Bradley-Terry)
    2. each iteration: sample queries from the records, build prompts (see ``conditioning``),
       and run one ``PPOCore`` iteration (rollouts, score, KL, GAE, actor, critic) with the
       reward model's score
    3. write one checkpoint (adapter + value head), through the shared runner

Reported per iteration besides PPO's metrics: ``rm_reward`` (mean score of the rollouts) and
``rm_win_rate``, the share of rollouts the reward model scores above the logged answers to
the same query (their mean score): the "win rate by RM" curve of the RLHB paper's figure 4,
with the logged answers (the serving model's) as the baseline. The reward model's own
training metrics are repeated in every row as ``rm_*`` so they reach the checkpoint metadata.

Departures from the paper: the reward model stays frozen during PPO (as in the paper), and
the critic starts from a fresh value head on the policy trunk instead of from the reward
model (the paper initializes the critic from RM/CM); a parent adapter's value head is reused.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from schemas.behavior import BehaviorRecord
from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.conditioning import behavior_chooser, check_prompt_behavior
from trainer.algorithms.ppo_core import PPOCore
from trainer.algorithms.runner import run_iterations
from trainer.config import PPOConfig
from trainer.policy import VALUE_HEAD_FILE, Policy
from trainer.reward_models.split import query_key
from trainer.rollouts import Prompt


class RewardModel(Protocol):
    def score(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor: ...


@dataclass
class RewardModelPPOConfig(PPOConfig):
    """PPO settings plus the behavior sentence of the policy's prompts."""

    prompt_behavior: str = "preferred"
    """Behavior sentence in the policy's prompts: 'preferred' (the serving default), 'record', or 'none'."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prompt_behavior(self.prompt_behavior)


class RewardModelPPO:
    """Policy + critic (``PPOCore``) trained against a frozen reward model."""

    def __init__(
        self,
        request: TrainRequest,
        config: RewardModelPPOConfig,
        records: Sequence[BehaviorRecord],
        reward_model: RewardModel,
        rm_metrics: dict[str, float],
    ) -> None:
        self.request, self.config, self.records = request, config, list(records)
        self.reward_model = reward_model
        self.rm_metrics = {f"rm_{k}": v for k, v in rm_metrics.items()}
        self.rng = random.Random(request.seed)
        self.behavior_of = behavior_chooser(self.records, config.prompt_behavior, request.encoding)
        parent = Path(request.parent.path) if request.parent is not None else None
        self.policy = Policy.load(
            request.model_path, config, adapter_path=parent, device=request.device, dtype=request.dtype
        )
        self.core = PPOCore(self.policy, config)
        self.baseline = self._logged_scores()
        self._win_rate = 0.0

    def _logged_scores(self) -> dict[str, float]:
        """Mean reward-model score of the logged answers, per query (the win-rate baseline)."""
        scores = self.reward_model.score([r.query for r in self.records], [r.response for r in self.records])
        by_query: dict[str, list[float]] = defaultdict(list)
        for record, s in zip(self.records, scores.tolist(), strict=True):
            by_query[query_key(record.query)].append(s)
        return {q: sum(v) / len(v) for q, v in by_query.items()}

    def score(self, queries: list[str], responses: list[str], behaviors: list[str]) -> torch.Tensor:
        """The PPO reward (B,); also records the win rate against the logged answers."""
        scores = self.reward_model.score(queries, responses)  # (B,), on the reward model's device
        baseline = torch.tensor([self.baseline[query_key(q)] for q in queries], device=scores.device)  # (B,)
        self._win_rate = (scores > baseline).float().mean().item()
        return scores

    def prompts(self) -> list[Prompt]:
        n = self.config.prompts_per_batch
        picks = self.rng.sample(self.records, n) if n <= len(self.records) else self.rng.choices(self.records, k=n)
        return [Prompt(r.query, self.behavior_of(r)) for r in picks]

    def iteration(self, i: int) -> dict[str, float]:
        result = self.core.iteration(self.prompts(), self.score)
        return {
            "iteration": i,
            **result.metrics,
            "rm_reward": result.rollouts.scores.mean().item(),
            "rm_win_rate": self._win_rate,
            **self.rm_metrics,
        }

    def save_adapter(self, folder: Path) -> None:
        self.policy.save_adapter(folder)

    def save_state(self, folder: Path) -> None:
        self.policy.save_value_head(folder / VALUE_HEAD_FILE)

    def run(self, algorithm: str) -> RunResult:
        try:
            return run_iterations(
                self.request,
                algorithm=algorithm,
                step=self.iteration,
                save_adapter=self.save_adapter,
                save_state=self.save_state,
            )
        finally:
            self.core.close()  # vLLM rollouts: unload the last rollout adapter
