"""The loop every algorithm shares: seed, iterate with a progress bar, write metrics, stop on
NaN/inf, and write one immutable checkpoint at the end.

An algorithm supplies ``step(i) -> metrics`` and the two savers; see ``trainer.algorithms.rlhb``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from trainer.algorithms.base import RunResult, TrainingDiverged, TrainRequest
from trainer.checkpoints import write_checkpoint
from trainer.metrics import MetricsWriter, summary

PROGRESS_KEYS = ("d_reward", "mean_return", "kl", "d_heldout_acc", "loss")


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed python and torch; pin torch's thread count when asked (2-core machines)."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def check_request(request: TrainRequest) -> None:
    """Fail before training, not after, when the run could not write its checkpoint."""
    target = Path(request.output_root) / request.version_name
    if target.exists():
        raise FileExistsError(f"{target} already exists; versions are immutable, pick a new version_name")
    if request.steps < 1:
        raise ValueError(f"steps must be >= 1; got {request.steps}")


def check_losses(metrics: dict, iteration: int) -> None:
    for key, value in metrics.items():
        if "loss" in key and isinstance(value, float) and not math.isfinite(value):
            raise TrainingDiverged(
                f"{key} became {value} at iteration {iteration}: training stopped and no checkpoint was written. "
                "Lower the learning rates or check the records."
            )


def run_iterations(
    request: TrainRequest,
    *,
    algorithm: str,
    step: Callable[[int], dict],
    save_adapter: Callable[[Path], None],
    save_state: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run ``request.steps`` iterations of ``step`` and write the checkpoint."""
    from tqdm.auto import tqdm

    writer = MetricsWriter(request.metrics_path)
    bar = tqdm(range(request.steps), desc=algorithm, disable=not request.progress, dynamic_ncols=True)
    for i in bar:
        start = time.perf_counter()
        metrics = dict(step(i))
        metrics.setdefault("iteration", i)
        metrics["seconds"] = time.perf_counter() - start
        check_losses(metrics, i)
        writer.write(metrics)
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in PROGRESS_KEYS if isinstance(metrics.get(k), float)})
    bar.close()
    version = write_checkpoint(
        Path(request.output_root),
        request.version_name,
        save_adapter=save_adapter,
        save_state=save_state,
        algorithm=algorithm,
        step=request.steps,
        metrics=summary(writer.rows[-1]) if writer.rows else {},
        parent=request.parent,
    )
    return RunResult(checkpoint=Path(version.path), version=version, metrics=writer.rows)
