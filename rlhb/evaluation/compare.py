"""`rlhb eval compare A B`: two versions answer the same held-out questions; a judge picks the
better answer of each pair; Win-Tie-Loss of A against B with a sign test (RLHB paper, 6.1).

Protocol, and why:

- Versions are ``base``, a version name under the adapter folder, or an adapter folder path.
  Both answer the held-out split (rlhb/queries.py) in process with the API's prompt and the
  served behavior sentence (the most preferred one), so this is what each would serve.
- Each pair is judged twice, A shown first and then B shown first, as the paper does with
  GPT-4: a judge with a position bias would otherwise hand the win to whoever is shown first.
  Both orders must agree for a win or a loss; anything else (they disagree, or either says
  tie) is a tie.
- Sign test: ties carry no direction, so the test is binomial on wins among wins + losses
  (p = 0.5 under "equally good"), two-sided (scipy ``binomtest``).
- Win-rate difference (wins - losses) / n with a percentile bootstrap 95% CI over questions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhb.evaluation.judges import Judge, Pick

BASE = "base"
BOOTSTRAP_SAMPLES = 10_000


# ------------------------------------------------------------------ the pure part
def outcome(a_first: Pick, b_first: Pick) -> str:
    """'win' / 'tie' / 'loss' of A from the two orders' picks (A first, then B first)."""
    a_says = {"first": "A", "second": "B", "tie": "tie"}[a_first]
    b_says = {"first": "B", "second": "A", "tie": "tie"}[b_first]
    if a_says == b_says == "A":
        return "win"
    if a_says == b_says == "B":
        return "loss"
    return "tie"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign-test p-value (ties dropped); 1.0 when nothing was decided."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue)


