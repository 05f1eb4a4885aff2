"""D designs on held-out accuracy, and the ceiling (issue 14 item 3, the measurement part).

For each discriminator design (``discriminator="minilm"``, the factorized MiniLM default;
``minilm-frozen``, the same with its encoder frozen and its features cached, ``d_freeze_encoder``; and
``discriminator="lm"``, the paper's D: the SmolLM2 base trunk with its own LoRA and a scalar head)
this runs RLHB's D warm-up only (no PPO) with the trainer's own code (``RLHBTrainer.warmup``: real vs
behavior-swapped triplets plus the kappa bootstrap, E8's settings: 150 steps, the library's D
defaults, seed 0, 2 threads) on the records of E5-E8 (the 640 base answers of
``/tmp/rlhb-exp/base-train.jsonl``, ``concise`` users, 1 + Poisson(4) viewers per answer, built by
``bench/demo_experiment.py``'s ``make_records``), and reports D's held-out pairwise accuracy and AUROC
(real vs behavior-swapped, the trainer's own split by query and its own fixed swaps:
``RLHBTrainer.heldout_accuracy``) and D's seconds.

The ceiling: the oracle's log likelihood ratio log P_real(b | q, a) - log P_swap(b | q, a) under the users'
true (p_like, p_dislike) of each answer, the Bayes-optimal score for "real or swapped?" (Neyman-Pearson), its
AUROC on the same held-out pairs, and the expected ceiling (its exact AUROC under the two distributions, no
sampling noise), on the held-out answers and on all 640. The math and its full explanation live in
``rlhb/evaluation/d_ceiling.py`` (the demo reports the same ceiling after every RLHB round). A weaker oracle,
the likelihood P_real(b | q, a) alone, is reported for reference.

D's share of the ceiling: (AUROC_D - 0.5) / (AUROC_ceiling - 0.5), with a bootstrap interval over
held-out pairs.

Usage (a 2-core shared machine: nice it):
  nice -n 15 .venv/bin/python bench/d_designs.py --designs minilm,lm --lm-steps 150 \
      --out bench/demo-results/2026-12-04-d-designs
Prints JSON lines; writes results.jsonl, pairs-<design>.jsonl and results.md to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import demo_experiment as de  # noqa: E402  (bench/ module: the records of E5-E8)

from rlhb.evaluation.d_ceiling import Oracle, auroc, expected_ceiling, pair_acc, share_of_ceiling  # noqa: E402


def log(rows: list[dict], **kw) -> None:
    rows.append(kw)
    print(json.dumps(kw), flush=True)


# --------------------------------------------------------------------------- metrics
def bootstrap(d_real, d_swap, o_real, o_swap, n_boot: int, seed: int) -> dict[str, list[float]]:
    """95% intervals of D's AUROC, the oracle's AUROC and D's share, resampling held-out pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [np.asarray(x, dtype=float) for x in (d_real, d_swap, o_real, o_swap)]
    n = len(arrays[0])
    a_d, a_o, share = [], [], []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        dr, ds, orr, os_ = (x[i] for x in arrays)
        ad, ao = auroc(dr, ds), auroc(orr, os_)
        a_d.append(ad)
        a_o.append(ao)
        share.append((ad - 0.5) / (ao - 0.5) if ao > 0.5 else float("nan"))

    def ci(xs):
        return [round(float(v), 3) for v in np.nanpercentile(xs, [2.5, 97.5])]

    return {"d_auroc_ci": ci(a_d), "ceiling_auroc_ci": ci(a_o), "share_ci": ci(share)}


# --------------------------------------------------------------------------- designs
DESIGNS = {
    "minilm": {"discriminator": "minilm"},
    # cached f(s, a), head trained alone; at the default head lr (1e-3) it overfits within 300 steps (E16)
    "minilm-frozen": {"discriminator": "minilm", "d_freeze_encoder": True, "d_head_learning_rate": 3e-5},
    "lm": {"discriminator": "lm"},
    # f(s, a) from the SmolLM2 base, frozen and cached, head alone (d_answer_encoder="policy"; E38)
    "lm-features": {"discriminator": "minilm", "d_answer_encoder": "policy"},
    "lm-features-slow": {"discriminator": "minilm", "d_answer_encoder": "policy", "d_head_learning_rate": 1e-4},
    # the fine-tuned MiniLM D with the answer's gate statistics beside f(s, a) (d_text_features; E29)
    "minilm-text": {"discriminator": "minilm", "d_text_features": True},
    # half of the swapped fakes swap the answer, not the sentence (d_answer_swap_share; E31)
    "minilm-answerswap": {"discriminator": "minilm", "d_answer_swap_share": 0.5},
}


