"""`rlhb eval ratings`: load rating tasks for the /rate page, and report the human ratings as
the RLHB paper's figure 3 does (section 6.2).

Report, and why:

- Per version, the distribution of Quality (bad / medium / good / excellent) and Satisfaction
  (unsatisfied / partially / satisfied) as counts and shares: figure 3(c) and 3(d). The paper
  reads them as "good + excellent" (high quality) and "satisfied + partially" shares; those
  two are reported as well. A version in several pairs counts every answer it was rated on.
- Per pair of versions (as loaded: A against B), the raters' preference as Win-Tie-Loss of A
  with a two-sided sign test on wins vs losses (ties dropped), and the Win-Tie-Loss the
  Quality levels imply (the higher level wins, equal is a tie): figure 3(b).
- Every rating counts once (several raters of one task are several samples, as the paper's
  annotators were).

Tasks come from `rlhb eval compare`'s report.json (its ``a``, ``b`` and ``rows``: both
versions' answers to the same held-out questions), or from JSON / JSONL pair objects
``{question, version_a, answer_a, version_b, answer_b}``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from core.errors import validation_message
from core.ratings_store import QUALITY, SATISFACTION, RatingPair, StoredRating
from rlhb.evaluation.compare import sign_test

QUALITY_COLORS = ("#e76f51", "#f4a261", "#8ecae6", "#2a9d8f")
SATISFACTION_COLORS = ("#e76f51", "#e9c46a", "#2a9d8f")


# ------------------------------------------------------------------ loading tasks
def read_pairs(path: Path) -> list[RatingPair]:
    """The pairs in ``path``: a compare report.json, a JSON list, or JSONL; ValueError naming
    the line or row and field that is wrong."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "rows" in data:  # rlhb eval compare's report.json
        if not isinstance(data.get("a"), str) or not isinstance(data.get("b"), str):
            raise ValueError(f"{path}: a compare report needs string fields 'a' and 'b' (the two versions)")
        rows = [
            {**row, "version_a": data["a"], "version_b": data["b"]} if isinstance(row, dict) else row
            for row in data["rows"]
        ]
        items = [(f"rows[{i}]", row) for i, row in enumerate(rows)]
    elif isinstance(data, list):
        items = [(f"[{i}]", row) for i, row in enumerate(data)]
    elif isinstance(data, dict):
        items = [("the object", data)]
    else:  # JSONL: one pair object per line
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from e
    pairs = []
    for where, item in items:
        try:
            pairs.append(RatingPair.model_validate(item))
        except ValidationError as e:
            raise ValueError(f"{path} {where}: {validation_message(e, default='pair')}") from e
    if not pairs:
        raise ValueError(f"{path}: no pairs (expected a compare report.json, a JSON list or JSONL of pairs)")
    return pairs


# ------------------------------------------------------------------ the report (pure)
def _distribution(values: list[str], levels: tuple[str, ...]) -> dict:
    counts = Counter(values)
    n = max(1, len(values))
    return {level: {"count": counts[level], "share": counts[level] / n} for level in levels}


def _wtl(outcomes: list[str]) -> dict:
    wins, ties, losses = (outcomes.count(o) for o in ("win", "tie", "loss"))
    n = max(1, len(outcomes))
    return {"wins": wins, "ties": ties, "losses": losses, "win_share": wins / n, "tie_share": ties / n,
            "loss_share": losses / n, "p_value": sign_test(wins, losses)}  # fmt: skip