def bootstrap_ci(outcomes: Sequence[str], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of (wins - losses) / n, resampling questions with replacement."""
    import numpy as np

    if not outcomes:
        return 0.0, 0.0
    scores = np.array([{"win": 1.0, "tie": 0.0, "loss": -1.0}[o] for o in outcomes])
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(samples, len(scores)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class Comparison:
    a: str
    b: str
    judge: str
    wins: int
    ties: int
    losses: int
    p_value: float
    win_rate_diff: float
    ci95: tuple[float, float]
    rows: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict:
        return {**asdict(self), "n": self.n, "ci95": list(self.ci95)}


def compare_answers(
    questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str], judge: Judge,
    a: str = "A", b: str = "B", seed: int = 0,
) -> Comparison:  # fmt: skip
    """Judge every pair in both orders and summarise (no model involved)."""
    rows = []
    for q, ans_a, ans_b in zip(questions, answers_a, answers_b, strict=True):
        a_first, b_first = judge.pick(q, ans_a, ans_b), judge.pick(q, ans_b, ans_a)
        rows.append({"question": q, "answer_a": ans_a, "answer_b": ans_b,
                     "a_first": a_first, "b_first": b_first, "outcome": outcome(a_first, b_first)})  # fmt: skip
    outcomes = [r["outcome"] for r in rows]
    wins, ties, losses = (outcomes.count(o) for o in ("win", "tie", "loss"))
    return Comparison(
        a=a, b=b, judge=judge.name, wins=wins, ties=ties, losses=losses, p_value=sign_test(wins, losses),
        win_rate_diff=(wins - losses) / len(rows) if rows else 0.0, ci95=bootstrap_ci(outcomes, seed=seed), rows=rows,
    )  # fmt: skip


# ------------------------------------------------------------------ versions and answers
def resolve_version(spec: str, adapter_dir: Path) -> str | None:
    """The adapter folder of ``spec`` (None for the base model); ValueError naming the choices."""
    from core.checkpoint_format import ADAPTER_CONFIG

    if spec == BASE:
        return None
    for folder in (Path(spec), adapter_dir / spec):
        if (folder / ADAPTER_CONFIG).is_file():
            return str(folder)
    folders = adapter_dir.iterdir() if adapter_dir.is_dir() else ()
    known = sorted(p.name for p in folders if (p / ADAPTER_CONFIG).is_file())
    raise ValueError(
        f"version {spec!r}: not 'base', not an adapter folder, and not a version in {adapter_dir} "
        f"(known: {', '.join(known) or 'none'}; set --adapter-dir or RLHB_ADAPTER_DIR)"
    )


@dataclass(frozen=True)
class CompareConfig:
    a: str
    b: str
    judge: str
    out: Path
    model_path: str
    adapter_dir: Path
    questions: int = 100
    max_new_tokens: int = 96
    temperature: float = 0.0
    seed: int = 0
    threads: int = 2
    prompt_file: Path | None = None
    judge_model: str = "gpt-4-turbo"


def held_out_questions(count: int, seed: int) -> list[str]:
    """``count`` held-out questions (0: all), a seeded sample so a small run is not one topic."""
    from rlhb.queries import split_questions

    held = list(split_questions().held_out)
    return held if count <= 0 or count >= len(held) else random.Random(seed).sample(held, count)


def answer(cfg: CompareConfig, adapter: str | None, questions: list[str]) -> list[str]:
    """Answers of one version; the same torch seed per chunk for both versions (paired draws)."""
    import torch

    from core.behavior.encoding import most_preferred_sentence
    from rlhb.evaluation.offline_answers import generate_answers, load_generator

    tok, model = load_generator(cfg.model_path, adapter, cfg.threads)
    behavior, out = most_preferred_sentence(), []
    for i in range(0, len(questions), 16):
        torch.manual_seed(cfg.seed * 100003 + i)
        out += generate_answers(tok, model, questions[i : i + 16], behavior, cfg.max_new_tokens, cfg.temperature)
    return [a.strip() for a in out]


def run_compare(cfg: CompareConfig) -> Comparison:
    """Resolve, generate, judge, write report.json, report.md and wtl.png into ``cfg.out``."""
    from rlhb.evaluation.judges import load_judge

    adapters = resolve_version(cfg.a, cfg.adapter_dir), resolve_version(cfg.b, cfg.adapter_dir)
    judge = load_judge(cfg.judge, cfg.prompt_file, cfg.judge_model)  # bad specs fail before any generation
    questions = held_out_questions(cfg.questions, cfg.seed)
    answers_a, answers_b = (answer(cfg, adapter, questions) for adapter in adapters)
    result = compare_answers(questions, answers_a, answers_b, judge, cfg.a, cfg.b, cfg.seed)
    result.settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    result.settings["unparsed_judge_replies"] = getattr(judge, "unparsed", 0)
    if callable(getattr(judge, "score", None)):  # a scoring judge (classifier:): keep each answer's number
        for row in result.rows:
            row["score_a"], row["score_b"] = (judge.score(row["question"], row[k]) for k in ("answer_a", "answer_b"))
    write_report(result, cfg.out)
    return result


# ------------------------------------------------------------------ report
def write_report(result: Comparison, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.as_dict(), indent=2))
    (out / "report.md").write_text(markdown(result))
    plot(result, out / "wtl.png")


def markdown(r: Comparison) -> str:
    n, counts = max(1, r.n), (r.wins, r.ties, r.losses)
    verdict = "significant" if r.p_value < 0.05 else "not significant"
    lines = [
        f"# {r.a} vs {r.b}",
        "",
        f"Judge `{r.judge}`, {r.n} held-out questions, each pair judged in both orders "
        "(a win or a loss needs both orders to agree; anything else is a tie).",
        "",
        "| | count | share |",
        "|---|---:|---:|",
        *(f"| {k} of {r.a} | {v} | {v / n:.1%} |" for k, v in zip(("wins", "ties", "losses"), counts, strict=True)),
        "",
        f"- sign test (wins vs losses, two-sided): p = {r.p_value:.4g} ({verdict} at 0.05)",
        f"- win-rate difference (wins - losses) / n: {r.win_rate_diff:+.3f}, "
        f"bootstrap 95% CI [{r.ci95[0]:+.3f}, {r.ci95[1]:+.3f}]",
        "",
        "![win/tie/loss](wtl.png)",
        "",
    ]
    return "\n".join(lines)


def plot(r: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(["win", "tie", "loss"], [r.wins, r.ties, r.losses], color=["#2a9d8f", "#adb5bd", "#e76f51"])
    ax.bar_label(bars)
    ax.margins(y=0.15)  # room for the labels above the tallest bar
    ax.set_ylabel("questions")
    ax.set_title(f"{r.a} vs {r.b} ({r.judge})\nsign test p = {r.p_value:.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
