"""`rlhb ablate` end to end on the tiny model: every variant trains from the same records, is
judged on the same held-out draws, and lands in the table, the claims and the curves."""

from __future__ import annotations

import json

import pytest

from rlhb.ablate import VARIANTS, quick_config, run_ablation


def test_ablation_runner_writes_table_claims_and_curves(tiny_model_dir, tmp_path):
    cfg = quick_config(tmp_path / "out", str(tiny_model_dir), variants=("default", "kappa=0.5", "frozen D"))
    report = run_ablation(cfg)
    names = [r["variant"] for r in report["rows"]]
    assert names == ["base", "default", "kappa=0.5", "frozen D"]
    n = report["rows"][0]["n"]
    for row in report["rows"][1:]:
        assert row["n"] == n and 0.0 <= row["like_rate"] <= 1.0 and "lift" in row["vs_base"]
        assert {"mean_words", "near_empty_share", "repeated_ngram_rate"} <= set(row["guards"])
        assert len(row["curves"]["d_reward"]) == cfg.steps and len(row["curves"]["kl"]) == cfg.steps
    assert (tmp_path / "out" / "adapters" / "kappa05").is_dir()  # each variant its own trained adapter
    claims = {c["claim"].split(":")[0] for c in report["claims"]}
    assert {"kappa = 0.5 collapses D", "so a frozen D cannot work like a reward model"} <= claims
    assert any(c["claim"].startswith("a frozen D scores generations at a stable level") for c in report["claims"])
    frozen = report["rows"][3]["curves"]["d_prob_generated"]
    assert len(frozen) == cfg.steps and all(0.0 <= p <= 1.0 for p in frozen)  # figure 6(b)'s curve
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| frozen D |" in table and "the paper's claim" in table
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][2]["changes"] == {"kappa": 0.5}
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000


def test_unknown_variant_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="unknown variants"):
        run_ablation(quick_config(tmp_path, str(tiny_model_dir), variants=("kappa=9",)))
    assert "frozen D" in VARIANTS


def test_a_rerun_with_the_same_settings_resumes_and_one_with_other_settings_does_not(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    first = run_ablation(quick_config(out, str(tiny_model_dir), variants=("kappa=0",)))
    table = (out / "table.md").read_text()
    assert "KL per answer" in table and " -> " in table.split("| kappa=0 |")[1].splitlines()[0]  # D first -> last
    trained = out / "adapters" / "kappa0"
    assert trained.is_dir()
    trained.rename(out / "kappa0-first")  # a variant trained again would write this folder again

    second = run_ablation(quick_config(out, str(tiny_model_dir), variants=("kappa=0", "rollouts=1")))
    assert [r["variant"] for r in second["rows"]] == ["base", "kappa=0", "rollouts=1"]
    assert second["rows"][1] == json.loads(json.dumps(first["rows"][1]))  # resumed from results.json, not retrained
    assert not trained.exists() and (out / "adapters" / "rollouts1").is_dir()

    other = run_ablation(quick_config(out, str(tiny_model_dir), variants=("kappa=0",), steps=1, max_new_tokens=3))
    assert len(other["rows"][1]["curves"]["kl"]) == 1 and trained.is_dir()  # other settings: trained afresh
    logged = [json.loads(line) for line in (out / "kappa0.metrics.jsonl").read_text().splitlines()]
    assert 0 < logged[-1]["response_length"] <= 3  # the answer cap reaches the rollouts, not only the judged answers


def _row(name: str, likes: int, d_prob: list[float], returns: list[float]) -> dict:
    return {"variant": name, "likes": likes, "n": 200, "like_rate": likes / 200,
            "curves": {"d_prob_generated": d_prob, "mean_return": returns}}  # fmt: skip


def test_claims_read_figure_6s_statements_off_the_curves():
    from rlhb.ablate import check_claims

    wiggle = [0.1, 0.3, 0.2, 0.4, 0.3, 0.5]
    rows = [
        _row("default", 80, [0.5, 0.7, 0.4, 0.6, 0.5, 0.65], [0.1, 0.2, 0.25, 0.3, 0.35, 0.4]),
        _row("kappa=0.5", 60, [0.6, 0.8, 0.9, 0.95, 0.97, 0.99], wiggle),  # D says "real" to everything
        _row("frozen D", 50, [0.6, 0.61, 0.6, 0.59, 0.6, 0.6], wiggle),
        _row("rollouts=1", 70, [0.5] * 6, [0.0, 0.6, -0.2, 0.5, 0.1, 0.7]),
        _row("batch=8", 78, [0.5] * 6, [0.1, 0.3, 0.15, 0.35, 0.3, 0.5]),
    ]
    held = {c["claim"].split(":")[0]: c["held"] for c in check_claims(rows)}
    assert held == {
        "kappa = 0.5 collapses D": True,
        "a frozen D scores generations at a stable level (the paper": True,
        "so a frozen D cannot work like a reward model": True,
        "more rollouts per prompt train more stably": True,
        "batch 8 instead of 16": True,
    }
    rows[1]["curves"]["d_prob_generated"] = [0.5] * 6  # no collapse
    rows[2]["likes"] = 110  # the frozen D wins, significantly
    held = {c["claim"].split(":")[0]: c["held"] for c in check_claims(rows)}
    assert held["kappa = 0.5 collapses D"] is False and held["so a frozen D cannot work like a reward model"] is False
