"""RLHF: PPO with a Bradley-Terry reward model trained on pairs of logged answers (RLHB paper,
eq. 12; the baseline it compares against, and the first stage of "RLHF + RLHB").

    1. pair records on the same query, the higher shaped reward preferred; fit r_psi (eq. 12)
    2. PPO (``reward_ppo``) with reward = r_psi(s, a)

Metrics: PPO's, plus ``rm_reward``, ``rm_win_rate`` (the share of rollouts r_psi scores above
the logged answers to their query, the paper's figure-4 win rate) and the reward model's
``rm_held_out_accuracy`` (pairwise accuracy on held-out queries).

Needs two or more logged answers with different shaped rewards to some query; otherwise the
run stops with an error that says so (use rlhbc, which is pointwise).

Departures from the paper: see ``trainer.reward_models.pairwise`` (how pairs are made) and
``trainer.algorithms.reward_ppo`` (critic init, win-rate baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.reward_ppo import RewardModelPPO, RewardModelPPOConfig
from trainer.algorithms.runner import check_request, seed_everything
from trainer.records import as_records
from trainer.reward_models.pairwise import train_pairwise_rm
from trainer.reward_models.settings import PairwiseSettings

ALGORITHM = "rlhf"


@dataclass
class Config(RewardModelPPOConfig, PairwiseSettings):
    """RLHF: PPO settings, prompt behavior, and the Bradley-Terry reward model (``rm_*``, pairs)."""

    rm_batch_size: int = 8
    """Preference pairs per reward-model step (each pair is two answers)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pairwise_config()  # validate the reward-model fields now, not after loading models


def build(request: TrainRequest, config: Config) -> RewardModelPPO:
    """Check the request, train the pairwise reward model on ``request.records``, load the policy."""
    check_request(request)
    records = as_records(request.records)
    seed_everything(request.seed, config.threads)
    reward_model, rm_metrics = train_pairwise_rm(records, config.pairwise_config(request.model_path), seed=request.seed)
    return RewardModelPPO(request, config, records, reward_model, rm_metrics)


def run(request: TrainRequest, config: Config | None = None) -> RunResult:
    """Train the pairwise reward model, then PPO against it; writes one checkpoint."""
    return build(request, config or Config()).run(ALGORITHM)
