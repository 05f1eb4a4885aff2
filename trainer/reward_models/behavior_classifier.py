"""RLHBC's reward model: a multi-head pointwise classifier of user behavior (RLHB paper, eq. 1).

From one logged (query, answer) it predicts, for every behavior indicator the records carry
(views, clicks, likes, dislikes, or the per-view rates of the 'rates' encoding), which of C
buckets the indicator fell into; one linear head per indicator over a shared pair encoder
(``trainer.reward_models.encoder``). Trained with ``trainer.losses.classifier.multihead_ce``;
the reward of a generated answer is ``classifier_reward`` over the heads' expected buckets.

Departures from the paper:
- Heads are read from the records (the union of their ``buckets`` keys), and C from the
  largest bucket seen unless configured; a record missing an indicator is skipped by that head.
- The scalar reward is the loss module's monotone combination of expected buckets (see
  ``trainer.losses.classifier``), not the shaped reward of predicted counts; exposure
  indicators (views, clicks) get weight 0 by default, since the answer does not control how
  often it is shown.
- Records are split by query into train and held-out sets, and the held-out accuracy per head
  and the correlation of the reward with the logged shaped reward are reported.

Saved form (``save_behavior_classifier`` / ``load_behavior_classifier``; `rlhb eval compare
--judge classifier:PATH` reads it): a folder with ``behavior_classifier.json`` (format tag,
heads, C, the ``ClassifierConfig``) and ``behavior_classifier.safetensors`` (the trainable
tensors only). Frozen weights are not copied: loading rebuilds the encoder from the same
source (the bundled MiniLM, or the base model folder the config names), so a LoRA-on-base
classifier stays a few MB instead of a copy of the base model.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.behavior.encoding import is_positive
from schemas.behavior import BehaviorRecord
from trainer.losses.classifier import classifier_reward, multihead_ce
from trainer.reward_models.encoder import EncoderConfig, PairEncoder
from trainer.reward_models.optim import step_or_diverge
from trainer.reward_models.split import split_by_query


def _matches(name: str, key: str) -> bool:
    """'dislike' names the indicator 'dislike' and its derivatives ('dislike_rate')."""
    return name == key or name.startswith(key + "_")


@dataclass(frozen=True)
class ClassifierConfig:
    """How to build and train the behavior classifier."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Backbone that encodes (query, answer)."""
    num_classes: int | None = None
    """C, buckets per indicator; None: one more than the largest bucket in the records (at least 2)."""
    head_weights: dict[str, float] = field(default_factory=lambda: {"view": 0.0, "click": 0.0})
    """Reward weight per indicator (name or prefix); unlisted indicators weigh 1."""
    epochs: int = 3
    """Passes over the training records."""
    batch_size: int = 16
    """Records per optimizer step."""
    lr: float = 5e-5
    """AdamW learning rate (encoder and heads)."""
    held_out_fraction: float = 0.2
    """Share of queries kept out of training to measure accuracy (0: no held-out metrics)."""

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 or None (inferred); got {self.num_classes}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0 <= self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in [0, 1); got {self.held_out_fraction}")
        if any(w < 0 or not math.isfinite(w) for w in self.head_weights.values()):
            raise ValueError(f"head_weights must be finite and >= 0; got {self.head_weights}")


