"""The ceiling of D's held-out AUROC (rlhb.evaluation.d_ceiling) on records simulated the way the demo's
traffic makes them (1 + Poisson(m - 1) viewers, rlhb.simulate's reactions, the rates encoding, the trainer's
swaps), and the demo's per-round entry (rlhb.demo.ceiling) on a held-out pairs file the trainer's writer made."""

from __future__ import annotations

import math
import random

import pytest

from rlhb.demo.ceiling import format_ceiling, remember, round_ceiling
from rlhb.evaluation.d_ceiling import (
    Oracle,
    auroc,
    ceiling_on_pairs,
    expected_ceiling,
    share_of_ceiling,
    view_pmf,
    weighted_auroc,
)
from rlhb.simulate.records import records_from_answers
from rlhb.simulate.users import Judgement, load_user_model
from trainer.heldout_pairs import HeldoutPair, write_heldout_pairs
from trainer.records import check_swappable

PROBS = [(0.05 + 0.6 * k / 9, 0.35 - 0.3 * k / 9) for k in range(10)]  # (p_like, p_dislike): ten answer qualities


class TableUsers:
    """Users whose (p_like, p_dislike) for answer "answer k" is PROBS[k]: judgements known by construction."""

    name = "table"

    def judge(self, question: str, answer: str) -> Judgement:
        p_like, p_dislike = PROBS[int(answer.split()[-1])]
        return Judgement(p_like=p_like, p_dislike=p_dislike, p_click=0.2, preference=0.5)


def simulated_pairs(n: int, viewers_mean: float, seed: int = 0):
    """n records made as the demo's traffic makes them (``records_from_answers``: 1 + Poisson(m - 1) viewers,
    the users' reactions, rates encoded at edges fitted on them), their judgements, the trainer's pool and
    encoding, and a swap for each record."""
    answers = [{"question": f"q{i}", "answer": f"answer {i % len(PROBS)}", "behavior": ""} for i in range(n)]
    records, _, enc = records_from_answers(answers, f"{__name__}:TableUsers", viewers_mean, seed)
    pool = check_swappable(records, enc)
    rng = random.Random(seed)
    swaps = [pool.swap(r.behavior_text, rng) for r in records]
    return records, [PROBS[i % len(PROBS)] for i in range(n)], pool, swaps


def test_weighted_auroc_is_exact_with_weights_and_ties():
    assert weighted_auroc([(1.0, 1, 0), (0.0, 0, 1)]) == 1.0
    assert weighted_auroc([(0.0, 1, 0), (1.0, 0, 1)]) == 0.0
    assert weighted_auroc([(0.3, 1, 1)]) == 0.5
    # positives: 3 at score 2, 1 at score 1; negatives: 1 at 2, 3 at 1 -> (9 + 1.5 + 1.5) / 16
    assert weighted_auroc([(2.0, 3, 1), (1.0, 1, 3)]) == pytest.approx(0.75)
    assert math.isnan(weighted_auroc([(1.0, 1, 0)]))


def test_view_pmf_is_one_plus_poisson():
    pmf = view_pmf(5.0)
    assert pmf[0] == 0.0 and sum(pmf) == pytest.approx(1.0)
    assert sum(v * p for v, p in enumerate(pmf)) == pytest.approx(5.0, abs=1e-9)
    assert view_pmf(1.0)[1] == pytest.approx(1.0)  # one viewer, always


def test_the_oracle_beats_random_scores_and_its_auroc_on_sampled_pairs_is_the_expected_ceiling():
    records, probs, pool, swaps = simulated_pairs(1500, viewers_mean=5.0)
    oracle = Oracle(pool, pool.encoding, 5.0)
    rng = random.Random(1)
    z_real, z_swap = [rng.gauss(0, 1) for _ in records], [rng.gauss(0, 1) for _ in records]
    out = ceiling_on_pairs(
        oracle, [r.behavior_text for r in records], swaps, z_real, z_swap, probs, counts=[r.counts for r in records]
    )
    assert out["pairs"] == 1500 and out["d_auroc"] == auroc(z_real, z_swap)
    assert 0.5 < out["expected_ceiling"] < 1.0
    # 1500 pairs drawn from the process the oracle models: its AUROC is the exact expectation, within noise
    assert out["ceiling_auroc"] == pytest.approx(out["expected_ceiling"], abs=0.03)
    assert abs(out["d_auroc"] - 0.5) < 0.04 < out["ceiling_auroc"] - out["d_auroc"]  # random D is far below
    assert out["share_of_ceiling"] == pytest.approx((out["d_auroc"] - 0.5) / (out["ceiling_auroc"] - 0.5))
    assert abs(out["share_of_ceiling"]) < 0.25
    assert out["encoding_agreement"] == 1.0  # every record was encoded with the oracle's encoding
    assert 0.5 < out["ceiling_pairwise_acc"] <= 1.0


def test_a_d_that_scores_like_the_oracle_has_all_of_the_ceiling_and_its_reverse_minus_all():
    records, probs, pool, swaps = simulated_pairs(300, viewers_mean=5.0, seed=2)
    oracle = Oracle(pool, pool.encoding, 5.0)
    real = [r.behavior_text for r in records]
    o_real = [oracle.score(j, t) for j, t in zip(probs, real, strict=True)]
    o_swap = [oracle.score(j, t) for j, t in zip(probs, swaps, strict=True)]
    same = ceiling_on_pairs(oracle, real, swaps, o_real, o_swap, probs)
    assert same["d_auroc"] == same["ceiling_auroc"] > 0.5 and same["share_of_ceiling"] == pytest.approx(1.0)
    reverse = ceiling_on_pairs(oracle, real, swaps, [-z for z in o_real], [-z for z in o_swap], probs)
    assert reverse["share_of_ceiling"] == pytest.approx(-1.0)
    assert share_of_ceiling(0.6, 0.5) is None and share_of_ceiling(0.7, 0.9) == pytest.approx(0.5)


