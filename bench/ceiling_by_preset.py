"""How much a preset's feedback says about its answers: D's ceiling by preset, on the same answers.

Why: on thorough users D's held-out AUROC stayed near chance (E27: 0.54 at 96 tokens) where concise and
example users gave 0.64-0.73. Either the feedback carries little about those answers (a low ceiling: no D
could do better) or D misses what is there (a low share). This reads answers a demo served (its
``served.jsonl``, the base version's held-out answers by default), judges each one under every preset,
makes records the way the demo's traffic does (``rlhb.simulate.records.records_from_answers``: 1 +
Poisson(m - 1) viewers, the rates encoding at edges fitted on them, the trainer's behavior pool), and
prints per preset:

- ``expected_ceiling``: the Bayes-optimal AUROC for real vs behavior-swapped triplets on these answers
  (``rlhb.evaluation.d_ceiling.expected_ceiling``, exact: no sampling of pairs);
- ``prior_ceiling``: the best a judge reaches from the sentence alone, without looking at the answer: the
  trainer swaps to a uniformly random other sentence, so a rare sentence is more often a swap (the log ratio
  of the sentence's real and swapped frequencies over these answers). ``answer_signal`` = expected - prior
  is what the answers themselves add;
- the spread of the true like probability over the answers (its standard deviation), and the degenerate
  (cut off, empty, ...) share, which every preset dislikes alike.

Usage: ``.venv/bin/python bench/ceiling_by_preset.py bench/demo-results/<run>/served.jsonl [...]``; prints
one JSON line per (file, preset). Seconds of CPU; no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rlhb.evaluation.d_ceiling import Oracle, expected_ceiling, weighted_auroc
from rlhb.simulate.records import records_from_answers
from rlhb.simulate.users import load_user_model
from trainer.records import check_swappable

PRESETS = ("concise", "example", "warm", "thorough")


def served_answers(path: Path, version: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"question": r["question"], "answer": r["answer"], "behavior": ""}
        for r in rows
        if r.get("algorithm") == version or r.get("version") == version
    ]


def answer_blind_ceiling(oracle: Oracle, probs: list[tuple[float, float]]) -> float:
    """The best AUROC of a score of the sentence alone, on the same answers: the log ratio of the
    sentence's real and swapped frequencies over all the answers (their mixtures), each answer's
    real and swapped sentence distributions weighting the items as in ``expected_ceiling``."""
    dists = [oracle.distributions(p_like, p_dislike) for p_like, p_dislike in probs]
    texts = list(dists[0][0])
    real_mix = {t: statistics.fmean(real[t] for real, _ in dists) for t in texts}
    swap_mix = {t: statistics.fmean(swap[t] for _, swap in dists) for t in texts}
    score = {t: Oracle.llr(real_mix, swap_mix, t) for t in texts}
    return weighted_auroc([(score[t], real[t], swap[t]) for real, swap in dists for t in texts])


def preset_ceiling(answers: list[dict], users: str, viewers_mean: float, seed: int) -> dict:
    records, _, enc = records_from_answers(answers, users, viewers_mean, seed)
    pool = check_swappable(records, enc)
    oracle = Oracle(pool, enc, viewers_mean)
    user = load_user_model(users)
    judged = [user.judge(a["question"], a["answer"]) for a in answers]
    probs = [(j.p_like, j.p_dislike) for j in judged]
    mean = (statistics.fmean(p for p, _ in probs), statistics.fmean(d for _, d in probs))
    expected = expected_ceiling(oracle, probs)
    prior = answer_blind_ceiling(oracle, probs)
    return {
        "users": users,
        "answers": len(answers),
        "expected_ceiling": round(expected, 4),
        "prior_ceiling": round(prior, 4),
        "answer_signal": round(expected - prior, 4),
        "p_like_mean": round(mean[0], 4),
        "p_like_sd": round(statistics.pstdev(p for p, _ in probs), 4),
        "degenerate_share": round(sum(bool(j.degenerate) for j in judged) / len(judged), 4),
        "sentences": len(pool.texts),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("served", nargs="+", type=Path, help="served.jsonl files of demo runs")
    p.add_argument("--version", default="base", help="whose answers (an algorithm or version name)")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--viewers-mean", type=float, default=5.0, help="the demo's viewers per answer")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for path in args.served:
        answers = served_answers(path, args.version)
        for users in args.presets.split(","):
            row = preset_ceiling(answers, users, args.viewers_mean, args.seed)
            print(json.dumps({"bench": "ceiling_by_preset", "file": str(path), **row}), flush=True)


if __name__ == "__main__":
    main()