class BehaviorClassifier(nn.Module):
    """Encoder + one C-way head per indicator: (query, answer) -> (B, H, C) logits."""

    def __init__(self, heads: Sequence[str], num_classes: int, config: ClassifierConfig):
        super().__init__()
        if not heads:
            raise ValueError("the behavior classifier needs at least one indicator (records carry no buckets)")
        self.heads = tuple(heads)
        self.num_classes = num_classes
        self.config = config
        self.encoder = PairEncoder(config.encoder)
        self.head = nn.Linear(self.encoder.dim, len(self.heads) * num_classes)  # all heads in one matmul
        try:  # polarity from the behavior language (Indicator.positive / Rate.positive), not a list here
            positive = [is_positive(h) for h in self.heads]
        except KeyError as e:
            raise ValueError(f"the behavior classifier cannot score {e.args[0]}") from None
        weights = [next((w for k, w in config.head_weights.items() if _matches(h, k)), 1.0) for h in self.heads]
        if sum(weights) <= 0:
            raise ValueError(
                f"every indicator {list(self.heads)} has reward weight 0 in head_weights={config.head_weights}; "
                "give at least one content indicator (likes, dislikes) a positive weight"
            )
        self.register_buffer("positive_mask", torch.tensor(positive))
        self.register_buffer("head_weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        features = self.encoder(queries, answers)  # (B, D)
        return self.head(features).view(-1, len(self.heads), self.num_classes)  # (B, H, C)

    def targets(self, records: Sequence[BehaviorRecord]) -> torch.Tensor:
        """(B, H) bucket indices, -100 where a record lacks the indicator."""
        rows = [[min(r.buckets.get(h, -100), self.num_classes - 1) for h in self.heads] for r in records]
        return torch.tensor(rows, dtype=torch.long)

    @torch.no_grad()
    def score(self, queries: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(B,) reward in [-1, 1] (``classifier_reward``), no gradient."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(queries), batch_size):
            logits = self(queries[i : i + batch_size], answers[i : i + batch_size])  # (b, H, C)
            out.append(classifier_reward(logits, self.positive_mask, self.num_classes, self.head_weights))
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


CLASSIFIER_CONFIG = "behavior_classifier.json"
CLASSIFIER_WEIGHTS = "behavior_classifier.safetensors"
CLASSIFIER_FORMAT = "rlhb-behavior-classifier/1"


def save_behavior_classifier(model: BehaviorClassifier, folder: Path) -> Path:
    """Write ``model`` into ``folder`` (created): config JSON + its trainable tensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": CLASSIFIER_FORMAT, "heads": list(model.heads), "num_classes": model.num_classes,
            "config": asdict(model.config)}  # fmt: skip
    # contiguous CPU copies: safetensors refuses views and device tensors
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(folder / CLASSIFIER_WEIGHTS))
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps(meta, indent=2))
    return folder


def load_behavior_classifier(folder: Path) -> BehaviorClassifier:
    """The classifier ``save_behavior_classifier`` wrote (eval mode, CPU); ValueError naming what is wrong."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights_file = folder / CLASSIFIER_CONFIG, folder / CLASSIFIER_WEIGHTS
    if not (config_file.is_file() and weights_file.is_file()):
        raise ValueError(
            f"no saved behavior classifier at {folder}: expected {CLASSIFIER_CONFIG} and {CLASSIFIER_WEIGHTS} "
            "(written by trainer.reward_models.behavior_classifier.save_behavior_classifier)"
        )
    try:
        meta = json.loads(config_file.read_text())
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CLASSIFIER_FORMAT!r}")
        raw = dict(meta["config"])
        config = ClassifierConfig(**{**raw, "encoder": EncoderConfig(**raw["encoder"])})
        heads, num_classes = [str(h) for h in meta["heads"]], int(meta["num_classes"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{config_file}: not a behavior classifier config ({type(e).__name__}: {e})") from None
    model = BehaviorClassifier(heads, num_classes, config)
    tensors = load_file(str(weights_file))
    # The file must hold exactly the tensors training could change; anything else means another
    # model or encoder setup, which would silently score with untrained weights.
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            f"{weights_file} does not match its config: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {extra[:3]} ({len(extra)})"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ValueError(f"{weights_file} does not match its config: {str(e).splitlines()[-1].strip()}") from None
    return model.eval()


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return (x @ y).item() / denom if denom > 0 else 0.0


@torch.no_grad()
def evaluate_classifier(model: BehaviorClassifier, records: Sequence[BehaviorRecord]) -> dict[str, float]:
    """Held-out metrics: per-head and mean accuracy (weighted heads only), loss, reward correlation."""
    if not records:
        return {}
    was_training = model.training
    model.eval()
    queries, answers = [r.query for r in records], [r.response for r in records]
    logits = torch.cat([model(queries[i : i + 32], answers[i : i + 32]) for i in range(0, len(records), 32)])
    model.train(was_training)
    targets = model.targets(records)  # (B, H)
    known = targets != -100
    correct = (logits.argmax(-1) == targets) & known  # (B, H)
    metrics = {"loss": multihead_ce(logits, targets).item()}
    accs = []
    for h, name in enumerate(model.heads):
        if known[:, h].any():
            acc = correct[:, h].sum().item() / known[:, h].sum().item()
            metrics[f"accuracy_{name}"] = acc
            if model.head_weights[h] > 0:
                accs.append(acc)
    if accs:
        metrics["accuracy"] = sum(accs) / len(accs)
    reward = classifier_reward(logits, model.positive_mask, model.num_classes, model.head_weights)
    metrics["reward_corr"] = _pearson(reward, torch.tensor([r.reward for r in records]))
    return metrics


def train_behavior_classifier(
    records: Sequence[BehaviorRecord], config: ClassifierConfig, seed: int = 0
) -> tuple[BehaviorClassifier, dict[str, float]]:
    """Fit eq. 1 on the records; returns the classifier (eval mode) and metrics
    (``train_loss``, held-out ``accuracy``, ``accuracy_<head>``, ``loss``, ``reward_corr``)."""
    if not records:
        raise ValueError("the behavior classifier needs records; got none")
    heads = sorted({k for r in records for k in r.buckets})
    if not heads:
        raise ValueError("no record carries behavior buckets; was the records file written by the aggregator?")
    num_classes = config.num_classes or max(2, 1 + max(v for r in records for v in r.buckets.values()))
    torch.manual_seed(seed)
    model = BehaviorClassifier(heads, num_classes, config)
    train, held_out = split_by_query(records, config.held_out_fraction, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rng = random.Random(seed)
    model.train()
    losses = []
    for _ in range(config.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), config.batch_size):
            batch = [train[j] for j in order[i : i + config.batch_size]]
            logits = model([r.query for r in batch], [r.response for r in batch])  # (b, H, C)
            loss = multihead_ce(logits, model.targets(batch))  # eq. 1
            losses.append(step_or_diverge(loss, optimizer, "behavior classifier", config.lr))
    model.eval()
    metrics = {"train_loss": sum(losses[-10:]) / len(losses[-10:]), "train_records": float(len(train))}
    metrics.update({f"held_out_{k}" if k == "loss" else k: v for k, v in evaluate_classifier(model, held_out).items()})
    metrics["held_out_records"] = float(len(held_out))
    return model, metrics
