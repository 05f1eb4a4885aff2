"""Flat reward-model fields for algorithm configs (RLHBC, RLHF, PRO's self-bootstrapping).

Algorithm configs are flat dataclasses (every field one flag, TRL style); these mixins add the
reward model's fields and build the nested configs the reward-model modules take. Call the
builder in the algorithm config's ``__post_init__`` to validate early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.reward_models.behavior_classifier import ClassifierConfig
from trainer.reward_models.encoder import EncoderConfig
from trainer.reward_models.pairwise import PairwiseConfig


@dataclass
class RewardModelSettings:
    """The reward model's encoder and training loop."""

    rm_backbone: str = "minilm"
    """Reward-model encoder: 'minilm' (bundled all-MiniLM-L6-v2, fine-tuned) or 'base' (the base LM trunk + LoRA)."""
    rm_num_layers: int | None = None
    """Keep only the first k encoder layers (faster, weaker); None keeps all."""
    rm_lora_r: int = 8
    """rm_backbone='base': LoRA rank of the reward model's own adapter (0 = full fine-tuning)."""
    rm_max_tokens: int = 256
    """Longest (query, answer) input to the reward model, in tokens."""
    rm_epochs: int = 3
    """Reward-model passes over its training data."""
    rm_batch_size: int = 16
    """Reward-model examples (classifier: records; Bradley-Terry: pairs) per step."""
    rm_learning_rate: float = 5e-5
    """Reward-model AdamW learning rate."""
    rm_heldout_fraction: float = 0.2
    """Share of queries held out to measure the reward model's accuracy."""

    def encoder_config(self, model_path: str) -> EncoderConfig:
        return EncoderConfig(
            backbone=self.rm_backbone,
            # validation before the model path is known: any non-empty placeholder
            model_path=(model_path or "<base model>") if self.rm_backbone == "base" else "",
            max_length=self.rm_max_tokens,
            lora_r=self.rm_lora_r,
            num_layers=self.rm_num_layers,
        )


@dataclass
class ClassifierSettings(RewardModelSettings):
    """RLHBC's multi-head behavior classifier."""

    num_classes: int | None = None
    """C, buckets per indicator; None: one more than the largest bucket in the records."""
    head_weights: dict[str, float] = field(default_factory=lambda: {"view": 0.0, "click": 0.0})
    """Reward weight per indicator (name or prefix); unlisted ones weigh 1. Views/clicks measure exposure."""

    def classifier_config(self, model_path: str = "") -> ClassifierConfig:
        return ClassifierConfig(
            encoder=self.encoder_config(model_path),
            num_classes=self.num_classes,
            head_weights=dict(self.head_weights),
            epochs=self.rm_epochs,
            batch_size=self.rm_batch_size,
            lr=self.rm_learning_rate,
            held_out_fraction=self.rm_heldout_fraction,
        )


@dataclass
class PairwiseSettings(RewardModelSettings):
    """RLHF's Bradley-Terry reward model and how its pairs are drawn."""

    min_margin: float = 0.0
    """Pair two answers only when their shaped rewards differ by more than this."""
    max_pairs_per_query: int = 16
    """Cap on pairs drawn from one query."""

    def pairwise_config(self, model_path: str = "") -> PairwiseConfig:
        return PairwiseConfig(
            encoder=self.encoder_config(model_path),
            min_margin=self.min_margin,
            max_pairs_per_query=self.max_pairs_per_query,
            epochs=self.rm_epochs,
            batch_size=self.rm_batch_size,
            lr=self.rm_learning_rate,
            held_out_fraction=self.rm_heldout_fraction,
        )
