"""``rlhb ablate``: the RLHB paper's ablations (section 6.4, figure 6) at this project's scale.

In process (no broker), on one fixed set of logged data, so that only the variant differs:

1. the base model answers ``base_answers`` training questions under the served sentence; the
   simulated users react (1 + Poisson(4) viewers each) and the answers become behavior records
   exactly as the aggregator builds them (``rlhb.simulate.records``);
2. every variant trains RLHB from the base on those records for ``steps`` iterations with the
   same budget, its own change applied (kappa, frozen D, rollouts per prompt, batch size);
3. every version (base included) answers the same held-out questions under the served
   sentence; one simulated asker per answer (the same draw for every version) gives the like
   rate, with its Wilson CI, the lift over base and a one-sided p-value; the guards beside
   it: mean words, near-empty share, repeated 3-grams, relevance.

Outputs in ``out_dir``, rewritten after every variant (a run cut short keeps what it measured and a
rerun with the same settings skips the variants already there): ``results.json``, ``table.md`` (with
the paper's qualitative claims and whether each held here) and ``curves.png`` (figure 6: D loss, D's
probability of real on the generations, the shaped D reward, mean return and KL per iteration, one
line per variant).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "default": {},
    "kappa=0": {"kappa": 0.0},
    "kappa=0.5": {"kappa": 0.5},
    "frozen D": {"d_frozen": True},
    "rollouts=1": {"rollouts_per_prompt": 1},
    "batch=8": {"batch_size": 8},
}
"""The paper's ablations: kappa in {0, 0.2, 0.5}, adversarial vs frozen D, rollouts {1, 4}, batch {8, 16}."""

BUDGET: dict = {
    "batch_size": 16,
    "rollouts_per_prompt": 4,
    "max_new_tokens": 48,
    "kl_coef": 0.02,
    "learning_rate": 5e-4,
    "d_warmup_steps": 150,
    "ppo_epochs": 2,
    "minibatch_size": 8,
    "threads": 2,
}
"""What every variant shares (the demo's PPO budget; D warmed up before PPO in every variant)."""

QUICK_BUDGET: dict = {
    "batch_size": 4,
    "rollouts_per_prompt": 2,
    "max_new_tokens": 8,
    "d_warmup_steps": 2,
    "d_batch_size": 4,
    "heldout_max": 4,
    "minibatch_size": 2,
    "threads": 1,
}


@dataclass
class AblateConfig:
    out_dir: Path = Path("rlhb-ablate")
    users: str = "concise"
    """Simulated user model (preset or package.module:Class)."""
    model_path: str = ""
    """Base model folder ('' = the prepared SmolLM2)."""
    base_answers: int = 640
    """Logged base answers the records are made of (the demo's base traffic)."""
    eval_questions: int = 0
    """Held-out questions (0: all), each answered ``eval_samples`` times per version."""
    eval_samples: int = 2
    steps: int = 24
    max_new_tokens: int = 48
    """Answer cap of the logged answers, the rollouts and the judged answers (thorough users need 96-128)."""
    temperature: float = 0.7
    threads: int = 2
    seed: int = 0
    budget: dict = field(default_factory=lambda: dict(BUDGET))
    variants: tuple[str, ...] = tuple(VARIANTS)


def quick_config(out_dir: Path, model_path: str, **overrides) -> AblateConfig:
    """A tiny model and tiny sizes: the whole runner in a minute (tests, smoke runs)."""
    base = dict(
        out_dir=out_dir, model_path=model_path, base_answers=24, eval_questions=4, eval_samples=1, steps=2,
        max_new_tokens=8, threads=1, budget=dict(QUICK_BUDGET),
    )  # fmt: skip
    base.update(overrides)
    return AblateConfig(**base)


def _say(**kw) -> None:
    print(json.dumps(kw, default=str), flush=True)


