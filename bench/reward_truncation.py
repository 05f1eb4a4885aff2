"""Does D's reward prefer a cut answer over the whole one? Offline, on a demo's records.

Every frozen-D run through the services made near-empty answers more common (bench/demo_experiments.md
E14-E17), and the users dislike those (p_like 0.04 under every preset); with truncated fakes and the
realness term, PPO instead ran answers to the token cap on example users (E18: 95% cut off). Both are
answers that do not end, and every preset counts an unfinished answer as degenerate. This asks the
reward directly, without PPO: warm D up exactly as the demo's RLHB lane does (``RLHBTrainer.warmup`` on
the lane's own 640 logged records, its held-out split by query), then, on the held-out records, score
each whole answer, the same answer cut to its first k <= 8 words (``truncate_words``) and the same
answer stopped mid-sentence at any length (``cut_mid_sentence``), all under the served sentence, and
report

- ``truncated_win`` / ``cut_win``: share of held-out records whose head-cut / mid-sentence-cut answer
  gets the higher reward (as the trainer's ``d_heldout_truncated_win`` / ``d_heldout_cut_win``; the
  mid-sentence cuts are drawn here); 0.5 is a coin, above it PPO gains by stopping early;
- ``spearman_p_like``: rank correlation of the reward with the users' true like probability over the
  whole and both cut answers together (the simulated users judge each text: ``UserModel.judge``);
- ``spearman_p_like_whole``: the same over the whole (real) answers only, about a third of which the
  token cap cut off: whether the reward ranks real answers as the users do;
- ``spearman_words`` vs ``users_spearman_words``: the reward's and the users' rank correlation with
  answer length over the whole answers, i.e. the length bias the reward brings against the one the
  users have;

for each D (``--fakes``: ``d_truncated_share[:d_truncated_cut]`` entries) and each reward built from the
same logits: ``contrastive`` (the default, z(b) - z(b_opp)), ``log_d`` (the paper's eq. 2), and
``contrastive+w log_d`` for w in 0.5, 1 (``reward_realness_weight``).

``--relabel USERS`` keeps the records' questions and answers and draws their feedback anew from another
preset (``rlhb.simulate.records.records_from_answers``: 1 + Poisson(4) viewers, as the demo; in process,
so no aggregator smoothing): one base traffic, judged by users whose taste is not the one it was logged
under.

Usage (the records: a demo lane's state/trainer-records.jsonl, or the copy kept with E18):
  .venv/bin/python bench/reward_truncation.py \\
      --records bench/demo-results/2026-12-05-truncated-fakes/base-records.jsonl \\
      --users concise --out bench/demo-results/2026-12-05-truncated-fakes/reward-truncation.jsonl
Prints one JSON line per (D, reward); writes them to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from core.model_prep import prepare_model  # noqa: E402
from core.text_measures import words as word_list  # noqa: E402
from rlhb.simulate.records import records_from_answers  # noqa: E402
from rlhb.simulate.users import load_user_model  # noqa: E402
from trainer.algorithms.base import TrainRequest  # noqa: E402
from trainer.algorithms.rlhb import RLHBTrainer, cut_mid_sentence  # noqa: E402
from trainer.config import RLHBConfig  # noqa: E402
from trainer.losses.discriminator import contrastive_reward, discriminator_reward  # noqa: E402
from trainer.records import load_records  # noqa: E402

DEMO_LANE = dict(d_frozen=True, d_warmup_steps=150, preferred_prompt_share=1.0)  # rlhb.demo.config: rlhb-frozen


def rewards(trainer: RLHBTrainer, queries: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    served = [trainer.pool.most_preferred()] * len(queries)
    opposite = [trainer.pool.opposite(b) or b for b in served]
    with torch.no_grad():
        z, z_opp = trainer.discriminator.logits_pair(queries, answers, served, opposite)  # (N,), (N,)
    contrast, log_d = contrastive_reward(z, z_opp), discriminator_reward(z, "log_d")
    return {
        "contrastive": contrast,
        "log_d": log_d,
        **{f"contrastive+{w:g}log_d": contrast + w * log_d for w in (0.5, 1.0)},
    }


def spearman(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, required=True, help="A lane's trainer-records.jsonl.")
    p.add_argument("--users", default="concise", help="The preset that gave the feedback.")
    p.add_argument("--relabel", action="store_true", help="Draw the feedback anew from --users (see above).")
    p.add_argument("--fakes", default="0,0.25:head,0.25:mid_sentence", help="D variants: share[:cut], comma-separated.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    records = load_records(args.records)
    if args.relabel:
        answers = [
            {"question": r.query, "answer": r.response, "behavior": r.behavior_prompt, "version": r.adapter_version}
            for r in records
        ]
        records, _, _ = records_from_answers(answers, args.users, 5.0, args.seed)
    users = load_user_model(args.users)
    model = str(prepare_model(log=lambda *_: None))
    rows = []
    for spec in args.fakes.split(","):
        share_text, _, cut = spec.partition(":")
        share, cut = float(share_text), cut or "head"
        t0 = time.time()
        with tempfile.TemporaryDirectory() as scratch:
            request = TrainRequest(
                records=records, model_path=model, output_root=Path(scratch), version_name="d", seed=args.seed,
                steps=1, progress=False,
            )  # fmt: skip
            config = RLHBConfig(**DEMO_LANE, d_truncated_share=share, d_truncated_cut=cut, threads=args.threads)
            trainer = RLHBTrainer(request, config)
            trainer.warmup()
        held = trainer.heldout_records
        n = len(held)
        queries = [r.query for r in held]
        whole, head = [r.response for r in held], trainer.heldout_truncated
        mid = [cut_mid_sentence(a, trainer.rng) for a in whole]
        texts = whole + head + mid
        p_like = [users.judge(q, a).p_like for q, a in zip(queries * 3, texts, strict=True)]
        n_words = [len(word_list(a)) for a in whole]
        auroc = trainer.heldout_accuracy()["d_heldout_auroc"]
        for kind, reward in rewards(trainer, queries * 3, texts).items():
            r_whole, r_head, r_mid = reward[:n], reward[n : 2 * n], reward[2 * n :]
            row = {
                "users": args.users,
                "relabelled": args.relabel,
                "d_truncated_share": share,
                "d_truncated_cut": cut if share else None,
                "reward": kind,
                "heldout_records": n,
                "truncated_win": (r_head > r_whole).float().mean().item(),
                "cut_win": (r_mid > r_whole).float().mean().item(),
                "spearman_p_like": spearman(reward.tolist(), p_like),
                "spearman_p_like_whole": spearman(r_whole.tolist(), p_like[:n]),
                "spearman_words": spearman(r_whole.tolist(), n_words),
                "users_spearman_words": spearman(p_like[:n], n_words),
                "users_p_like_whole": sum(p_like[:n]) / n,
                "users_p_like_head": sum(p_like[n : 2 * n]) / n,
                "users_p_like_mid": sum(p_like[2 * n :]) / n,
                "d_heldout_auroc": auroc,
                "warmup_seconds": time.time() - t0,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
