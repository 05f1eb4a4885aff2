"""The demo report's guard intervals: each quality guard against base with a paired 95% interval."""

from __future__ import annotations

from rlhb.demo.judging import VersionResult
from rlhb.demo.report import format_guard_intervals, guard_intervals
from rlhb.simulate.driver import Served


def _served(index: int, question: str, answer: str) -> Served:
    return Served(index=index, question=question, answer=answer, impression_id=f"i{index}", adapter_version="v",
                  p_like=0.5, degenerate="", asker_liked=False, asker_disliked=False, views=1, clicks=0, likes=0,
                  dislikes=0, events_sent=0, latency_s=0.0)  # fmt: skip


def test_report_gives_each_guard_its_paired_interval():
    questions = [f"Why do cats purr, reason {i}?" for i in range(20)]
    base = VersionResult(
        "base",
        "base",
        0,
        "base",
        served=[_served(i, q, f"Cats purr when calm, reason {i}.") for i, q in enumerate(questions)],
    )
    looping = "cats purr cats purr cats purr cats purr cats purr."
    cand = VersionResult(
        "rlhb",
        "v1",
        1,
        "published",
        served=[_served(i, q, looping if i % 2 else "Ok.") for i, q in enumerate(questions)],
    )
    ci = guard_intervals(cand, base)
    assert ci["pairs"] == 20 and ci["near_empty"] == {"base": 0, "candidate": 10}
    assert ci["repetition_change"] is None  # base never repeats: no relative change to bound
    assert ci["relevance_change"][1] < 0
    unpaired = VersionResult("rlhb", "v2", 1, "published", served=[_served(99, "another question?", "Yes.")])
    assert guard_intervals(unpaired, base)["pairs"] == 0
    row = {"label": "RLHB", "version": "v1", "round": 1,
           "guards_vs_base": {"relevance_change": -0.2, "repetition_change": 0.5, "failed": ["relevance -20.0%"],
                              "clean": False, "intervals": {**ci, "repetition_change": [-0.1, 1.2]}}}  # fmt: skip
    (line,) = format_guard_intervals({"versions": [row]})
    assert "repetition +50.0% [-10.0%, +120.0%]" in line and "near-empty 0 -> 10 of 20" in line
    assert line.endswith("FAILED: relevance -20.0%")