def reward_fidelity(trainer, oracle_rows: dict) -> dict[str, float]:
    """PPO's reward on the held-out answers under the served sentence, against the users' true like probability:
    Spearman over all of them, and the share of same-question answer pairs (like probabilities 0.05 or more
    apart) that the reward orders as the users would. The second is what PPO's advantage uses."""
    import numpy as np

    records = trainer.heldout_records
    served = [trainer.pool.most_preferred()] * len(records)
    reward, _ = trainer._score([r.query for r in records], [r.response for r in records], served)
    reward = reward.tolist()
    p_like = [oracle_rows[r.impression_id]["p_like"] for r in records]
    ranks = [np.argsort(np.argsort(x)) for x in (reward, p_like)]
    right = total = 0
    for i in range(len(records)):
        for j in range(i + 1, len(records)):
            if records[i].query == records[j].query and abs(p_like[i] - p_like[j]) >= 0.05:
                total += 1
                right += (reward[i] - reward[j]) * (p_like[i] - p_like[j]) > 0
    return {
        "reward_spearman": float(np.corrcoef(*ranks)[0, 1]),
        "reward_same_question_acc": right / total if total else float("nan"),
        "reward_same_question_pairs": float(total),
    }


def make_trainer(records, design: str, steps: int, threads: int, seed: int, scratch: Path):
    from trainer.algorithms import TrainRequest, default_config
    from trainer.algorithms.rlhb import RLHBTrainer

    # E8's settings (bench/rlhb_variant_experiment.sh); only the D fields act in a warm-up
    config = dataclasses.replace(
        default_config("rlhb"),
        d_warmup_steps=steps,
        kl_coef=0.02,
        learning_rate=5e-4,
        batch_size=16,
        rollouts_per_prompt=4,
        max_new_tokens=48,
        threads=threads,
        ppo_epochs=2,
        minibatch_size=8,
        d_frozen=True,
        preferred_prompt_share=0.5,
        **DESIGNS[design],
    )
    request = TrainRequest(
        records=records,
        model_path=de.model_dir(),
        output_root=scratch,
        version_name=f"d-{design}",
        seed=seed,
        steps=1,
        progress=False,
        device="cpu",
    )
    return RLHBTrainer(request, config), config


