"""Behavior records from answers and simulated users, built exactly as the aggregator would
(in process, no broker): each answer is shown to 1 + Poisson(m - 1) users who react by the
user model, the counts are encoded with the default rates encoding at edges fitted on these
records, and the sentence and shaped reward follow. Used by in-process experiments
(``bench/demo_experiment.py``, ``rlhb ablate``)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def records_from_answers(answers: Sequence[dict], users: str, viewers_mean: float, seed: int):
    """``answers``: dicts with question, answer, behavior (and version). Returns (records,
    true like probability per answer, the fitted encoding)."""
    from core.behavior.encoding import RatesEncoding, fit_rate_edges, shaped_reward
    from rlhb.simulate.driver import poisson
    from rlhb.simulate.users import load_user_model, sample_reactions
    from schemas.behavior import BehaviorRecord

    user = load_user_model(users)
    rows = []
    for i, r in enumerate(answers):
        rng = random.Random(f"{seed}:{i}")
        j = user.judge(r["question"], r["answer"])
        views = 1 + poisson(viewers_mean - 1, rng)
        reactions = sample_reactions(j, views, rng)
        counts = {
            "view": float(views),
            "click": float(sum(x.click for x in reactions)),
            "like": float(sum(x.like for x in reactions)),
            "dislike": float(sum(x.dislike for x in reactions)),
        }
        rows.append((r, counts, j.p_like))
    enc = RatesEncoding().with_edges(fit_rate_edges([c for _, c, _ in rows]))
    records = []
    for i, (r, counts, _) in enumerate(rows):
        buckets = enc.encode(counts)
        records.append(
            BehaviorRecord(
                impression_id=f"exp-{i}",
                query=r["question"],
                response=r["answer"],
                behavior_prompt=r["behavior"],
                adapter_version=r.get("version", "base"),
                counts=counts,
                buckets=buckets,
                behavior_text=enc.render(buckets),
                reward=shaped_reward(counts),
                encoding="rates",
            )
        )
    return records, [p for _, _, p in rows], enc
