"""Does D's reward prefer an answer cut to a few words over the whole answer? Offline, on a demo's records.

Every frozen-D run through the services made near-empty answers more common (bench/demo_experiments.md
E14-E17), and the users dislike those (p_like 0.04 under every preset). This asks the reward directly,
without PPO: warm D up exactly as the demo's RLHB lane does (``RLHBTrainer.warmup`` on the lane's own
640 logged records, its held-out split by query), then, on the held-out records, score each whole
answer and the same answer cut to its first k <= 8 words (``truncate_words``), both under the served
sentence, and report

- ``truncated_win``: share of held-out records whose cut answer gets the higher reward (the trainer's
  ``d_heldout_truncated_win``); 0.5 is a coin, above it PPO gains by answering less;
- ``spearman_p_like``: rank correlation of the reward with the users' true like probability over the
  whole and cut answers together (the simulated users judge each text: ``UserModel.judge``), i.e.
  whether the reward ranks answers the way the users do, degenerate ones included;

for each D (``--shares``: ``d_truncated_share`` values) and each reward built from the same logits:
``contrastive`` (the default, z(b) - z(b_opp)), ``log_d`` (the paper's eq. 2), and
``contrastive+w log_d`` for w in 0.5, 1, 2 (preference plus realness: ``reward_realness_weight``).

Usage (the records: a demo lane's state/trainer-records.jsonl, or the copy kept with E18):
  .venv/bin/python bench/reward_truncation.py \\
      --records bench/demo-results/2026-12-05-truncated-fakes/base-records.jsonl \\
      --users concise --out bench/demo-results/2026-12-05-truncated-fakes/reward-truncation.jsonl
Prints one JSON line per (share, reward); writes them to --out.
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
from rlhb.simulate.users import load_user_model  # noqa: E402
from trainer.algorithms.base import TrainRequest  # noqa: E402
from trainer.algorithms.rlhb import RLHBTrainer  # noqa: E402
from trainer.config import RLHBConfig  # noqa: E402
from trainer.losses.discriminator import contrastive_reward, discriminator_reward  # noqa: E402
from trainer.records import load_records  # noqa: E402

DEMO_LANE = dict(d_frozen=True, d_warmup_steps=150, preferred_prompt_share=1.0)  # rlhb.demo.config: the rlhb lane


def rewards(trainer: RLHBTrainer, queries: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    served = [trainer.pool.most_preferred()] * len(queries)
    opposite = [trainer.pool.opposite(b) or b for b in served]
    with torch.no_grad():
        z, z_opp = trainer.discriminator.logits_pair(queries, answers, served, opposite)  # (N,), (N,)
    contrast, log_d = contrastive_reward(z, z_opp), discriminator_reward(z, "log_d")
    return {
        "contrastive": contrast,
        "log_d": log_d,
        **{f"contrastive+{w:g}log_d": contrast + w * log_d for w in (0.5, 1.0, 2.0)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, required=True, help="A lane's trainer-records.jsonl.")
    p.add_argument("--users", default="concise", help="The preset that gave the feedback.")
    p.add_argument("--shares", default="0,0.25", help="d_truncated_share values, one warmed-up D each.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    records = load_records(args.records)
    users = load_user_model(args.users)
    model = str(prepare_model(log=lambda *_: None))
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as scratch:
            request = TrainRequest(
                records=records, model_path=model, output_root=Path(scratch), version_name="d", seed=args.seed,
                steps=1, progress=False,
            )  # fmt: skip
            config = RLHBConfig(**DEMO_LANE, d_truncated_share=share, threads=args.threads)
            trainer = RLHBTrainer(request, config)
            trainer.warmup()
        held = trainer.heldout_records
        queries = [r.query for r in held]
        whole, cut = [r.response for r in held], trainer.heldout_truncated
        p_like = [users.judge(q, a).p_like for q, a in zip(queries * 2, whole + cut, strict=True)]
        n = len(held)
        for kind, reward in rewards(trainer, queries * 2, whole + cut).items():
            row = {
                "d_truncated_share": share,
                "reward": kind,
                "heldout_records": n,
                "truncated_win": (reward[n:] > reward[:n]).float().mean().item(),
                "spearman_p_like": float(spearmanr(reward.tolist(), p_like).statistic),
                "mean_reward_whole": reward[:n].mean().item(),
                "mean_reward_cut": reward[n:].mean().item(),
                "users_p_like_whole": sum(p_like[:n]) / n,
                "users_p_like_cut": sum(p_like[n:]) / n,
                "d_heldout_auroc": trainer.heldout_accuracy()["d_heldout_auroc"],
                "warmup_seconds": time.time() - t0,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