def run_design(design, steps, eval_every, records, oracle_rows, args, rows, scratch):
    import torch

    t0 = time.time()
    trainer, config = make_trainer(records, design, steps, args.threads, args.seed, scratch)
    t_load = time.time() - t0
    held0 = trainer.heldout_accuracy()
    log(rows, event="design_loaded", design=design, load_s=round(t_load, 1), **_r(held0), d_steps=0)
    curve = [{"step": 0, **_r(held0)}]
    t1 = time.time()
    done = 0
    warm_s = 0.0
    while done < steps:
        n = min(eval_every or steps, steps - done)
        trainer.config = dataclasses.replace(config, d_warmup_steps=n)
        ts = time.time()
        history = trainer.warmup()
        warm_s += time.time() - ts
        done += n
        held = trainer.heldout_accuracy()
        curve.append({"step": done, **_r(held), "loss": round(history[-1]["d_loss"], 4)})
        log(rows, event="warmup_progress", design=design, step=done, of=steps, seconds=round(warm_s, 1), **_r(held))
        if time.time() > args.deadline:
            break
    total_s = time.time() - t1
    # the held-out pairs exactly as heldout_accuracy builds them
    pairs = [(r, s) for r, s in zip(trainer.heldout_records, trainer.heldout_swaps, strict=True) if s is not None]
    with torch.no_grad():
        z_real, z_swap = trainer.discriminator.logits_pair(
            [r.query for r, _ in pairs],
            [r.response for r, _ in pairs],
            [r.behavior_text for r, _ in pairs],
            [s for _, s in pairs],
        )
    z_real, z_swap = z_real.tolist(), z_swap.tolist()
    o = [oracle_rows[r.impression_id] for r, _ in pairs]
    o_real = [Oracle.llr(x["real"], x["swap"], r.behavior_text) for x, (r, _) in zip(o, pairs, strict=True)]
    o_swap = [Oracle.llr(x["real"], x["swap"], s) for x, (_, s) in zip(o, pairs, strict=True)]
    held = trainer.heldout_accuracy()
    fidelity = reward_fidelity(trainer, oracle_rows)
    log(rows, event="reward_fidelity", design=design, **_r(fidelity))
    d_auc = held["d_heldout_auroc"]
    ceil = auroc(o_real, o_swap)
    share = share_of_ceiling(d_auc, ceil)
    result = {
        "event": "design",
        "design": design,
        "d_steps": done,
        "d_steps_planned": steps,
        "heldout_pairs": len(pairs),
        "heldout_queries": len({r.query for r, _ in pairs}),
        "train_records": len(trainer.train_records),
        **_r(held),
        **_r(fidelity),
        "oracle_heldout_auroc": round(ceil, 4),
        "oracle_heldout_acc": round(pair_acc(o_real, o_swap), 4),
        "share_of_ceiling": None if share is None else round(share, 3),
        **bootstrap(z_real, z_swap, o_real, o_swap, args.bootstrap, args.seed),
        "load_s": round(t_load, 1),
        "warmup_s": round(warm_s, 1),
        "warmup_s_per_step": round(warm_s / max(1, done), 2),
        "total_s": round(total_s, 1),
        "curve": curve,
        "d_config": {
            k: getattr(config, k)
            for k in config.__dataclass_fields__
            if k.startswith("d_") or k in ("kappa", "kappa_source", "swap_share", "heldout_fraction", "heldout_max")
        },
    }
    with (args.out / f"pairs-{design}.jsonl").open("w") as f:
        for (r, s), zr, zs, orr, os_, x in zip(pairs, z_real, z_swap, o_real, o_swap, o, strict=True):
            f.write(
                json.dumps(
                    {
                        "id": r.impression_id,
                        "query": r.query,
                        "real": r.behavior_text,
                        "swap": s,
                        "z_real": zr,
                        "z_swap": zs,
                        "oracle_real": orr,
                        "oracle_swap": os_,
                        "p_like": x["p_like"],
                        "p_dislike": x["p_dislike"],
                    }
                )
                + "\n"
            )
    rows.append(result)
    print(json.dumps(result), flush=True)
    heldout_ids = [r.impression_id for r, _ in pairs]
    del trainer
    return result, heldout_ids


