"""Held-out like rates: ``evaluate`` asks a served version through the lane's API, and
``judge_offline`` generates a rejected (never served) candidate's answers in this process; both
are judged by one silent simulated user per answer. ``rejudge`` judges answers already served by
another population (under drift: base's answers by the new taste). ``VersionResult`` holds one
version's outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.progress import progress_bar
from rlhb.demo.config import EVAL_SEED_OFFSET, DemoConfig
from rlhb.demo.lanes import Lane


@dataclass
class VersionResult:
    algorithm: str
    version: str
    round: int
    status: str
    reason: str = ""
    served: list = field(default_factory=list)
    train_metrics: list = field(default_factory=list)
    evaluated_at: float = 0.0
    train_seconds: float = 0.0
    round_info: dict = field(default_factory=dict)
    """The trainer's round summary (records used, gate metrics, timings)."""
    d_ceiling: dict = field(default_factory=dict)
    """RLHB rounds: D's held-out AUROC against the ceiling on the same pairs (``rlhb.demo.ceiling``)."""


def evaluate(cfg: DemoConfig, lane: Lane, version: str, questions, say, behavior: str | None = None) -> list:
    """Held-out answers of ``version`` judged by one silent user each (no feedback sent), under
    ``behavior`` (None: the served, most preferred sentence)."""
    from rlhb.simulate.driver import SimulationConfig, run_simulation

    sim = SimulationConfig(
        api_url=lane.url,
        users=cfg.users,
        viewers_mean=1.0,
        send_feedback=False,
        model=version,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        concurrency=cfg.concurrency,
        behavior=behavior,
        seed=cfg.seed + EVAL_SEED_OFFSET,  # the same draws for every version: paired luck, fair comparison
    )
    qs = [q for _ in range(cfg.eval_samples) for q in questions]
    t0 = time.time()
    bar = progress_bar(total=len(qs), enabled=cfg.progress, desc=f"evaluate {version}", unit="answer")
    try:
        served = run_simulation(sim, qs, on_served=lambda _: bar.update())
    finally:
        bar.close()
    rate = sum(s.asker_liked for s in served) / max(1, len(served))
    under = f" under {behavior!r}" if behavior else ""
    say(f"  evaluated {version}{under}: {len(served)} held-out answers, like rate {rate:.3f} ({time.time() - t0:.0f}s)")
    return sorted(served, key=lambda s: s.index)


def asker_judgement(user, question: str, answer: str, seed: int, index: int) -> dict:
    """The ``Served`` fields of one silent asker's verdict on answer ``index``: the user model's
    judgement and the draw ``evaluate`` gives that index (``random.Random(f"{seed}:{index}")``,
    one viewer, as ``rlhb.simulate.driver.simulate_one`` draws it), so every judging path agrees."""
    import random

    from rlhb.simulate.users import sample_reactions

    judgement = user.judge(question, answer)
    asker = sample_reactions(judgement, 1, random.Random(f"{seed}:{index}"))[0]
    return {
        "p_like": judgement.p_like,
        "degenerate": judgement.degenerate,
        "asker_liked": asker.like,
        "asker_disliked": asker.dislike,
        "clicks": int(asker.click),
        "likes": int(asker.like),
        "dislikes": int(asker.dislike),
    }


def rejudge(served: list, users: str, seed: int) -> list:
    """The same answers judged by another population, ``users``: each answer ``i`` gets the asker's
    draw ``evaluate`` would give it (``random.Random(f"{seed}:{i}")``, one viewer), so the result is
    what ``evaluate`` would have measured had those users asked, with the same luck per answer.

    Under drift the base is evaluated before the users change taste; judged again by the new taste
    (no generation: the same answers), it is the fair base for the versions judged after the change."""
    import dataclasses

    from rlhb.simulate.users import load_user_model

    user = load_user_model(users)
    return [dataclasses.replace(s, **asker_judgement(user, s.question, s.answer, seed, s.index)) for s in served]


def judge_offline(
    cfg: DemoConfig, lane: Lane, version: str, questions, model_path: str, say, behavior: str | None = None
) -> list:
    """Held-out answers of a *rejected* candidate, generated here and judged like ``evaluate``'s
    (under ``behavior``; None: the served, most preferred sentence).

    The API answers 409 for a rejected version (it is never served), yet a table without its
    like rate hides what the gate stopped. So the demo loads the candidate's adapter folder in
    this process and answers the same questions with the API's prompt renderer, behavior
    sentence (the default encoding's most preferred one), token cap and temperature; each answer
    gets the asker's draw ``evaluate`` would give it (seed + EVAL_SEED_OFFSET, index i), so the comparison
    with the served versions stays paired. Batched ``generate`` instead of the API's scheduler:
    same distribution, not the same samples.
    """

    import torch

    from core.behavior.encoding import most_preferred_sentence
    from rlhb.evaluation.offline_answers import generate_answers, load_generator
    from rlhb.simulate.driver import Served
    from rlhb.simulate.users import load_user_model

    t0 = time.time()
    tok, model = load_generator(model_path, str(lane.root / "adapters" / version), cfg.threads)
    behavior = behavior or most_preferred_sentence()
    user = load_user_model(cfg.users)
    qs = [q for _ in range(cfg.eval_samples) for q in questions]
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    torch.manual_seed(eval_seed)
    served: list[Served] = []
    for start in range(0, len(qs), 16):
        batch = qs[start : start + 16]
        answers = generate_answers(tok, model, batch, behavior, cfg.max_tokens, cfg.temperature)
        for offset, (question, answer) in enumerate(zip(batch, answers, strict=True)):
            index = start + offset
            served.append(
                Served(
                    index=index,
                    question=question,
                    answer=answer.strip(),
                    impression_id="",  # never served: no impression
                    adapter_version=version,
                    views=1,
                    events_sent=0,
                    latency_s=0.0,
                    **asker_judgement(user, question, answer, eval_seed, index),
                )
            )
    del model
    rate = sum(s.asker_liked for s in served) / max(1, len(served))
    under = "" if behavior == most_preferred_sentence() else f" under {behavior!r}"
    say(
        f"  judged rejected {version}{under} offline (never served): {len(served)} held-out answers, "
        f"like rate {rate:.3f} ({time.time() - t0:.0f}s)"
    )
    return served
