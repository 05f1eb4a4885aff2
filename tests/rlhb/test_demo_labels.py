"""The demo names a variant for what it is: RLHB with a frozen discriminator is the paper's
negative ablation (section 6.4), not RLHB."""

from __future__ import annotations

from rlhb.demo import format_table
from rlhb.demo.config import FULL_ALGORITHM_CONFIG, algorithm_label


def test_frozen_discriminator_and_constant_sentence_are_named():
    label = algorithm_label("rlhb", FULL_ALGORITHM_CONFIG["rlhb"])
    if FULL_ALGORITHM_CONFIG["rlhb"].get("d_frozen"):
        assert "frozen discriminator, paper section 6.4" in label
    assert algorithm_label("rlhb", {}) == "RLHB"
    assert algorithm_label("rlhb", {"d_frozen": True, "preferred_prompt_share": 1.0}) == (
        "RLHB (frozen discriminator, paper section 6.4; every PPO prompt on the served sentence)"
    )


def test_report_table_lists_the_variant():
    row = {"label": "RLHB", "variant": "RLHB (frozen discriminator, paper section 6.4)", "version": "v", "status": "x"}
    assert "variant: RLHB (frozen discriminator, paper section 6.4)" in format_table({"versions": [row]})
    assert "variant:" not in format_table({"versions": [{**row, "variant": "RLHB"}]})
