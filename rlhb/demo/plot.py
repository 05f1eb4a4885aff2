"""``demo.png``: like rate per version, quality measures and training curves, per algorithm."""

from __future__ import annotations

from rlhb.demo.config import DemoConfig
from rlhb.demo.judging import VersionResult

QUALITY_LINES = (
    ("relevance", "o", "-", "relevance"),
    ("repeated_ngram_rate", "x", "--", "repeated 3-grams"),
    ("cut_off_share", ".", ":", "cut-off share"),
)
"""(quality key, marker, line style, label) of the quality panel's lines."""


def plot(cfg: DemoConfig, report: dict, results: list[VersionResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    rows = [r for r in report["versions"] if "n" in r]
    base = next((r for r in rows if r["algorithm"] == "base"), None)
    known = {"rlhb": "tab:blue", "rlhbc": "tab:orange", "rlhf": "tab:green", "sft": "tab:purple", "pro": "tab:red"}
    colors = {a: known.get(a, f"C{5 + i}") for i, a in enumerate(cfg.algorithms)}  # variant lanes: unused colors
    for algo in cfg.algorithms:
        pts = ([base] if base else []) + [r for r in rows if r["algorithm"] == algo]
        if not pts:
            continue
        x = [r["round"] for r in pts]
        y = [r["like_rate"] for r in pts]
        err = [
            [max(0.0, r["like_rate"] - r["ci_low"]) for r in pts],
            [max(0.0, r["ci_high"] - r["like_rate"]) for r in pts],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=cfg.label(algo), color=colors.get(algo))
    for other in [r for r in rows if r["algorithm"] == "base" and r is not base]:  # drift: base under the new taste
        err = [[max(0.0, other["like_rate"] - other["ci_low"])], [max(0.0, other["ci_high"] - other["like_rate"])]]
        ax.errorbar([0], [other["like_rate"]], yerr=err, marker="x", capsize=4, color="grey", label=other["version"])
    ax.set_xlabel("training round (0 = base)")
    ax.set_ylabel("held-out like rate (95% Wilson CI)")
    ax.set_title("Like rate per adapter version")
    ax.legend()
    ax = axes[1]
    for algo in cfg.algorithms:
        pts = ([base] if base else []) + [r for r in rows if r["algorithm"] == algo]
        if not pts:
            continue
        x = [r["round"] for r in pts]
        for key, marker, style, name in QUALITY_LINES:
            ax.plot(
                x,
                [r["quality"].get(key) or 0 for r in pts],
                marker=marker,
                linestyle=style,
                color=colors.get(algo),
                label=f"{cfg.label(algo)} {name}",
            )
    ax.set_xlabel("training round (0 = base)")
    ax.set_title("Quality (not optimized by the trainer)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for algo in cfg.algorithms:
        series, offset = [], 0
        for r in results:
            if r.algorithm != algo:
                continue
            for m in r.train_metrics:
                score = m.get("d_reward", m.get("mean_score"))
                if isinstance(score, int | float):
                    series.append((offset + m.get("iteration", 0), score, m.get("kl")))
            offset += max(1, len(r.train_metrics))
        if series:
            ax.plot(
                [s[0] for s in series],
                [s[1] for s in series],
                marker="o",
                color=colors.get(algo),
                label=f"{cfg.label(algo)} reward",
            )
            kl = [(s[0], s[2]) for s in series if isinstance(s[2], int | float)]
            if kl:
                ax.plot(
                    [s[0] for s in kl],
                    [s[1] for s in kl],
                    marker="x",
                    linestyle="--",
                    color=colors.get(algo),
                    label=f"{cfg.label(algo)} KL",
                )
    ax.set_xlabel("training iteration (all rounds)")
    ax.set_title("Training curves")
    ax.legend(fontsize=7)
    fig.suptitle(f"rlhb demo: users '{cfg.users}', total {report['total_seconds'] / 60:.1f} min")
    fig.tight_layout()
    fig.savefig(cfg.out_dir / "demo.png", dpi=110)
    plt.close(fig)


def plot_live(cfg: DemoConfig, report: dict) -> None:
    """``live.png``: the live like rate (95% CI) of the traffic after each round, per algorithm,
    with the A/B arms when there were trials; drift and the poisoned round marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.get("live_rounds", [])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    base = [r for r in rows if r["algorithm"] == "base"]
    for algo in cfg.algorithms:
        pts = base + [r for r in rows if r["algorithm"] == algo]
        if not pts:
            continue
        for key, style in (("all", "-o"), ("candidate", "--^")):
            sel = [(r["round"], r if key == "all" else r.get("arms", {}).get(key)) for r in pts]
            sel = [(x, p) for x, p in sel if p and p["n"]]
            if not sel:
                continue
            ax.errorbar(
                [x for x, _ in sel],
                [p["like_rate"] for _, p in sel],
                yerr=[
                    [max(0.0, p["like_rate"] - p["ci_low"]) for _, p in sel],
                    [max(0.0, p["ci_high"] - p["like_rate"]) for _, p in sel],
                ],
                fmt=style,
                capsize=3,
                label=f"{cfg.label(algo)}" + (" (candidate arm)" if key != "all" else ""),
            )
        for r in pts:
            if r.get("decision") in ("promoted", "rejected", "undecided"):
                ax.annotate(
                    r["decision"], (r["round"], r["like_rate"]), fontsize=7, xytext=(3, 6), textcoords="offset points"
                )
    if cfg.drift:
        _, after, at = cfg.drift_parts()
        ax.axvline(at - 0.5, color="gray", linestyle=":", label=f"drift -> {after}")
    if cfg.poison_round:
        ax.axvspan(cfg.poison_round - 0.5, cfg.poison_round + 0.5, color="red", alpha=0.08, label="poisoned round")
    ax.set_xlabel("round (0: base traffic)")
    ax.set_ylabel("live like rate (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(cfg.out_dir / "live.png", dpi=110)
    plt.close(fig)
