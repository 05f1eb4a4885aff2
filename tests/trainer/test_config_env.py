"""Trainer configuration from environment variables: one variable per field, no JSON, typos named."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from core.settings import GateSettings, TrainerSettings, nested_env
from trainer.algorithms import ALGORITHMS, default_config
from trainer.config import ConfigError
from trainer.loop import build_algorithm_config, build_gate_config, gate_with

# The gate's defaults before it moved to core/settings.py (the dataclass in trainer/gate.py).
OLD_GATE_DEFAULTS = {
    "kl_bound": 0.5, "reward_tolerance": 0.05, "max_prompts": 16, "max_new_tokens": 32, "max_records": 64,
    "max_response_tokens": 96, "min_reward_gap": 0.1, "min_pairs": 10, "batch_size": 8, "seed": 0, "threads": 0,
}  # fmt: skip
# Added with the behavior guard (issue 14): the reasons for these values are in trainer/gate.py.
BEHAVIOR_GUARD_DEFAULTS = {
    "behavior_guard": True, "max_near_empty_increase": 0.10, "max_length_drop": 0.6,
    "max_repetition_increase": 0.10, "max_relevance_drop": 0.25, "max_refusal_increase": 0.10,
    # and the KL check's reference (E12): each round's step from its parent; the base before any version
    "kl_reference": "parent",
    # answers that stop mid-sentence (E20): every version that lost like rate here stopped mid-sentence more often
    "max_unfinished_increase": 0.20,
}  # fmt: skip
# E24: the KL check and the guard answer under the served sentence (the records' own sentences hid two hacks),
# near-empty counted as the demo's report counts it (< 4 words)
SERVED_GUARD_DEFAULTS = {
    "prompt_behavior": "served", "answers_per_prompt": 1, "near_empty_words": 4, "guard_temperature": 1.0,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.upper().startswith("RLHB_TRAINER_"):
            monkeypatch.delenv(key)


def test_defaults_are_unchanged():
    settings = TrainerSettings()
    gate = build_gate_config(settings).model_dump()
    assert settings.algo == {} and {k: gate[k] for k in OLD_GATE_DEFAULTS} == OLD_GATE_DEFAULTS
    added = {**BEHAVIOR_GUARD_DEFAULTS, **SERVED_GUARD_DEFAULTS}
    assert {k: gate[k] for k in set(gate) - set(OLD_GATE_DEFAULTS)} == added
    for algorithm in ALGORITHMS:
        assert build_algorithm_config(settings, algorithm) == default_config(algorithm)
    assert (settings.steps_per_round, settings.min_records, settings.sample_size, settings.poll_timeout_ms) == (
        20, 16, 2000, 500,
    )  # fmt: skip


def test_variables_set_nested_fields_with_their_types(monkeypatch):
    for name, value in {
        "RLHB_TRAINER_ALGO__KL_COEF": "0.02",
        "RLHB_TRAINER_ALGO__BATCH_SIZE": "8",
        "RLHB_TRAINER_ALGO__ROLLOUTS_PER_PROMPT": "2",
        "RLHB_TRAINER_ALGO__LORA_TARGET_MODULES": "q_proj,v_proj",
        "RLHB_TRAINER_ALGO__D_FROZEN": "true",
        "RLHB_TRAINER_ALGO__D_WARMUP_STEPS": "5",
        "RLHB_TRAINER_ALGO__SCORE_CLIP": "none",
        "rlhb_trainer_algo__discriminator": "lm",  # names are case-insensitive
        "RLHB_TRAINER_GATE__KL_BOUND": "0.25",
        "RLHB_TRAINER_GATE__MAX_PROMPTS": "3",
        "RLHB_TRAINER_SEED": "7",
    }.items():
        monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    config = build_algorithm_config(settings, "rlhb")
    assert (config.kl_coef, config.batch_size, config.rollouts_per_prompt) == (0.02, 8, 2)
    assert config.lora_target_modules == ("q_proj", "v_proj") and config.d_frozen is True
    assert (config.d_warmup_steps, config.score_clip, config.discriminator) == (5, None, "lm")
    assert config.lam == default_config("rlhb").lam  # untouched fields keep their defaults
    gate = build_gate_config(settings)
    assert (gate.kl_bound, gate.max_prompts, gate.seed, gate.min_pairs) == (0.25, 3, 7, 10)  # seed: RLHB_TRAINER_SEED
    monkeypatch.setenv("RLHB_TRAINER_GATE__SEED", "1")
    assert build_gate_config(TrainerSettings()).seed == 1


def test_a_dict_field_takes_one_variable_per_key(monkeypatch):
    monkeypatch.setenv("RLHB_TRAINER_ALGORITHM", "rlhbc")
    monkeypatch.setenv("RLHB_TRAINER_ALGO__HEAD_WEIGHTS__VIEW", "0.5")
    config = build_algorithm_config(TrainerSettings(), "rlhbc")
    assert config.head_weights == {**default_config("rlhbc").head_weights, "view": 0.5}


def test_another_algorithm_takes_only_its_own_fields(monkeypatch):
    monkeypatch.setenv("RLHB_TRAINER_ALGO__D_WARMUP_STEPS", "5")  # rlhb only
    monkeypatch.setenv("RLHB_TRAINER_ALGO__LEARNING_RATE", "0.002")
    config = build_algorithm_config(TrainerSettings(), "sft")
    assert config.learning_rate == 0.002 and not hasattr(config, "d_warmup_steps")


def test_unknown_fields_are_rejected_with_the_closest_names(monkeypatch):
    monkeypatch.setenv("RLHB_TRAINER_ALGO__KL_COEFF", "0.02")
    with pytest.raises(ConfigError, match=r"RLHB_TRAINER_ALGO__KL_COEFF: .* no field 'kl_coeff'; did you mean kl_coef"):
        build_algorithm_config(TrainerSettings(), "rlhb")
    monkeypatch.delenv("RLHB_TRAINER_ALGO__KL_COEFF")
    monkeypatch.setenv("RLHB_TRAINER_GATE__KL_BOUNDS", "0.3")
    with pytest.raises(
        ValidationError, match=r"RLHB_TRAINER_GATE__KL_BOUNDS: .*did you mean kl_bound.*rlhb config env"
    ):
        TrainerSettings()


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("RLHB_TRAINER_ALGO__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="RLHB_TRAINER_ALGO__BATCH_SIZE=many: cannot read 'many'"):
        build_algorithm_config(TrainerSettings(), "rlhb")
    monkeypatch.setenv("RLHB_TRAINER_ALGO__BATCH_SIZE", "6")  # not a multiple of rollouts_per_prompt
    with pytest.raises(ConfigError, match="multiple of rollouts_per_prompt"):
        build_algorithm_config(TrainerSettings(), "rlhb")
    monkeypatch.delenv("RLHB_TRAINER_ALGO__BATCH_SIZE")
    monkeypatch.setenv("RLHB_TRAINER_GATE__KL_BOUND", "0")
    with pytest.raises(ValidationError, match="kl_bound must be > 0"):
        TrainerSettings()
    monkeypatch.setenv("RLHB_TRAINER_GATE__KL_BOUND", "0.5")
    monkeypatch.setenv("RLHB_TRAINER_GATE__KL_REFERENCE", "start")  # PPO's word; the gate has parent or base
    with pytest.raises(ValidationError, match=r"kl_reference\n.*'parent' or 'base'"):
        TrainerSettings()
    monkeypatch.setenv("RLHB_TRAINER_GATE__KL_REFERENCE", "base")
    assert build_gate_config(TrainerSettings()).kl_reference == "base"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("RLHB_TRAINER_ALGORITHM_CONFIG", "RLHB_TRAINER_ALGO__"),
        ("RLHB_TRAINER_GATE_CONFIG", "RLHB_TRAINER_GATE__"),
        ("RLHB_TRAINER_GATE", "RLHB_TRAINER_GATE__"),
        ("RLHB_TRAINER_KL_BOUND", "RLHB_TRAINER_GATE__KL_BOUND"),
        ("RLHB_TRAINER_REWARD_TOLERANCE", "RLHB_TRAINER_GATE__REWARD_TOLERANCE"),
    ],
)
def test_replaced_variables_stop_with_the_new_names(monkeypatch, old, new):
    monkeypatch.setenv(old, '{"kl_bound": 0.3}' if "GATE" in old or "CONFIG" in old else "0.3")
    with pytest.raises(ValidationError, match=f"{old} is no longer read; use .*{new}"):
        TrainerSettings()


def test_nested_env_is_the_inverse_of_the_parsing(monkeypatch):
    wanted = {"batch_size": 4, "d_frozen": True, "d_warmup_steps": 3, "lora_target_modules": ("q_proj", "v_proj")}
    for name, value in {
        **nested_env("RLHB_TRAINER_ALGO", wanted),
        **nested_env("RLHB_TRAINER_GATE", {"min_pairs": 2}),
    }.items():
        monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    config = build_algorithm_config(settings, "rlhb")
    assert {k: getattr(config, k) for k in wanted} == wanted and settings.gate.min_pairs == 2


def test_per_round_gate_overrides_skip_unknown_fields():
    gate = gate_with(GateSettings(), {"kl_bound": 1e-9, "not_a_field": 1})
    assert gate.kl_bound == 1e-9 and dataclasses.is_dataclass(gate) is False
