"""The demo names a variant for what it is: RLHB with a frozen discriminator is the paper's
negative ablation (section 6.4), not RLHB."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhb.demo import format_table
from rlhb.demo.config import (
    FULL_ALGORITHM_CONFIG,
    PPO_BUDGET,
    DemoConfig,
    algorithm_label,
    lane_algorithm,
    parse_sets,
    quick_config,
)
from rlhb.demo.report import behavior_gap, format_gaps
from rlhb.evaluation.quality import guards_against_base


def test_frozen_discriminator_and_constant_sentence_are_named():
    label = algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb"])
    if FULL_ALGORITHM_CONFIG["rlhb"].get("d_frozen"):
        assert "frozen discriminator, paper section 6.4" in label
    assert algorithm_label("rlhb", {}) == "RLHB"
    assert algorithm_label("rlhb", {"d_frozen": True, "preferred_prompt_share": 1.0}) == (
        "RLHB (frozen discriminator, paper section 6.4; every PPO prompt on the served sentence)"
    )
    assert algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb-real"]) == (
        "RLHB (frozen discriminator, paper section 6.4; truncated real answers as 25% of D's fakes; "
        "reward: contrast + 1 log D; every PPO prompt on the served sentence)"
    )
    assert DemoConfig(algorithms=("rlhb-real",)).lane_overrides("rlhb-real")["reward_realness_weight"] == 1.0
    assert algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb-midcut"]) == (
        "RLHB (frozen discriminator, paper section 6.4; stopped mid-sentence real answers as 25% of D's fakes; "
        "reward: contrast + 1 log D; a rollout cut at the token budget loses 1 (TRL's missing_eos_penalty); "
        "scores centered on the round's first batch, as Ziegler et al. 2019; every PPO prompt on the served sentence)"
    )
    assert algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb-steer"]) == (
        "RLHB (frozen discriminator, paper section 6.4; every PPO prompt on the served sentence; "
        "120 steering steps before PPO; KL to the round's start, not the base)"
    )
    # E21's run: rlhb-steer with the rlhb-midcut departures set by hand; the lane is that configuration, its
    # finish priors decided by each round's records (E34)
    assert algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb-midsteer"]) == (
        "RLHB (frozen discriminator, paper section 6.4; stopped mid-sentence real answers as 25% of D's fakes; "
        "reward: contrast + 1 log D; a rollout cut at the token budget loses 1 (TRL's missing_eos_penalty); "
        "those finish priors only where the round's records show unfinished answers did worse; "
        "scores centered on the round's first batch, as Ziegler et al. 2019; every PPO prompt on the served sentence; "
        "120 steering steps before PPO; KL to the round's start, not the base)"
    )
    assert DemoConfig(algorithms=("rlhb-midsteer",)).gate_overrides("rlhb-midsteer", {})["kl_bound"] == 0.7
    # rlhb-advsteer: the same lane with D trained during PPO; no "frozen" note, the steered gate bound kept, and
    # log D in the reward (without it the adversarial judgement would not reach the policy: the lane's point)
    advsteer = FULL_ALGORITHM_CONFIG["rlhb-advsteer"]
    assert algorithm_label("rlhb", advsteer).startswith("RLHB (stopped mid-sentence real answers")
    assert advsteer["reward_realness_weight"] > 0 and advsteer["d_frozen"] is False
    assert DemoConfig(algorithms=("rlhb-advsteer",)).gate_overrides("rlhb-advsteer", {})["kl_bound"] == 0.7
    # rlhb-klloss: the same lane with the KL in the actor's loss; the label says where the KL went
    klloss = FULL_ALGORITHM_CONFIG["rlhb-klloss"]
    assert {k: v for k, v in klloss.items() if FULL_ALGORITHM_CONFIG["rlhb-midsteer"].get(k) != v} == {
        "kl_estimator": "k2", "kl_placement": "loss", "kl_coef": 0.3
    }  # fmt: skip
    assert "KL (k2) in the actor's loss, not the reward (GRPO)" in algorithm_label("rlhb", klloss)
    assert DemoConfig(algorithms=("rlhb-klloss",)).gate_overrides("rlhb-klloss", {})["kl_bound"] == 0.7
    # rlhb-guarded: rlhb-klloss with the near-empty and repetition guards in the reward and rollouts at the
    # serving temperature (E47); the label names all three, and the rollout temperature is the demo's serving one
    guarded = FULL_ALGORITHM_CONFIG["rlhb-guarded"]
    assert {k: v for k, v in guarded.items() if klloss.get(k) != v} == {
        "short_answer_penalty": 2.0, "repeated_ngram_penalty": 4.0, "temperature": 0.7
    }  # fmt: skip
    assert guarded["temperature"] == DemoConfig().temperature
    label = DemoConfig(algorithms=("rlhb-guarded",)).label("rlhb-guarded")
    for note in ("a rollout under 4 words loses 2", "4 x its share of repeated 3-grams", "temperature 0.7"):
        assert note in label
    # rlhb-penalized: the same two penalties with rollouts at temperature 1, as PPO's (E53)
    penalized = FULL_ALGORITHM_CONFIG["rlhb-penalized"]
    assert {k: v for k, v in penalized.items() if klloss.get(k) != v} == {
        "short_answer_penalty": 2.0, "repeated_ngram_penalty": 4.0
    }  # fmt: skip
    penalized_label = DemoConfig(algorithms=("rlhb-penalized",)).label("rlhb-penalized")
    assert "a rollout under 4 words loses 2" in penalized_label and "temperature" not in penalized_label
    assert algorithm_label("rlhb", {"short_answer_penalty": "1"}) == "RLHB (a rollout under 4 words loses 1)"
    assert algorithm_label("rlhb", {"repeated_ngram_penalty": "4"}) == (
        "RLHB (a rollout loses 4 x its share of repeated 3-grams)"
    )


def test_labels_read_set_values_as_the_trainer_does():
    # --set values arrive as text: "false" must not read as a frozen discriminator
    assert algorithm_label("rlhb", {"d_frozen": "false", "preferred_prompt_share": "0.5"}) == "RLHB"
    assert algorithm_label("rlhb", {"d_frozen": "true", "d_freeze_encoder": "true", "d_warmup_steps": "600"}) == (
        "RLHB (frozen discriminator, paper section 6.4; discriminator's encoder frozen, head trained alone)"
    )
    assert algorithm_label("rlhb", {"d_answer_encoder": "policy", "d_freeze_encoder": "true"}) == (
        "RLHB (discriminator reads answers with the base LM, frozen; head trained alone)"
    )
    assert algorithm_label("rlhb", {"d_answer_encoder": "minilm"}) == "RLHB"
    assert algorithm_label(
        "rlhb", {"d_frozen": "true", "d_truncated_share": "0.25", "reward_realness_weight": "0.5"}
    ) == (
        "RLHB (frozen discriminator, paper section 6.4; truncated real answers as 25% of D's fakes; "
        "reward: contrast + 0.5 log D)"
    )
    assert algorithm_label("rlhb", {"temperature": "0.7"}) == "RLHB (rollouts sampled at temperature 0.7)"
    assert algorithm_label("rlhb", {"center_scores": "true"}) == (
        "RLHB (scores centered on the round's first batch, as Ziegler et al. 2019)"
    )
    assert algorithm_label("rlhb", {"center_scores": True}) == algorithm_label("rlhb", {"center_scores": "True"})
    assert algorithm_label("rlhb", {"center_scores": "false"}) == "RLHB"
    assert "stopped mid-sentence real answers as 25% of D's fakes" in algorithm_label(
        "rlhb", {"d_truncated_share": "0.25", "d_truncated_cut": "mid_sentence"}
    )
    assert algorithm_label("rlhb", {"d_answer_swap_share": "0.5"}) == (
        "RLHB (50% of D's swapped fakes swap the answer, not the sentence)"
    )
    assert algorithm_label("rlhb", {"kl_placement": "loss", "kl_estimator": "k2"}) == (
        "RLHB (KL (k2) in the actor's loss, not the reward (GRPO))"
    )
    assert algorithm_label("sft", {"d_frozen": "true"}) == "SFT"  # a field sft does not have is not its departure
    assert algorithm_label("base", {}) == "base"  # the report's base row


def test_a_lane_that_raises_a_gate_bound_says_so_and_the_run_or_the_environment_can_override_it():
    cfg = DemoConfig(algorithms=("rlhb-steer", "rlhb-frozen", "rlhb"))
    # every full-demo gate answers as served, 32 questions twice each, and blocks 3 more near-empty answers in 64
    served = {
        "max_new_tokens": cfg.max_tokens, "guard_temperature": 0.7, "max_prompts": 32, "answers_per_prompt": 2,
        "max_near_empty_increase": 0.04,
    }  # fmt: skip
    assert cfg.gate_overrides("rlhb-steer", {}) == {**served, "kl_bound": 0.7}
    assert cfg.gate_overrides("rlhb-frozen", {}) == served
    assert cfg.label("rlhb-steer").endswith("KL to the round's start, not the base; gate KL bound 0.7)")
    assert "gate" not in cfg.label("rlhb-frozen")
    # The default lane steers (rlhb-penalized's configuration), so it raises the bound too; without its steering
    # stage it does not.
    assert cfg.gate_overrides("rlhb", {}) == {**served, "kl_bound": 0.7} and cfg.label("rlhb").endswith("bound 0.7)")
    cfg.algorithm_config["rlhb"] = {**cfg.lane_overrides("rlhb"), "steer_steps": "0"}  # --set rlhb.steer_steps=0
    assert cfg.gate_overrides("rlhb", {}) == served and "gate" not in cfg.label("rlhb")
    assert cfg.gate_overrides("rlhb-steer", {"RLHB_TRAINER_GATE__KL_BOUND": "0.4"}) == served  # trainer reads 0.4
    own = DemoConfig(algorithms=("rlhb-steer",), gate_config={"kl_bound": 0.9, "seed": 3, "max_prompts": 8})
    assert own.gate_overrides("rlhb-steer", {}) == {**served, "kl_bound": 0.9, "seed": 3, "max_prompts": 8}
    quick = quick_config(Path("unused"))  # --quick's plain rlhb lane does not steer; its steered lane does
    assert quick.gate_overrides("rlhb", {}) == {  # the library's 16 prompts
        "max_new_tokens": 8, "guard_temperature": quick.temperature, **quick.gate_config
    }  # fmt: skip
    assert quick.gate_overrides("rlhb-steer", {})["kl_bound"] == 0.7
    assert own.label("rlhb-steer").endswith("gate KL bound 0.9)")


def test_report_table_lists_the_variant():
    row = {"label": "RLHB", "variant": "RLHB (frozen discriminator, paper section 6.4)", "version": "v", "status": "x"}
    assert "variant: RLHB (frozen discriminator, paper section 6.4)" in format_table({"versions": [row]})
    assert "variant:" not in format_table({"versions": [{**row, "variant": "RLHB"}]})


def test_report_table_says_whether_each_lift_kept_its_guards():
    quality = {"relevance": 0.5, "repeated_ngram_rate": 0.02, "near_empty_share": 0.0}
    base = {"label": "base", "version": "base", "status": "base", "n": 4, "like_rate": 0.25, "ci_low": 0.0,
            "ci_high": 0.7, "quality": quality}  # fmt: skip
    vs_base = {"lift": 0.5, "p_z_one_sided": 0.1, "p_fisher_one_sided": 0.1}
    row = {**base, "label": "RLHB", "version": "v1", "status": "published", "vs_base": vs_base,
           "quality": {"relevance": 0.4, "repeated_ngram_rate": 0.01, "near_empty_share": 0.25}}  # fmt: skip
    row["guards_vs_base"] = guards_against_base(row["quality"], base["quality"])
    table = format_table({"versions": [base, row]})
    assert "FAILED: relevance -20.0%; near-empty 0.0% -> 25.0%" in table.splitlines()[3]
    assert "0.250" in table.splitlines()[3] and "guards vs base" in table.splitlines()[0]
    row["guards_vs_base"] = guards_against_base(base["quality"], base["quality"])
    assert format_table({"versions": [base, row]}).splitlines()[3].endswith("clean")


def test_variant_lanes_train_their_algorithm_with_their_own_overrides():
    cfg = DemoConfig(algorithms=("rlhb-adversarial", "rlhb-frozen"))
    assert lane_algorithm("rlhb-frozen") == "rlhb" and lane_algorithm("rlhb-adversarial") == "rlhb"
    assert cfg.lane_overrides("rlhb-frozen")["d_frozen"] is True
    assert not cfg.lane_overrides("rlhb-adversarial").get("d_frozen")
    assert "frozen discriminator" in cfg.label("rlhb-frozen") and "frozen" not in cfg.label("rlhb-adversarial")
    # A variant without an entry of its own starts from its algorithm's overrides.
    assert DemoConfig(algorithms=("rlhb-x",)).lane_overrides("rlhb-x") == cfg.lane_overrides("rlhb")
    # The demo's default rlhb lane trains rlhb-penalized's configuration (E54): rlhb-midsteer (the default from E23)
    # with the KL in the actor's loss (E43) and the near-empty and repetition penalties, rollouts at temperature 1;
    # rlhb-frozen keeps the lane from before E23.
    assert cfg.lane_overrides("rlhb") == cfg.lane_overrides("rlhb-penalized")
    assert cfg.lane_overrides("rlhb")["kl_placement"] == "loss" and "in the actor's loss" in cfg.label("rlhb")
    assert cfg.lane_overrides("rlhb")["short_answer_penalty"] == 2 and "temperature" not in cfg.lane_overrides("rlhb")
    assert cfg.lane_overrides("rlhb")["steer_steps"] == 120 and cfg.lane_overrides("rlhb")["missing_eos_penalty"] == 1
    assert cfg.lane_overrides("rlhb-frozen") == {**PPO_BUDGET, "d_warmup_steps": 150, "d_frozen": True,
                                                 "preferred_prompt_share": 1.0}  # fmt: skip
    with pytest.raises(ValueError, match="unknown algorithms"):
        DemoConfig(algorithms=("nope-x",))
    with pytest.raises(ValueError, match="each lane once"):
        DemoConfig(algorithms=("rlhb", "rlhb"))


def test_set_overrides_are_checked_against_the_lanes_config():
    lanes = ("rlhb", "rlhb-k5")
    assert parse_sets(["rlhb-k5.kappa=0.5", "ppo_epochs=3"], lanes) == {
        "rlhb-k5": {"kappa": "0.5", "ppo_epochs": "3"},
        "rlhb": {"ppo_epochs": "3"},
    }
    with pytest.raises(ValueError, match="no field 'kapa'"):
        parse_sets(["kapa=0.5"], lanes)
    with pytest.raises(ValueError, match="cannot read 'abc'"):
        parse_sets(["rlhb.kappa=abc"], lanes)
    with pytest.raises(ValueError, match="no lane 'rlhbc'"):
        parse_sets(["rlhbc.kappa=0.5"], lanes)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_sets(["kappa"], lanes)
    # fields that depend on each other are checked together, in either order
    loss_kl = ["rlhb.kl_placement=loss", "rlhb.kl_estimator=k2"]
    for items in (loss_kl, loss_kl[::-1]):
        assert parse_sets(items, lanes) == {"rlhb": {"kl_placement": "loss", "kl_estimator": "k2"}}
    with pytest.raises(ValueError, match="needs kl_estimator in"):
        parse_sets(loss_kl[:1], lanes)


def test_behavior_gap_compares_the_two_sentences():
    from types import SimpleNamespace

    def served(likes: int, n: int) -> list:
        return [SimpleNamespace(index=i, asker_liked=i < likes, p_like=0.5 if i < likes else 0.1) for i in range(n)]

    gap = behavior_gap(served(60, 100), served(30, 100))
    assert gap["gap"] == pytest.approx(0.3) and gap["p_one_sided"] < 1e-4
    assert gap["most_preferred"]["like_rate"] == 0.6 and gap["least_preferred"]["n"] == 100
    assert gap["mean_p_like_most"] > gap["mean_p_like_least"]
    paired = gap["paired_p_like"]  # answers 30-59 are better under the preferred sentence, none worse
    assert paired["n_pairs"] == 100 and paired["mean_diff"] == pytest.approx(0.3 * 0.4) and paired["p_one_sided"] < 1e-6
    same = behavior_gap(served(30, 100), served(30, 100))
    assert same["p_one_sided"] == pytest.approx(0.5) and same["paired_p_like"]["p_one_sided"] is None
    # Pairs are matched by answer index, not by position: the least preferred list in another order agrees.
    shuffled = behavior_gap(served(60, 100), served(30, 100)[::-1])["paired_p_like"]
    assert shuffled == paired
    # Noisy pairs in both directions with no gap on average: no evidence.
    mixed = [SimpleNamespace(index=i, asker_liked=False, p_like=0.3 + 0.1 * (-1) ** i) for i in range(40)]
    flat = [SimpleNamespace(index=i, asker_liked=False, p_like=0.3) for i in range(40)]
    assert behavior_gap(mixed, flat)["paired_p_like"]["p_one_sided"] == pytest.approx(0.5)
    assert "paired by answer: +0.120" in format_gaps({"lanes": {"rlhb": {"behavior_gap": {"version": "v", **gap}}}})[0]


def test_a_lanes_trainer_gets_the_demos_answer_cap_and_its_gate_overrides(tmp_path, kafka_bootstrap, redis_url):
    """What ``make_lane`` hands the lane's processes: --max-tokens reaches serving and the trainer's rollouts
    (thorough users need 96-128 tokens), and rlhb-steer's trainer gets its raised KL bound."""
    import types
    import uuid

    from rlhb.demo.lanes import make_lane

    infra = types.SimpleNamespace(bootstrap=kafka_bootstrap, redis_url=redis_url)
    cfg = DemoConfig(out_dir=tmp_path, algorithms=("rlhb-steer", "rlhb-frozen"), max_tokens=128)
    cfg.algorithm_config["rlhb-frozen"] = {**cfg.lane_overrides("rlhb-frozen"), "max_new_tokens": 64}  # --set
    run_id = uuid.uuid4().hex[:8]
    steer, plain = (make_lane(cfg, run_id, lane, infra, "model") for lane in cfg.algorithms)
    assert steer.env["RLHB_API_MAX_NEW_TOKENS"] == "128" and steer.env["RLHB_TRAINER_ALGO__MAX_NEW_TOKENS"] == "128"
    assert plain.env["RLHB_TRAINER_ALGO__MAX_NEW_TOKENS"] == "64"  # a lane's own setting wins
    assert steer.env["RLHB_TRAINER_GATE__KL_BOUND"] == "0.7" and "RLHB_TRAINER_GATE__KL_BOUND" not in plain.env
    assert steer.env["RLHB_TRAINER_GATE__MAX_NEW_TOKENS"] == plain.env["RLHB_TRAINER_GATE__MAX_NEW_TOKENS"] == "128"


def test_a_lane_whose_records_decide_its_finish_priors_says_so_and_its_report_shows_the_decision():
    from rlhb.demo.judging import VersionResult
    from rlhb.demo.report import format_finish_priors, summarize

    assert "finish priors only where the round's records" in algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb"])
    assert "finish priors" not in algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb-midcut"])  # always on there
    assert "finish priors" not in algorithm_label("rlhb", {"finish_priors": "if_feedback_agrees"})  # none to decide
    decided = {
        "finish_priors_on": 0.0, "finish_records_finished": 200.0, "finish_records_unfinished": 310.0,
        "finish_reward_gap": -0.41, "finish_t": -7.5, "finish_p": 1.0,
    }  # fmt: skip
    vr = VersionResult("rlhb", "rlhb-v1", 1, "rejected", train_metrics=[{"iteration": 0, **decided}, {"iteration": 1}])
    row = summarize(vr, None)
    assert row["finish_priors"] == decided
    (line,) = format_finish_priors({"versions": [row, summarize(VersionResult("rlhb", "v0", 1, "published"), None)]})
    assert line.startswith("RLHB rlhb-v1 (round 1): OFF: reward -0.410 higher for 200 finished")
    assert "310 stopped mid-sentence (Welch t -7.50" in line