def _r(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


# --------------------------------------------------------------------------- report
def write_markdown(out: Path, setup: dict, results: list[dict], ceiling: dict) -> None:
    lines = [
        "# D designs and the ceiling (bench/d_designs.py)",
        "",
        f"Records: {setup['records']} (E5-E8's: {setup['answers']}, users {setup['users']}, "
        f"{setup['viewers_mean']:g} viewers on average, seed {setup['seed']}); D's held-out set: "
        f"{results[0]['heldout_pairs']} records over {results[0]['heldout_queries']} queries (the trainer's split by "
        "query), each against its fixed behavior-swapped twin.",
        "",
        "| D | warm-up steps | held-out pairwise acc | held-out AUROC [95% CI] | ceiling AUROC (oracle, same pairs) "
        "[95% CI] | share of ceiling [95% CI] | answer-swap AUROC | reward vs p_like: Spearman, same-question "
        "pairs ordered | D warm-up seconds (s/step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        steps = f"{r['d_steps']}" + ("" if r["d_steps"] == r["d_steps_planned"] else f" (of {r['d_steps_planned']})")
        lines.append(
            f"| {r['design']} | {steps} | {r['d_heldout_acc']:.3f} | {r['d_heldout_auroc']:.3f} "
            f"{r['d_auroc_ci']} | {r['oracle_heldout_auroc']:.3f} {r['ceiling_auroc_ci']} | "
            f"{r['share_of_ceiling']} {r['share_ci']} | {r['d_heldout_answer_auroc']:.3f} | "
            f"{r['reward_spearman']:.3f}, {r['reward_same_question_acc']:.3f} "
            f"of {r['reward_same_question_pairs']:.0f} | "
            f"{r['warmup_s']:.0f} ({r['warmup_s_per_step']}) |"
        )
    lines += [
        "",
        f"Oracle pairwise accuracy on the same held-out pairs: {results[0]['oracle_heldout_acc']:.3f}. "
        f"Expected ceiling (exact, no sampling noise): held-out answers {ceiling['expected_heldout']:.3f}, "
        f"all {setup['records']} answers {ceiling['expected_all']:.3f}; likelihood-only oracle "
        f"P_real(b | q, a) on the held-out pairs {ceiling['likelihood_only_heldout']:.3f}.",
        "",
        "Held-out AUROC along the warm-up:",
        "",
    ]
    for r in results:
        lines.append(f"- {r['design']}: " + ", ".join(f"{c['step']}: {c['d_heldout_auroc']:.3f}" for c in r["curve"]))
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", default=str(de.OUT / "base-train.jsonl"))
    p.add_argument("--users", default="concise")
    p.add_argument("--viewers-mean", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--designs", default="minilm,lm")
    p.add_argument("--steps", type=int, default=150, help="D warm-up steps (E8: 150).")
    p.add_argument("--lm-steps", type=int, default=150, help="Warm-up steps of the lm design (slow on a CPU).")
    p.add_argument(
        "--frozen-steps",
        type=int,
        default=600,
        help="Warm-up steps of the head-only designs, minilm-frozen and lm-features* (a head step is cheap; E16: 600).",
    )
    p.add_argument("--eval-every", type=int, default=50, help="Held-out metrics every this many steps.")
    p.add_argument("--lm-eval-every", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=0, help="Stop a design's warm-up after this wall time (0: none).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "bench/demo-results/2026-12-04-d-designs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from rlhb.simulate.users import load_user_model
    from trainer.records import check_swappable

    rows: list[dict] = []
    answers = de.load_jsonl(args.answers)
    records, p_like, enc = de.make_records(answers, args.users, args.viewers_mean, args.seed)
    user = load_user_model(args.users)
    judgements = [user.judge(a["question"], a["answer"]) for a in answers]
    if any(abs(j.p_like - q) > 1e-12 for j, q in zip(judgements, p_like, strict=True)):
        raise RuntimeError("the users' judgement is not deterministic: the oracle needs it to be")
    pool = check_swappable(records)
    oracle = Oracle(pool, enc, args.viewers_mean)
    oracle_rows = {}
    for r, j in zip(records, judgements, strict=True):
        real, swap = oracle.distributions(j.p_like, j.p_dislike)
        oracle_rows[r.impression_id] = {"real": real, "swap": swap, "p_like": j.p_like, "p_dislike": j.p_dislike}
    setup = {
        "answers": args.answers,
        "records": len(records),
        "users": args.users,
        "viewers_mean": args.viewers_mean,
        "seed": args.seed,
        "sentences": len(pool.texts),
        "edges": {k: list(v) for k, v in enc.edges.edges.items()},
    }
    log(rows, event="setup", **setup)
    expected_all = expected_ceiling(oracle, [(j.p_like, j.p_dislike) for j in judgements])

    results, heldout_ids = [], None
    with tempfile.TemporaryDirectory(prefix="d-designs-") as scratch:
        for design in args.designs.split(","):
            if design == "lm":  # a trunk backward per step: slow on a CPU
                steps, every = args.lm_steps, args.lm_eval_every
            elif design == "minilm-frozen" or design.startswith("lm-features"):  # cached features, head alone
                steps = args.frozen_steps
                every = max(args.eval_every, steps // 10)
            else:
                steps, every = args.steps, args.eval_every
            args.deadline = time.time() + args.budget_s if args.budget_s else math.inf
            res, ids = run_design(design, steps, every, records, oracle_rows, args, rows, Path(scratch))
            if heldout_ids is not None and ids != heldout_ids:
                raise RuntimeError("the designs were measured on different held-out pairs")
            heldout_ids = ids
            results.append(res)

    by_id = {r.impression_id: j for r, j in zip(records, judgements, strict=True)}
    pairs = [json.loads(line) for line in (args.out / f"pairs-{results[0]['design']}.jsonl").read_text().splitlines()]
    lik_real = [math.log(max(oracle_rows[x["id"]]["real"][x["real"]], 1e-300)) for x in pairs]
    lik_swap = [math.log(max(oracle_rows[x["id"]]["real"][x["swap"]], 1e-300)) for x in pairs]
    ceiling = {
        "expected_heldout": expected_ceiling(oracle, [(by_id[i].p_like, by_id[i].p_dislike) for i in heldout_ids]),
        "expected_all": expected_all,
        "likelihood_only_heldout": auroc(lik_real, lik_swap),
        "oracle_heldout": results[0]["oracle_heldout_auroc"],
    }
    log(rows, event="ceiling", **_r(ceiling))
    with (args.out / "results.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    write_markdown(args.out, setup, results, ceiling)


if __name__ == "__main__":
    main()
