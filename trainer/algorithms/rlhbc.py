"""RLHBC: PPO with a multi-head behavior classifier as the reward model (RLHB paper, section 4.1).

    1. fit the classifier (eq. 1) on the logged (query, answer) -> behavior buckets
    2. PPO (``reward_ppo``) with reward = the classifier's combination of predicted buckets
       (``trainer.losses.classifier.classifier_reward``: likes up, dislikes down, exposure
       indicators weight 0 by default)

Metrics: PPO's, plus ``rm_reward``, ``rm_win_rate`` (see ``reward_ppo``) and the classifier's
held-out ``rm_accuracy`` / ``rm_accuracy_<indicator>`` / ``rm_reward_corr``.

Departures from the paper: see ``trainer.reward_models.behavior_classifier`` (how buckets
become one reward) and ``trainer.algorithms.reward_ppo`` (critic init, win-rate baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.reward_ppo import RewardModelPPO, RewardModelPPOConfig
from trainer.algorithms.runner import check_request, seed_everything
from trainer.records import as_records
from trainer.reward_models.behavior_classifier import train_behavior_classifier
from trainer.reward_models.settings import ClassifierSettings

ALGORITHM = "rlhbc"


@dataclass
class Config(RewardModelPPOConfig, ClassifierSettings):
    """RLHBC: PPO settings, prompt behavior, and the behavior classifier (``rm_*``, heads)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.classifier_config()  # validate the classifier fields now, not after loading models


def build(request: TrainRequest, config: Config) -> RewardModelPPO:
    """Check the request, train the behavior classifier on ``request.records``, load the policy."""
    check_request(request)
    records = as_records(request.records)
    seed_everything(request.seed, config.threads)
    rm_config = config.classifier_config(request.model_path)
    classifier, rm_metrics = train_behavior_classifier(records, rm_config, seed=request.seed)
    return RewardModelPPO(request, config, records, classifier, rm_metrics)


def run(request: TrainRequest, config: Config | None = None) -> RunResult:
    """Train the behavior classifier, then PPO against it; writes one checkpoint."""
    return build(request, config or Config()).run(ALGORITHM)
