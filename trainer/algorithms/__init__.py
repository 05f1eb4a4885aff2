"""Training algorithms by name. Each module exposes ``Config`` (a dataclass) and
``run(request: TrainRequest, config: Config) -> RunResult``.

Lookups import the module lazily, so listing algorithms never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from trainer.algorithms.base import RunResult, TrainingDiverged, TrainRequest

ALGORITHMS: dict[str, str] = {
    "rlhb": "trainer.algorithms.rlhb:run",
    "rlhbc": "trainer.algorithms.rlhbc:run",
    "rlhf": "trainer.algorithms.rlhf:run",
    "sft": "trainer.algorithms.sft:run",
    "pro": "trainer.algorithms.pro:run",
}

__all__ = ["ALGORITHMS", "RunResult", "TrainRequest", "TrainingDiverged", "default_config", "get_algorithm"]


def _target(name: str) -> tuple[str, str]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    module_name, _, func = ALGORITHMS[name].partition(":")
    return module_name, func


def get_algorithm(name: str) -> Callable[[TrainRequest, Any], RunResult]:
    """The ``run(request, config)`` function of algorithm ``name``."""
    module_name, func = _target(name)
    return getattr(importlib.import_module(module_name), func)


def default_config(name: str) -> Any:
    """A ``Config()`` with the algorithm's defaults."""
    return importlib.import_module(_target(name)[0]).Config()
