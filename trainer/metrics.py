"""Per-iteration metrics: one JSON object per line, flushed as it is written.

Non-finite floats are written as null (JSON has no NaN), so any JSON reader can parse the
file. No torch here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# the keys `rlhb train plot` draws (the paper's figures 4-6), in panel order
CURVES = (
    ("d_loss", "discriminator loss"),
    ("d_reward", "discriminator reward"),
    ("mean_return", "mean return"),
    ("kl", "KL to reference"),
)


def clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: floats stay floats, NaN/inf become None, tensors become numbers."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


class MetricsWriter:
    """Appends metric dicts to a JSONL file (or only keeps them, without a path)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        row = clean(metrics)
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        return row


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics JSONL file; a line that is not JSON is an error naming the line."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    if not rows:
        raise ValueError(f"{path}: no metrics (the file is empty)")
    return rows


def summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite float metrics, for AdapterVersion.metrics."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out