def summarize(ratings: list[StoredRating]) -> dict:
    """Figure-3-style numbers of ``ratings`` (see the module docstring)."""
    answers: dict[str, list[tuple[str, str]]] = {}
    pairs: dict[tuple[str, str], list[StoredRating]] = {}
    for r in ratings:
        answers.setdefault(r.version_a, []).append((r.rating.quality_a, r.rating.satisfaction_a))
        answers.setdefault(r.version_b, []).append((r.rating.quality_b, r.rating.satisfaction_b))
        pairs.setdefault((r.version_a, r.version_b), []).append(r)
    versions = {}
    for version, scores in sorted(answers.items()):
        quality = _distribution([q for q, _ in scores], QUALITY)
        satisfaction = _distribution([s for _, s in scores], SATISFACTION)
        versions[version] = {
            "n": len(scores),
            "quality": quality,
            "satisfaction": satisfaction,
            "good_or_excellent_share": quality["good"]["share"] + quality["excellent"]["share"],
            "satisfied_or_partially_share": satisfaction["satisfied"]["share"] + satisfaction["partially"]["share"],
        }
    comparisons = []
    for (a, b), rows in sorted(pairs.items()):
        preference = [{"a": "win", "b": "loss", "tie": "tie"}[r.rating.preference] for r in rows]
        by_quality = []
        for r in rows:
            diff = QUALITY.index(r.rating.quality_a) - QUALITY.index(r.rating.quality_b)
            by_quality.append("win" if diff > 0 else "loss" if diff < 0 else "tie")
        comparisons.append({"a": a, "b": b, "n": len(rows), "preference": _wtl(preference),
                            "quality": _wtl(by_quality)})  # fmt: skip
    return {
        "ratings": len(ratings),
        "raters": len({r.rater for r in ratings}),
        "tasks": len({r.task_id for r in ratings}),
        "versions": versions,
        "pairs": comparisons,
    }


def markdown(summary: dict, store: str) -> str:
    lines = [
        "# Human ratings",
        "",
        f"{summary['ratings']} ratings of {summary['tasks']} tasks by {summary['raters']} raters (store: {store}).",
        "",
    ]
    if not summary["ratings"]:
        return "\n".join([*lines, "Nothing rated yet.", ""])
    for title, key, levels, extra, extra_key in (
        ("Quality (figure 3c)", "quality", QUALITY, "good + excellent", "good_or_excellent_share"),
        ("Satisfaction (figure 3d)", "satisfaction", SATISFACTION, "satisfied + partially",
         "satisfied_or_partially_share"),
    ):  # fmt: skip
        lines += [f"## {title}", "", f"| version | n | {' | '.join(levels)} | {extra} |",
                  "|---|---:|" + "---:|" * (len(levels) + 1)]  # fmt: skip
        for version, v in summary["versions"].items():
            cells = " | ".join(f"{v[key][lv]['count']} ({v[key][lv]['share']:.0%})" for lv in levels)
            lines.append(f"| {version} | {v['n']} | {cells} | {v[extra_key]:.0%} |")
        lines.append("")
    lines += ["## Win-Tie-Loss of A against B (figure 3b)", "",
              "| A vs B | n | by | win | tie | loss | sign test p |", "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for p in summary["pairs"]:
        for by in ("preference", "quality"):
            w = p[by]
            lines.append(
                f"| {p['a']} vs {p['b']} | {p['n']} | {by} | {w['wins']} ({w['win_share']:.0%}) | "
                f"{w['ties']} ({w['tie_share']:.0%}) | {w['losses']} ({w['loss_share']:.0%}) | {w['p_value']:.4g} |"
            )
    return "\n".join([*lines, "", "Sign test: wins vs losses, ties dropped, two-sided.", "",
                      "![ratings](ratings.png)", ""])  # fmt: skip


def plot(summary: dict, path: Path) -> None:
    """Stacked shares per version (quality, satisfaction) and preference W/T/L per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = list(summary["versions"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.6 * max(3, len(versions), len(summary["pairs"])) + 1.5))
    for ax, key, levels, colors, title in (
        (axes[0], "quality", QUALITY, QUALITY_COLORS, "Quality"),
        (axes[1], "satisfaction", SATISFACTION, SATISFACTION_COLORS, "Satisfaction"),
    ):
        left = [0.0] * len(versions)
        for level, color in zip(levels, colors, strict=True):
            shares = [summary["versions"][v][key][level]["share"] for v in versions]
            ax.barh(versions, shares, left=left, color=color, label=level)
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=len(levels), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    names = [f"{p['a']} vs {p['b']}" for p in summary["pairs"]]
    left = [0.0] * len(names)
    for kind, color in (("win", "#2a9d8f"), ("tie", "#adb5bd"), ("loss", "#e76f51")):
        shares = [p["preference"][f"{kind}_share"] for p in summary["pairs"]]
        axes[2].barh(names, shares, left=left, color=color, label=kind)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axes[2].set_xlim(0, 1)
    axes[2].set_title("Preference (A's win / tie / loss)")
    axes[2].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict, out: Path, store: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ratings.json").write_text(json.dumps(summary, indent=2))
    (out / "ratings.md").write_text(markdown(summary, store))
    if summary["ratings"]:
        plot(summary, out / "ratings.png")