def _answers(cfg: AblateConfig, questions: list[str], adapter: str | None, behavior: str, seed: int) -> list[str]:
    import torch

    from rlhb.evaluation.offline_answers import generate_answers, load_generator

    tok, model = load_generator(cfg.model_path, adapter, cfg.threads)
    out = []
    for i in range(0, len(questions), 32):
        torch.manual_seed(seed * 100003 + i)
        out += generate_answers(tok, model, questions[i : i + 32], behavior, cfg.max_new_tokens, cfg.temperature)
    return out


def _judge(cfg: AblateConfig, questions: list[str], answers: list[str]) -> dict:
    """Like rate (one asker per answer, the same draws for every version) and the guards."""
    from rlhb.evaluation.quality import quality_report
    from rlhb.evaluation.stats import wilson_interval
    from rlhb.simulate.users import load_user_model, sample_reaction

    user = load_user_model(cfg.users)
    liked = [
        sample_reaction(user.judge(q, a), random.Random(f"ablate-eval{cfg.seed}:{i}")).like
        for i, (q, a) in enumerate(zip(questions, answers, strict=True))
    ]
    ci = wilson_interval(sum(liked), len(liked))
    q = quality_report(questions, answers).as_dict()
    return {"likes": sum(liked), "n": len(liked), "like_rate": ci.rate, "ci": [ci.low, ci.high], "guards": q}


def run_ablation(cfg: AblateConfig) -> dict:
    import dataclasses

    from core.behavior.encoding import most_preferred_sentence
    from core.model_prep import default_model_dir
    from rlhb.evaluation.stats import compare_to_base
    from rlhb.queries import split_questions
    from rlhb.simulate.records import records_from_answers
    from trainer.algorithms import TrainRequest, default_config, get_algorithm

    cfg.model_path = cfg.model_path or str(default_model_dir())
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    served = most_preferred_sentence()
    split = split_questions()
    rng = random.Random(cfg.seed)
    train_q = [rng.choice(split.train) for _ in range(cfg.base_answers)]
    held = split.held_out[: cfg.eval_questions or None]
    eval_q = [q for q in held for _ in range(cfg.eval_samples)]

    config_key = {**dataclasses.asdict(cfg), "out_dir": str(cfg.out_dir)}
    done = _finished_rows(cfg.out_dir / "results.json", config_key)
    t0 = time.time()
    logged = _answers(cfg, train_q, None, served, cfg.seed)
    answers = [{"question": q, "answer": a, "behavior": served} for q, a in zip(train_q, logged, strict=True)]
    records, _, _ = records_from_answers(answers, cfg.users, 5.0, cfg.seed)
    base = _judge(cfg, eval_q, _answers(cfg, eval_q, None, served, cfg.seed + 1))
    _say(event="base", records=len(records), like_rate=base["like_rate"], seconds=round(time.time() - t0, 1))

    rows = [{"variant": "base", **base}]
    report = {"config": config_key, "served": served, "rows": rows}
    for name in cfg.variants:
        if name in done:  # an earlier run of this same configuration finished it (the base is deterministic)
            rows.append(done[name])
            _say(event="variant", variant=name, resumed=True, like_rate=done[name]["like_rate"])
            continue
        started = time.time()
        budget = {**cfg.budget, "max_new_tokens": cfg.max_new_tokens}  # the rollouts as long as the answers judged
        config = dataclasses.replace(default_config("rlhb"), **{**budget, **VARIANTS[name]})
        slug = name.replace("=", "").replace(" ", "-").replace(".", "")
        request = TrainRequest(
            records=records, model_path=cfg.model_path, output_root=cfg.out_dir / "adapters", version_name=slug,
            metrics_path=cfg.out_dir / f"{slug}.metrics.jsonl", seed=cfg.seed, steps=cfg.steps, progress=False,
        )  # fmt: skip
        result = get_algorithm("rlhb")(request, config)
        train_s = time.time() - started
        judged = _judge(cfg, eval_q, _answers(cfg, eval_q, str(result.checkpoint), served, cfg.seed + 1))
        vs = compare_to_base(judged["likes"], judged["n"], base["likes"], base["n"]).as_dict()
        curves = {k: [m.get(k) for m in result.metrics] for k in CURVES}
        row = {"variant": name, "changes": VARIANTS[name], **judged, "vs_base": vs, "train_seconds": train_s}
        row["curves"] = curves
        row["final_d_heldout_acc"] = result.metrics[-1].get("d_heldout_acc") if result.metrics else None
        rows.append(row)
        _say(event="variant", variant=name, like_rate=judged["like_rate"], lift=vs.get("lift"), seconds=train_s)
        _write(report, cfg.out_dir)  # after every variant: a run cut short keeps what it measured
    _write(report, cfg.out_dir)
    return report


