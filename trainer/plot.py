"""Training curves as in the RLHB paper's figures 4-6: discriminator loss, discriminator
reward, mean return, and the KL to the reference policy, one panel each, per iteration.

Runs without a display (matplotlib's Agg backend). Runs of algorithms without a
discriminator (rlhbc, rlhf) plot their reward-model score in the reward panel instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.metrics import read_metrics

# panel title -> metric keys to try, first found wins
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Discriminator loss", ("d_loss",)),
    ("Discriminator reward", ("d_reward", "rm_reward", "mean_score")),
    ("Mean return", ("mean_return",)),
    ("KL to reference", ("kl",)),
)


def _series(rows: Sequence[dict[str, Any]], keys: tuple[str, ...]) -> tuple[str, list[int], list[float]] | None:
    for key in keys:
        points = [
            (int(r.get("iteration", i)), float(r[key]))
            for i, r in enumerate(rows)
            if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
        ]
        if points:
            return key, [p[0] for p in points], [p[1] for p in points]
    return None


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(rows: Sequence[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Render the four panels to ``out`` (PNG); panels without data say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    window = max(1, len(rows) // 10)
    drawn = 0
    for ax, (panel, keys) in zip(axes.flat, PANELS, strict=True):
        found = _series(rows, keys)
        ax.set_title(panel)
        ax.set_xlabel("iteration")
        if found is None:
            ax.text(0.5, 0.5, f"no {' / '.join(keys)} in the metrics", ha="center", va="center", transform=ax.transAxes)
            continue
        key, xs, ys = found
        ax.plot(xs, ys, alpha=0.35, label=key)
        if window > 1:
            ax.plot(xs, _smooth(ys, window), label=f"{key} (mean of {window})")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        drawn += 1
    if drawn == 0:
        plt.close(fig)
        raise ValueError(f"none of the plotted metrics ({', '.join(k for _, ks in PANELS for k in ks)}) are present")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_file(metrics_path: Path, out: Path) -> Path:
    return plot_curves(read_metrics(metrics_path), out, title=Path(metrics_path).name)