def test_users_who_judge_every_answer_alike_lower_the_ceiling_but_not_to_chance():
    _, _, pool, _ = simulated_pairs(600, viewers_mean=5.0, seed=3)
    oracle = Oracle(pool, pool.encoding, 5.0)
    informed = expected_ceiling(oracle, PROBS)
    # the answer then says nothing about its sentence; what is left is the sentences' base rates (a swap is drawn
    # uniformly among the logged sentences, a real sentence by the viewing process): a D could use that alone
    flat = expected_ceiling(oracle, [(0.35, 0.2)] * len(PROBS))
    assert 0.5 < flat < informed < 1.0


# --------------------------------------------------------------------------- the demo's entry per round
ANSWERS = [
    (f"What is topic {i % 15}?", " ".join(["Topic", str(i % 15), "is", *["very"] * (i % 25), "useful."]))
    for i in range(80)
]


def write_dump(path, users: str = "concise", seed: int = 0):
    """The trainer's writer on records judged by ``users``: 80 answers, the first 20 held out."""
    answers = [{"question": q, "answer": a, "behavior": ""} for q, a in ANSWERS]
    records, _, enc = records_from_answers(answers, users, 5.0, seed)
    pool = check_swappable(records, enc)
    held = records[:20]
    z = random.Random(seed + 1)
    pairs = [
        HeldoutPair(r.impression_id, r.query, r.response, r.behavior_text, pool.swap(r.behavior_text, z),
                    z.gauss(1, 1), z.gauss(0, 1), dict(r.counts))
        for r in held
    ]  # fmt: skip
    d_auc = auroc([p.z_real for p in pairs], [p.z_swap for p in pairs])
    write_heldout_pairs(
        path, version="rlhb-r0001", iteration=0, d_heldout_auroc=d_auc, encoding=enc, sentences=pool.by_text,
        pairs=pairs,
    )  # fmt: skip
    return held, d_auc


class Logged:
    """What ``remember`` reads of a served answer."""

    def __init__(self, impression_id: str, p_like: float) -> None:
        self.impression_id, self.p_like = impression_id, p_like


def test_the_demo_entry_judges_the_pairs_with_the_users_that_logged_most_of_them(tmp_path):
    path = tmp_path / "d-heldout" / "rlhb-r0001.jsonl"
    held, d_auc = write_dump(path)
    concise, warm = load_user_model("concise"), load_user_model("warm")
    logged: dict = {}
    remember(logged, [Logged(r.impression_id, concise.judge(r.query, r.response).p_like) for r in held[:15]], "concise")
    remember(logged, [Logged(r.impression_id, warm.judge(r.query, r.response).p_like) for r in held[15:]], "warm")
    entry = round_ceiling(path, logged, 5.0, fallback_users="warm")
    assert entry["available"] and entry["users"] == "concise" and not entry["inverted_feedback"]
    assert entry["users_share"] == 0.75 and entry["traced_share"] == 1.0 and entry["judged_as_served"] == 1.0
    assert entry["pairs"] == 20 and entry["queries"] == len({r.query for r in held})
    assert entry["d_auroc"] == pytest.approx(d_auc, abs=1e-12) and entry["d_auroc_logged"] == pytest.approx(d_auc)
    assert 0.5 < entry["expected_ceiling"] < 1.0 and 0.0 <= entry["ceiling_auroc"] <= 1.0
    assert entry["share_of_ceiling"] == pytest.approx(share_of_ceiling(entry["d_auroc"], entry["ceiling_auroc"]))
    assert entry["encoding_agreement"] == 1.0
    line = format_ceiling(entry)
    assert line.startswith(f"D AUROC {entry['d_auroc']:.3f}, ceiling {entry['ceiling_auroc']:.3f}")
    assert "judged by concise, as 75% of the pairs were logged" in line

    # poisoned feedback (likes and dislikes swapped) under the majority: judged with the probabilities swapped
    inverted: dict = {}
    remember(inverted, [Logged(r.impression_id, 0.0) for r in held[:12]], "concise", inverted=True)
    flipped = round_ceiling(path, inverted, 5.0, fallback_users="concise")
    assert flipped["inverted_feedback"] and flipped["users_share"] == 0.6 and flipped["traced_share"] == 0.6
    assert flipped["expected_ceiling"] != pytest.approx(entry["expected_ceiling"])
    assert "feedback inverted" in format_ceiling(flipped)
    # nothing traced: the users of the traffic just before the round
    assert round_ceiling(path, {}, 5.0, fallback_users="warm")["users"] == "warm"


class NoJudge:
    name = "no-judge"


def test_the_demo_entry_says_why_when_there_is_no_ceiling(tmp_path):
    missing = round_ceiling(tmp_path / "nope.jsonl", {}, 5.0, fallback_users="concise")
    assert missing == {"available": False, "reason": "the trainer wrote no held-out pairs (nope.jsonl missing)"}
    assert format_ceiling(missing) == "no ceiling: the trainer wrote no held-out pairs (nope.jsonl missing)"
    path = tmp_path / "p.jsonl"
    write_dump(path)
    no_judge = round_ceiling(path, {}, 5.0, fallback_users=f"{__name__}:NoJudge")  # a custom model without judge
    assert not no_judge["available"] and "judge(question, answer)" in no_judge["reason"]
    assert format_ceiling(no_judge).startswith("no ceiling: ValueError: user model")