def _write(report: dict, out_dir: Path) -> None:
    report["claims"] = check_claims(report["rows"])
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "table.md").write_text(format_table(report))
    plot_curves(report["rows"], out_dir / "curves.png")


def _finished_rows(path: Path, config_key: dict) -> dict[str, dict]:
    """Variants an earlier run with the same settings (the variant list aside) already measured, by name:
    a full ablation takes about two hours here, so a run cut short resumes where it stopped."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    same = {k: v for k, v in earlier.get("config", {}).items() if k != "variants"} == {
        k: v for k, v in json.loads(json.dumps(config_key, default=str)).items() if k != "variants"
    }
    return {r["variant"]: r for r in earlier.get("rows", [])[1:]} if same else {}


def _row(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["variant"] == name), None)


CURVES = ("d_loss", "d_prob_generated", "d_reward", "mean_return", "kl")
"""Per-iteration curves kept for every variant (figure 6: D loss, D's probability of "real" on the policy's
generations, the shaped reward PPO gets, mean return, KL)."""


def _values(row: dict, key: str) -> list[float]:
    return [v for v in row.get("curves", {}).get(key) or [] if v is not None]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _std(values: list[float]) -> float:
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5 if values else float("nan")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _late(values: list[float]) -> list[float]:
    """The last third of a curve: where the paper reads its ablations' end states."""
    return values[-max(1, len(values) // 3) :]


def check_claims(rows: list[dict]) -> list[dict]:
    """The paper's section 6.4 statements about figure 6, each with what this run measured. "held" is True or
    False, or says why neither (a missing curve, or a like-rate difference that is not significant)."""
    from rlhb.evaluation.stats import two_proportion_z

    out = []
    default, k5, frozen, r1, b8 = (_row(rows, n) for n in ("default", "kappa=0.5", "frozen D", "rollouts=1", "batch=8"))
    if default and k5:  # 6(a)-(b): "the discriminator collapses sharply, with the rewards approach almost 1.0"
        late = (_mean(_late(_values(default, "d_prob_generated"))), _mean(_late(_values(k5, "d_prob_generated"))))
        acc = (default.get("final_d_heldout_acc"), k5.get("final_d_heldout_acc"))
        held = "no D probability logged" if late[1] != late[1] else late[1] >= 0.9 and late[1] > late[0]
        out.append({"claim": "kappa = 0.5 collapses D: its probability of real on generations nears 1.0",
                    "measured": f"last third of the iterations {late[0]:.3f} (kappa 0.2) vs {late[1]:.3f} "
                    f"(kappa 0.5); D held-out accuracy {_num(acc[0])} vs {_num(acc[1])}", "held": held})  # fmt: skip
    if default and frozen:  # 6(a)-(b): "the frozen discriminator tends to predict ... a stable score of around 0.6"
        probs = (_values(default, "d_prob_generated"), _values(frozen, "d_prob_generated"))
        held = "no D probability logged" if not probs[1] else _std(probs[1]) < _std(probs[0])
        out.append({"claim": "a frozen D scores generations at a stable level (the paper: about 0.6) and does not "
                    "follow the policy", "measured": f"D probability on generations mean {_mean(probs[1]):.3f}, "
                    f"std {_std(probs[1]):.3f} over the iterations (frozen) vs {_mean(probs[0]):.3f}, "
                    f"{_std(probs[0]):.3f} (adversarial)", "held": held})  # fmt: skip
        _, p_adv_better, p_two = two_proportion_z(default["likes"], default["n"], frozen["likes"], frozen["n"])
        held = True if p_adv_better < 0.05 else False if p_two < 0.05 else f"not significant (p={p_two:.2g})"
        out.append({"claim": "so a frozen D cannot work like a reward model: it loses to the adversarial one",
                    "measured": f"like rate {default['like_rate']:.3f} (adversarial) vs {frozen['like_rate']:.3f} "
                    f"(frozen)", "held": held})  # fmt: skip
    if default and r1:  # 6(c): "with rollouts increasing from 1 to 4 ... stability can be significantly improved"
        s4, s1 = _std(_values(default, "mean_return")), _std(_values(r1, "mean_return"))
        out.append({"claim": "more rollouts per prompt train more stably", "measured": f"std of mean return per "
                    f"iteration {s4:.3f} (4) vs {s1:.3f} (1)", "held": s4 < s1})  # fmt: skip
    # 6(d): "batch size 16 to 8, the variance ... not obvious, except ... slightly larger volatility"
    if default and b8:
        s16, s8 = _std(_values(default, "mean_return")), _std(_values(b8, "mean_return"))
        _, _, p_two = two_proportion_z(default["likes"], default["n"], b8["likes"], b8["n"])
        measured = (f"like rate {default['like_rate']:.3f} (16) vs {b8['like_rate']:.3f} (8), p={p_two:.2g}; "
                    f"std of mean return per iteration {s16:.3f} vs {s8:.3f}")  # fmt: skip
        out.append({"claim": "batch 8 instead of 16: about the same effect, slightly more volatile",
                    "measured": measured, "held": p_two >= 0.05 and s8 >= s16})  # fmt: skip
    return out


def format_table(report: dict) -> str:
    lines = [
        "| variant | like rate | 95% CI | lift | p (one-sided) | words | near-empty | rep. 3-grams | relevance | "
        "D held-out acc | D prob. on generations first -> last | KL per answer, last (nats) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        g, vs = r["guards"], r.get("vs_base", {})
        lift = f"{vs['lift']:+.3f}" if vs else ""
        p = f"{vs['p_z_one_sided']:.3g}" if vs else ""
        acc = r.get("final_d_heldout_acc")
        acc_text = "" if acc is None else format(acc, ".3f")
        lines.append(
            f"| {r['variant']} | {r['like_rate']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {lift} | {p} | "
            f"{g.get('mean_words', 0):.1f} | {g.get('near_empty_share', 0):.3f} | "
            f"{g.get('repeated_ngram_rate', 0):.3f} | {(g.get('relevance') or 0):.3f} | {acc_text} | "
            f"{_first_last(r, 'd_prob_generated')} | {_first_last(r, 'kl', first=False)} | "
            f"{r.get('train_seconds', 0):.0f} |"
        )
    lines += ["", "| the paper's claim | measured here | held |", "|---|---|---|"]
    for c in report["claims"]:
        lines.append(f"| {c['claim']} | {c['measured']} | {c['held']} |")
    return "\n".join(lines) + "\n"


def _first_last(row: dict, key: str, first: bool = True) -> str:
    """A curve's first and last logged values ("0.41 -> 0.63"), or its last only; '' for base."""
    values = _values(row, key)
    if not values:
        return ""
    return f"{values[0]:.3g} -> {values[-1]:.3g}" if first else f"{values[-1]:.3g}"


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.6))
    for ax, key in zip(axes, CURVES, strict=True):
        for r in rows:
            values = r.get("curves", {}).get(key)
            if values:
                ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], label=r["variant"])
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
