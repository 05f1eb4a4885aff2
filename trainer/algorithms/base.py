"""What every training algorithm takes and returns.

Each algorithm module (``trainer.algorithms.<name>``) exposes a ``Config`` dataclass and
``run(request, config) -> RunResult``; ``trainer.algorithms.get_algorithm`` looks them up by name.
This module stays free of torch so that the CLI and the service import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.behavior.encoding import Encoding
from schemas.adapters import AdapterVersion
from schemas.behavior import BehaviorRecord


@dataclass(frozen=True)
class TrainRequest:
    """One training run: data, base model, where to write, where to start from."""

    records: Sequence[BehaviorRecord]
    """Training data: real logged (query, response, behavior) triplets."""
    model_path: str
    """HF causal LM folder (the base model; never modified)."""
    output_root: Path
    """Checkpoint version directories are created under this folder."""
    version_name: str
    """Name of the version directory to create (immutable: the run fails if it exists)."""
    parent: AdapterVersion | None = None
    """Start from this adapter instead of a fresh LoRA (chaining, e.g. RLHF then RLHB)."""
    metrics_path: Path | None = None
    """Append one JSON line per iteration here (None: keep metrics in memory only)."""
    seed: int = 0
    """Seed for torch, python and sampling: same seed, same records -> same run."""
    steps: int = 20
    """Number of training iterations."""
    progress: bool = True
    """Show a tqdm progress bar."""
    encoding: Encoding | None = None
    """The deployment's behavior encoding (the loop loads the one the aggregator stored);
    None: inferred from the records. It fixes the most preferred sentence the policy is
    trained toward, the same one the API serves."""
    device: str = "auto"
    """Where the models train (``RLHB_DEVICE``: auto, cpu, cuda, cuda:N; ``core.device.resolve_device``)."""
    dtype: str = "auto"
    """dtype of the frozen base weights (``RLHB_DTYPE``: auto, float32, bfloat16, float16)."""
    heldout_pairs_path: Path | None = None
    """RLHB: write D's held-out pairs with its logits here at the run's last held-out measurement
    (``trainer.heldout_pairs``; None: not written). Other algorithms have no discriminator and ignore it."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced."""

    checkpoint: Path
    """The version directory (standard PEFT adapter dir + metadata.json)."""
    version: AdapterVersion
    """The metadata written to ``checkpoint / "metadata.json"``."""
    metrics: list[dict] = field(default_factory=list)
    """One dict per iteration (the same lines as the metrics JSONL)."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the run stops and no checkpoint is written."""
