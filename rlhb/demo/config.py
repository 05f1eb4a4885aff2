"""Demo settings: ``DemoConfig`` (the ``rlhb demo`` options), the ``--quick`` preset, the
per-algorithm trainer overrides both use, and the algorithms' display labels."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ALGORITHM_LABELS = {"rlhb": "RLHB", "rlhbc": "RLHBC", "rlhf": "direct-reward RL", "sft": "SFT", "pro": "PRO"}


def algorithm_label(name: str, overrides: dict) -> str:
    """The algorithm's label with the departures from the paper its overrides make, so a report
    never calls a variant by the method's plain name (e.g. RLHB with a frozen discriminator is
    the paper's own negative ablation, section 6.4). The overrides are read as the trainer reads
    them (``--set d_frozen=false`` is text: not frozen)."""
    import typing

    from trainer.algorithms import ALGORITHMS, default_config
    from trainer.config import PPOConfig, parse_value

    # the fields this algorithm has, with their types ("base", a report row, has none)
    hints = typing.get_type_hints(type(default_config(name))) if name in ALGORITHMS else {}
    o = {
        k: parse_value(v, hints[k], f"--set {k}") if isinstance(v, str) else v
        for k, v in overrides.items()
        if k in hints
    }
    notes = []
    if o.get("d_frozen"):
        notes.append("frozen discriminator, paper section 6.4")
    if o.get("d_answer_encoder", "minilm") == "policy":
        notes.append("discriminator reads answers with the base LM, frozen; head trained alone")
    elif o.get("d_freeze_encoder"):
        notes.append("discriminator's encoder frozen, head trained alone")
    if float(o.get("d_truncated_share", 0.0)) > 0:
        how = "stopped mid-sentence" if o.get("d_truncated_cut") == "mid_sentence" else "truncated"
        notes.append(f"{how} real answers as {float(o['d_truncated_share']):.0%} of D's fakes")
    if float(o.get("d_answer_swap_share", 0.0)) > 0:
        notes.append(f"{float(o['d_answer_swap_share']):.0%} of D's swapped fakes swap the answer, not the sentence")
    if float(o.get("reward_realness_weight", 0.0)) > 0:
        notes.append(f"reward: contrast + {float(o['reward_realness_weight']):g} log D")
    if float(o.get("missing_eos_penalty", 0.0)) > 0:
        notes.append(
            f"a rollout cut at the token budget loses {float(o['missing_eos_penalty']):g} (TRL's missing_eos_penalty)"
        )
    if o.get("finish_priors", "always") != "always" and any(
        float(o.get(k, 0.0)) > 0 for k in ("missing_eos_penalty", "d_truncated_share", "reward_realness_weight")
    ):
        notes.append("those finish priors only where the round's records show unfinished answers did worse")
    if float(o.get("short_answer_penalty", 0.0)) > 0:
        notes.append(
            f"a rollout under {int(o.get('short_answer_words', PPOConfig.short_answer_words))} words loses "
            f"{float(o['short_answer_penalty']):g}"
        )
    if float(o.get("repeated_ngram_penalty", 0.0)) > 0:
        notes.append(f"a rollout loses {float(o['repeated_ngram_penalty']):g} x its share of repeated 3-grams")
    if o.get("center_scores"):
        notes.append("scores centered on the round's first batch, as Ziegler et al. 2019")
    if float(o.get("temperature", 1.0)) != 1.0:
        notes.append(f"rollouts sampled at temperature {float(o['temperature']):g}")
    if float(o.get("preferred_prompt_share", 0.0)) >= 1.0:
        notes.append("every PPO prompt on the served sentence")
    if int(o.get("steer_steps", 0)) > 0:
        notes.append(f"{int(o['steer_steps'])} steering steps before PPO")
    if o.get("kl_reference", "base") != "base":
        notes.append("KL to the round's start, not the base")
    if o.get("kl_placement", "reward") == "loss":
        notes.append(f"KL ({o.get('kl_estimator', 'k1')}) in the actor's loss, not the reward (GRPO)")
    base = ALGORITHM_LABELS.get(name, name)
    return f"{base} ({'; '.join(notes)})" if notes else base


def lane_algorithm(lane: str) -> str:
    """The algorithm a lane trains: a lane is named ``ALGO`` or ``ALGO-VARIANT`` (e.g. ``rlhb-frozen``),
    a variant with its own overrides next to the plain one in the same run (same base traffic)."""
    return lane.split("-", 1)[0]


def parse_sets(items: list[str] | tuple[str, ...], lanes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``--set`` items (``FIELD=VALUE`` for every lane, ``LANE.FIELD=VALUE`` for one) as per-lane overrides,
    each checked against its algorithm's Config so a typo fails before any process starts."""
    from trainer.algorithms import default_config
    from trainer.config import ConfigError, apply_overrides

    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes FIELD=VALUE or LANE.FIELD=VALUE; got {item!r}")
        lane, dot, name = key.strip().rpartition(".")
        targets = [lane] if dot else list(lanes)
        if dot and lane not in lanes:
            raise ValueError(f"--set {item!r}: no lane {lane!r} in this run (lanes: {', '.join(lanes)})")
        for target in targets:
            config = default_config(lane_algorithm(target))
            if name not in {f.name for f in dataclasses.fields(config)}:
                known = ", ".join(sorted(f.name for f in dataclasses.fields(config)))
                raise ValueError(f"--set {item!r}: {lane_algorithm(target)} has no field {name!r}; known: {known}")
            out.setdefault(target, {})[name] = value
    # Checked together, per lane: fields that depend on each other (kl_placement="loss" needs kl_estimator k2
    # or k3) pass in any order on the command line.
    for target, fields_set in out.items():
        try:
            apply_overrides(default_config(lane_algorithm(target)), fields_set, variable=f"--set {target}")
        except ConfigError as e:
            raise ValueError(str(e)) from None
    return out


PPO_BUDGET: dict = {
    "batch_size": 16,
    "rollouts_per_prompt": 4,
    "kl_coef": 0.02,
    "learning_rate": 5e-4,
    "threads": 2,
}
"""The PPO budget every full-demo lane shares (so the comparison is like with like). The rollouts' length is
the demo's answer cap (``DemoConfig.max_tokens``, ``--max-tokens``) unless a lane sets ``max_new_tokens``."""

ADVERSARIAL_RLHB: dict = {
    **PPO_BUDGET,
    "d_warmup_steps": 150,
    "preferred_prompt_share": 1.0,
    # D's stabilisers (bench/demo_experiments.md E6: its held-out AUROC held 0.683 -> 0.668 on concise,
    # where plain adversarial updates fell to 0.519).
    "swap_share": 0.5,
    "d_label_smoothing": 0.1,
    "d_replay_size": 256,
    "d_adversarial_lr_scale": 0.2,
}
"""RLHB with D trained against the policy during PPO (eqs. 3-4): the ``rlhb-adversarial`` lane."""

FROZEN_D_RLHB: dict = {**PPO_BUDGET, "d_warmup_steps": 150, "d_frozen": True, "preferred_prompt_share": 1.0}
"""The frozen-D variant every measured lane starts from (``rlhb-frozen``; the demo's ``rlhb`` lane until E23):
D learns the behavior from real vs behavior-swapped records during warm-up, then stays frozen (paper section 6.4,
labelled so), because the adversarial D (ADVERSARIAL_RLHB) lost to it with the same budget: concise in process,
+0.23 (E3) vs +0.00 (E5, E6); thorough through the services (bench/demo-results/2026-12-04-thorough), +0.094 vs
+0.060 with near-empty answers 0.6% -> 23% (the gate blocked it). Every PPO prompt carries the served sentence
(E2/E3: on this CPU budget that share decided the lift)."""

FULL_ALGORITHM_CONFIG: dict[str, dict] = {
    "rlhb": {},  # the default lane: rlhb-penalized's configuration, set below (DEFAULT_RLHB_LANE)
    "rlhbc": dict(PPO_BUDGET),
    "rlhf": dict(PPO_BUDGET),
    # --algorithms rlhb-adversarial,rlhb-frozen compares the two discriminators on the same base traffic
    "rlhb-adversarial": ADVERSARIAL_RLHB,
    "rlhb-frozen": dict(FROZEN_D_RLHB),
}
REALNESS_LANE: dict = {
    # bench/demo_experiments.md E18 (through the services, concise): the default D's contrastive reward prefers an
    # answer cut to a few words over the whole one (86% of held-out records) and the round went to 25% near-empty
    # answers (gate: rejected). Truncated real answers among D's fakes plus log D added to the contrast (which
    # cancels realness): 0.227 -> 0.483 (p 3e-7), near-empty 0.0% -> 1.1%, relevance and repetition better, gate
    # passed at 0.257 nats/token. On example users it went the other way (answers ran to the cap, 95% cut off,
    # 0.091 -> 0.051, gate rejected): a lane, not the default.
    "d_truncated_share": 0.25,
    "reward_realness_weight": 1.0,
}
"""The ``rlhb-real`` lane's departures from ``rlhb`` (full and quick runs alike)."""
MIDCUT_LANE: dict = {
    # E19 (offline, bench/reward_truncation.py on one base traffic judged by concise and by example users): cutting
    # the fakes at any length mid-sentence instead of to a few words keeps the near-empty win low (0.09 concise,
    # 0.02 example) without teaching D "short is fake", which ran rlhb-real's answers to the cap on example users;
    # Spearman of the reward with the users' true like probability 0.36 -> 0.47 (concise), 0.36 -> 0.43 (example).
    "d_truncated_cut": "mid_sentence",
    # E19 through the services (example users): with the fakes alone every rollout ran to the 48-token cap by
    # iteration 5, as rlhb-real's did (stopped at iteration 7). A rollout cut at the budget is served cut off, which
    # every user dislikes: TRL's missing_eos_penalty says so in the reward directly.
    "missing_eos_penalty": 1.0,
    # E19-E20: at kl_coef 0.02 both rounds failed the gate's KL bound (0.904 and 0.502 nats/token); at 0.08 the
    # concise round passed (0.308) and lifted 0.216 -> 0.506. On example users, 0.08 alone published a loss (0.097 ->
    # 0.040): every rollout ran to the cap from iteration 3, pushed by a critic that starts at 0 under scores near
    # -4 (GAE's lambda discount then favours going on over stopping). Centered on the round's first batch (Ziegler
    # et al.), the same round gave 0.108 -> 0.159 with every guard better. E36-E37 (the default, centered, finish
    # priors from the feedback): at 0.02 it follows the feedback both ways (inverted 0.239 -> 0.051, real 0.278 ->
    # 0.574) but overshoots to 7-word answers on real feedback (near-empty 9.1%, gate rejected both); 0.08 stays.
    "kl_coef": 0.08,
    "center_scores": True,
}
"""The ``rlhb-midcut`` lane's departures from ``rlhb-real``."""
FULL_ALGORITHM_CONFIG["rlhb-real"] = {**FROZEN_D_RLHB, **REALNESS_LANE}
FULL_ALGORITHM_CONFIG["rlhb-midcut"] = {**FULL_ALGORITHM_CONFIG["rlhb-real"], **MIDCUT_LANE}
FULL_ALGORITHM_CONFIG["rlhb-steer"] = {
    **FROZEN_D_RLHB,
    # bench/demo_experiments.md E11-E12 (in process, concise): steering on every record under its own
    # sentence with the contrast on the preferred side, then the frozen-D PPO above with the KL taken
    # from the steered adapter: 0.440 (+0.219) with a behavior gap of +0.182 (p 2e-7); near-empty 5.7%.
    # On example users it did not lift (0.088 vs base 0.105, n.s.; gap +0.051).
    "steer_steps": 120,
    "steer_learning_rate": 5e-4,
    "steer_batch_size": 8,
    "steer_beta": 1.0,
    "steer_contrast_records": "preferred",
    "kl_reference": "start",
}
"""``--algorithms rlhb-steer``: the demo's RLHB lane with a steering stage before PPO and the KL to the steered
adapter (a lane, not the default, until a full run through the services has measured it)."""
FINISH_PRIORS_FROM_FEEDBACK: dict = {
    # E31: on inverted feedback this lane lifted the real users anyway (+0.364), because MIDCUT_LANE's and
    # REALNESS_LANE's finish priors outweighed D (without them and without centering, rlhb-steer ran its
    # rollouts to the budget on inverted and real feedback alike: E33, E35). Here the round's own records decide
    # whether the priors apply
    # (trainer.finish_evidence): on every preset's real feedback so far unfinished answers did far worse
    # (Welch t 3-12 on single-viewer evaluation answers), so they stay on there; inverted, they go. E34: inverted, they
    # went (t -20.9), and the round still lifted the real users (+0.222 against E31's +0.364): kl_coef 0.08 and
    # score centering, which E33's lane lacked, still pull toward short, finished answers.
    "finish_priors": "if_feedback_agrees",
}
"""The ``rlhb-midsteer`` lane's finish priors, applied only where its records support them."""
FULL_ALGORITHM_CONFIG["rlhb-midsteer"] = {
    **FULL_ALGORITHM_CONFIG["rlhb-steer"],
    **REALNESS_LANE,
    **MIDCUT_LANE,
    **FINISH_PRIORS_FROM_FEEDBACK,
}
"""``--algorithms rlhb-midsteer``: the steering stage of ``rlhb-steer`` before the PPO of ``rlhb-midcut``. E21
(through the services, concise): 0.244 -> 0.540 (p 7e-9), published with every guard clean, and the first
behavior gap measured through the services, +0.108 (p 0.021); 64 minutes, against 30-47 for ``rlhb-midcut`` (E20).
On thorough users it did not carry over: +0.136 by 12-word answers, near-empty 0.6% -> 6.8%, rejected by the
gate's length guard, no gap. On example users (E23) 0.088 -> 0.210 (p 3e-6), every guard better, no gap. The
demo's default ``rlhb`` lane trained this configuration from E23 to E42."""
ADVERSARIAL_REALNESS: dict = {
    # The adversarial D of E5-E7 never lifted, but there the reward was the contrast alone, which cancels realness:
    # whatever D learned about the policy's generations (its real-vs-generated judgement, eqs. 3-4) never reached
    # the policy. With log D in the reward (REALNESS_LANE) it does: a mode the policy collapses into (terse
    # answers, repetition) becomes D's fakes and loses reward as it grows, which is the paper's GAN mechanism.
    # E6's stabilisers keep D from being dragged to chance; swap and kappa stay at the library's defaults so the
    # generations are a quarter of D's fakes beside the mid-sentence cuts.
    "d_frozen": False,
    "d_label_smoothing": 0.1,
    "d_replay_size": 256,
    "d_adversarial_lr_scale": 0.2,
}
"""The ``rlhb-advsteer`` lane's departures from ``rlhb-midsteer``: D keeps training against the policy. E24 (through the
services): D held (held-out AUROC 0.64 -> 0.62 thorough, 0.77 -> 0.66 example) and both rounds were published with
significant lifts, thorough +0.102 (p 0.0064) and example seed 1 +0.074 (p 0.03), but by near-empty answers (1.1% ->
5.1%) and off-topic ones (relevance -30%) respectively: the hack moved between guards. A lane, not the default."""
FULL_ALGORITHM_CONFIG["rlhb-advsteer"] = {**FULL_ALGORITHM_CONFIG["rlhb-midsteer"], **ADVERSARIAL_REALNESS}
KL_IN_THE_LOSS: dict = {
    # E34/E36: in the reward (eq. 10) the KL is summed over an answer's tokens and reaches every earlier token
    # through GAE, so stopping early pays less: at 0.08 that prior lifted concise users on inverted feedback (+0.222),
    # at 0.02 the rollouts ran to the cap. In the actor's loss (GRPO; trainer/losses/kl.py) nothing credits stopping
    # early. 0.3 per token's k2 estimate is of the order of 0.08 / score_std (0.17) per nat summed: not tuned.
    "kl_estimator": "k2",
    "kl_placement": "loss",
    "kl_coef": 0.3,
}
"""The ``rlhb-klloss`` lane's departures from ``rlhb-midsteer``: the KL in the actor's loss, not the reward. Through
the services, concise users: inverted feedback 0.216 -> 0.170 (n.s.; E40, the KL in the reward lifted +0.222 there),
real feedback 0.227 -> 0.545 (p 4e-10) with a behavior gap of +0.187 (p 2e-4) and near-empty 2 -> 5 of 176 (E42)."""
FULL_ALGORITHM_CONFIG["rlhb-klloss"] = {**FULL_ALGORITHM_CONFIG["rlhb-midsteer"], **KL_IN_THE_LOSS}
REWARD_PENALTIES: dict = {
    # E42/E43: the KL-in-the-loss default lifted concise and example users with 3 and 1 near-empty answers above
    # base's; E44 (thorough, 96 tokens): repetition +45%. These put the two guards into the reward, as TRL's
    # missing_eos_penalty does for unfinished answers: a rollout under short_answer_words (4) loses 2, a rollout
    # loses 4 x its share of repeated 3-grams (a fully looping answer loses about as much as one cut at the budget
    # plus a low D score; a typical 0.03-0.07 rate costs 0.1-0.3 against a score std near 1). Not tuned per preset.
    "short_answer_penalty": 2.0,
    "repeated_ngram_penalty": 4.0,
}
"""The ``rlhb-penalized`` lane's departures from ``rlhb-klloss``, rollouts at temperature 1 as PPO's. Example users
(E53): 0.125 -> 0.227 (p 0.0059) with every guard of issue 14 clean (relevance +17%, repetition -20%, near-empty 2 -> 1
of 176). Concise users (E54): 0.239 -> 0.420 (p 1.4e-4), relevance +14%, repetition -50%, near-empty 1 -> 0.
Thorough users at 96 tokens (E46): 0.273 -> 0.352 (p 0.054), repetition +23% (paired 95% interval -14% to +62%).
The penalties score the near-empty and repetition measures, so with them on those two guards check what the reward
was told; the users' verdicts and relevance stay independent. The default lane since E54 (``DEFAULT_RLHB_LANE``)."""
FULL_ALGORITHM_CONFIG["rlhb-penalized"] = {**FULL_ALGORITHM_CONFIG["rlhb-klloss"], **REWARD_PENALTIES}
SERVING_TEMPERATURE_ROLLOUTS: dict = {
    # E46: at temperature 1 the rollouts repeated 0.034 of their 3-grams where the served answers (0.7) repeated
    # 0.074, so the penalty saw little of what users saw. Sampling rollouts at the serving temperature (DemoConfig's
    # 0.7; PPO's log-probabilities come from the same tempered distribution, as TRL's) shows the policy its own
    # served behavior. A run with --temperature other than 0.7 should --set rlhb.temperature to match.
    "temperature": 0.7,
}
REWARD_GUARDS: dict = {**REWARD_PENALTIES, **SERVING_TEMPERATURE_ROLLOUTS}
"""The ``rlhb-guarded`` lane's departures from ``rlhb-klloss``: the penalties and rollouts at the serving temperature.
E47 (concise): 0.233 -> 0.438 (p 2.4e-5) with every guard of issue 14 clean (near-empty 2 -> 2 of 176, relevance
+4.2%, repetition -39%) and a behavior gap of +0.176 (p 3e-4). Thorough users at 96 tokens (E48): +0.091 (p 0.033),
repetition -21%, relevance -5.9%; example users (E49): +0.057 (p 0.063), relevance -6.0%: at 0.7 the rollouts rarely
land in the off-topic tail, so the reward rarely charges for it (E51), and relevance fell where at 1 it rose. The
default for E48-E49, then a lane again."""
FULL_ALGORITHM_CONFIG["rlhb-guarded"] = {**FULL_ALGORITHM_CONFIG["rlhb-klloss"], **REWARD_GUARDS}
DEFAULT_RLHB_LANE = "rlhb-penalized"
"""The lane whose configuration the demo's plain ``rlhb`` lane trains (since E54): ``rlhb-midsteer`` with the KL in
the actor's loss (``rlhb-klloss``, the default from E43 to E53) and the near-empty and repetition penalties in the
reward, rollouts at temperature 1. Why, one seed each through the services, each against its own base:

- concise (E54): 0.239 -> 0.420 (p 1.4e-4), behavior gap +0.273 (p 7e-9), every guard of issue 14 clean (relevance
  +14%, repetition -50%, near-empty 1 -> 0 of 176). ``rlhb-klloss`` (E42): +0.318 with near-empty 2 -> 5.
- example (E53): 0.125 -> 0.227 (p 0.0059), every guard clean (relevance +17%, repetition -20%, near-empty 2 -> 1).
  ``rlhb-klloss`` (E43): +0.091 with near-empty 1 -> 2.
- thorough at 96 tokens (E46): 0.273 -> 0.352 (p 0.054), repetition +23% (paired 95% interval -14% to +62%): not
  met. ``rlhb-klloss`` (E44): +0.091 (p 0.032), repetition +45% ([+9%, +86%]).
- ``rlhb-guarded`` (the same with rollouts at 0.7) passed concise (E47) but lost 6% relevance on example and thorough
  users (E48, E49; E51: at 0.7 the rollouts rarely show the off-topic tail the reward would charge for).

Why the KL in the loss (E43): with the KL in the reward the round lifted concise users whatever their feedback said
(inverted: +0.222, E34), a brevity prior; with it in the loss the round followed the feedback (inverted: -0.045 n.s.,
E40). A poisoned round fails the gate's ranking check (E40) and, with the gate opened, the live A/B guardrail (E45;
both with ``rlhb-klloss``). The penalties score the near-empty and repetition measures, so with them on those two
guards check what the reward was told; the users' verdicts and relevance stay independent. Still the frozen-D variant
(paper section 6.4) with every PPO prompt on the served sentence; only the steering stage trains on each record's own
sentence, and the label says all of it."""
FULL_ALGORITHM_CONFIG["rlhb"] = dict(FULL_ALGORITHM_CONFIG[DEFAULT_RLHB_LANE])
STEERED_LANE_GATE: dict = {"kl_bound": 0.7}
"""The gate bounds each round's KL from the parent, the base in round 1. Steering is a supervised step on the logs
before PPO, so a steered lane's first candidate is further from the base than a PPO-only one: E12's measured 0.580
nats/token (the steered adapter alone 0.306) with a clean behavior guard, E21's 0.542 and 0.581, over the default
bound of 0.5 that was set from PPO-only candidates. Every lane that steers gets it (``DemoConfig.lane_gate_defaults``
reads the lane's own ``steer_steps``); the label names the raised bound."""
GATE_PROMPTS = 32
"""Held-out prompts each full-demo gate answers (the library's default is 16): a 16-answer unfinished share
has a sampling standard deviation near 0.12, a 32-answer one near 0.09 (E20)."""
GATE_ANSWERS_PER_PROMPT = 2
"""Answers per gate prompt in the full demo: 64 answers under the served sentence. E24's 32 answers held no
near-empty one where the 176-answer evaluation found 9 (5.1%); at 64 the chance of seeing none is ~3%, at 32 ~19%.
Costs about a minute of gating."""
GATE_NEAR_EMPTY_INCREASE = 0.04
"""The full demo's near-empty bound (the library's 0.10 is for its 16 answers, where one extra near-empty answer is
0.0625): over the gate's 64 answers, 3 more near-empty answers than the parent's block. In the 16 saved runs whose gate
answered 64 (bench/demo-results/, E41's survey), each rise of 3 or more there came with a rise of 9 or more
near-empty answers of 176 in the evaluation (E26's thorough 1 -> 4 of 64, then 2 -> 11; E41 1 -> 4, then 1 -> 13;
E37 0 -> 6, then 1 -> 16), all three published or rejected for other reasons under the 0.10 bound; every other run
rose by at most 1. Between two samples of 64 from one policy at the usual 1-2% near-empty, a rise of 3 has a chance
of 2-5% (less with the gate's common random numbers)."""
EVAL_SEED_OFFSET = 7919
"""Held-out evaluation draws use seed + this (apart from traffic's draws; the same for every version)."""

QUICK_ALGORITHM_CONFIG: dict[str, dict] = {
    name: {"batch_size": 4, "rollouts_per_prompt": 2, "max_new_tokens": 8, "threads": 1}
    for name in ("rlhb", "rlhbc", "rlhf", "sft", "pro")
}
QUICK_ALGORITHM_CONFIG["rlhb-frozen"] = {**QUICK_ALGORITHM_CONFIG["rlhb"], "d_frozen": True, "d_warmup_steps": 2}
QUICK_ALGORITHM_CONFIG["rlhb-adversarial"] = dict(QUICK_ALGORITHM_CONFIG["rlhb"])
QUICK_ALGORITHM_CONFIG["rlhb-steer"] = {**QUICK_ALGORITHM_CONFIG["rlhb"], "steer_steps": 2, "kl_reference": "start"}
QUICK_ALGORITHM_CONFIG["rlhb-real"] = {**QUICK_ALGORITHM_CONFIG["rlhb"], **REALNESS_LANE}
QUICK_ALGORITHM_CONFIG["rlhb-midcut"] = {**QUICK_ALGORITHM_CONFIG["rlhb-real"], **MIDCUT_LANE}
QUICK_ALGORITHM_CONFIG["rlhb-midsteer"] = {
    **QUICK_ALGORITHM_CONFIG["rlhb-steer"],
    **REALNESS_LANE,
    **MIDCUT_LANE,
    **FINISH_PRIORS_FROM_FEEDBACK,
}
QUICK_ALGORITHM_CONFIG["rlhb-advsteer"] = {**QUICK_ALGORITHM_CONFIG["rlhb-midsteer"], **ADVERSARIAL_REALNESS}
QUICK_ALGORITHM_CONFIG["rlhb-klloss"] = {**QUICK_ALGORITHM_CONFIG["rlhb-midsteer"], **KL_IN_THE_LOSS}
QUICK_ALGORITHM_CONFIG["rlhb-penalized"] = {**QUICK_ALGORITHM_CONFIG["rlhb-klloss"], **REWARD_PENALTIES}
QUICK_ALGORITHM_CONFIG["rlhb-guarded"] = {**QUICK_ALGORITHM_CONFIG["rlhb-klloss"], **REWARD_GUARDS}


@dataclass
class DemoConfig:
    """Everything one demo run needs (the ``rlhb demo`` options)."""

    out_dir: Path = Path("rlhb-demo")
    """Where report.md, report.json, demo.png and the processes' logs go."""
    algorithms: tuple[str, ...] = ("rlhb", "rlhbc", "rlhf")
    """One lane per algorithm, in this order; the first lane's base traffic is shared."""
    rounds: int = 1
    """Training rounds per lane (each further round costs ~30 min per lane on 2 cores: traffic,
    24 iterations, evaluation)."""
    base_traffic: int = 640
    """Answers served by base (with feedback) before the first round (E3 learned from 640)."""
    traffic_per_round: int = 300
    """Answers served by each new version (with feedback) before the next round."""
    eval_samples: int = 2
    """Answers per held-out question per version (evaluation, no feedback)."""
    eval_questions: int = 0
    """Held-out questions to evaluate on (0: all)."""
    train_questions: int = 0
    """Training questions traffic draws from (0: all); few questions make queries repeat."""
    steps: int = 24
    """Training iterations per round (E3's 24: ~50 s each with SmolLM2 on 2 cores)."""
    users: str = "concise"
    """Simulated user model (preset or package.module:Class)."""
    viewers_mean: float = 5.0
    """Mean viewers per answer during traffic."""
    max_tokens: int = 48
    """Answer length cap (serving and training)."""
    temperature: float = 0.7
    """Serving temperature for traffic and evaluation."""
    seed: int = 0
    model_path: str = ""
    """Base model folder ('' = the prepared SmolLM2; --quick builds a tiny one)."""
    algorithm_config: dict[str, dict] = field(default_factory=lambda: json.loads(json.dumps(FULL_ALGORITHM_CONFIG)))
    """Per-algorithm Config overrides passed to the trainer (as RLHB_TRAINER_ALGO__<FIELD> variables)."""
    gate_config: dict = field(default_factory=dict)
    """trainer.gate.GateConfig overrides (as RLHB_TRAINER_GATE__<FIELD> variables)."""
    concurrency: int = 8
    """Requests in flight (the API batches up to max_batch_size of them)."""
    threads: int = 2
    """torch threads per process."""
    quick: bool = False
    round_timeout_s: float = 3 * 3600
    """Give up on a round after this long."""
    show_answers: int = 5
    """Held-out questions shown with base and final answers side by side."""
    judge_rejected: bool = True
    """Also measure a candidate the gate rejected (never served: generated in the demo process
    from its adapter folder), so every algorithm has a like rate in the table."""
    behavior_gap: bool = True
    """After a lane's last round, its last served version also answers the held-out questions under
    the least preferred sentence: the behavior-following gap (most vs least preferred, same version),
    the paper's pi(a | s, b). One more evaluation per lane."""
    progress: bool | None = None
    """A progress bar per traffic batch and evaluation on stderr (None: only on a terminal)."""
    keep_redis_state: bool = False
    """Keep the lanes' Redis keys after the run (default: delete them; the machine's Redis is shared)."""
    drift: str = ""
    """``PRESET_A:PRESET_B@ROUND``: the simulated users have taste A until round ROUND, then B (the
    traffic and evaluation after round ROUND's training use B). '' = no drift (``users`` throughout)."""
    poison_round: int = 0
    """This round trains on inverted feedback: the traffic served just before it sends every like
    as a dislike and vice versa (round 1: the base traffic; later: an extra batch of
    ``traffic_per_round`` answers). 0 = none."""
    ab_share: float = 0.0
    """RLHB_TRAINER_AB_SHARE of every lane: a candidate that passes the gate serves this share of
    the next traffic next to the active version until the live guardrail decides it. 0: promote at once."""

    def __post_init__(self) -> None:
        from trainer.algorithms import ALGORITHMS

        unknown = [a for a in self.algorithms if lane_algorithm(a) not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(
                f"unknown algorithms {unknown}; choose from {', '.join(ALGORITHMS)} (a variant lane: ALGO-NAME)"
            )
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError(f"each lane once; got {', '.join(self.algorithms)}")
        for name in ("rounds", "base_traffic", "eval_samples", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.traffic_per_round < 0:
            raise ValueError("traffic_per_round must be >= 0")
        if self.drift:
            self.drift_parts()
        if not 0 <= self.poison_round <= self.rounds:
            raise ValueError(f"poison_round must be in 0..rounds ({self.rounds}); got {self.poison_round}")
        if not 0 <= self.ab_share < 1:
            raise ValueError(f"ab_share must be in [0, 1); got {self.ab_share}")
        if self.ab_share > 0 and self.traffic_per_round < 1:
            raise ValueError("ab_share > 0 needs traffic_per_round >= 1: the A/B arms are decided on live traffic")

    def lane_overrides(self, lane: str) -> dict:
        """The trainer overrides of ``lane``: its own entry, else its algorithm's."""
        return dict(self.algorithm_config.get(lane, self.algorithm_config.get(lane_algorithm(lane), {})))

    def label(self, lane: str) -> str:
        """The lane's display label, naming its departures from the paper (and a gate bound it raises)."""
        label = algorithm_label(lane_algorithm(lane), self.lane_overrides(lane))
        bound = self.gate_overrides(lane, os.environ).get("kl_bound") if self.lane_gate_defaults(lane) else None
        if bound is not None:
            label = (
                f"{label[:-1]}; gate KL bound {bound})" if label.endswith(")") else f"{label} (gate KL bound {bound})"
            )
        return label

    def lane_gate_defaults(self, lane: str) -> dict:
        """The gate bounds ``lane`` raises: ``STEERED_LANE_GATE`` where its trainer steers before PPO (read from
        the lane's own overrides, so ``--set rlhb.steer_steps=0`` drops it and ``--quick``'s plain lanes have none)."""
        return dict(STEERED_LANE_GATE) if int(float(self.lane_overrides(lane).get("steer_steps", 0))) > 0 else {}

    def gate_overrides(self, lane: str, environ: Mapping[str, str]) -> dict:
        """The gate overrides ``lane``'s trainer gets: the lane's defaults (``lane_gate_defaults``) unless the
        environment already sets that field, then ``gate_config`` (the run's own, for every lane)."""
        # the behavior guard compares answers as they are served: at the serving budget (its unfinished share is
        # "cut at the serving budget" only there) and temperature, on twice the library's 16 prompts, two answers
        # each, outside --quick (E20, E24, E25)
        full = {
            "max_prompts": GATE_PROMPTS,
            "answers_per_prompt": GATE_ANSWERS_PER_PROMPT,
            "max_near_empty_increase": GATE_NEAR_EMPTY_INCREASE,
        }
        demo_defaults = {
            "max_new_tokens": self.max_tokens,
            "guard_temperature": self.temperature,
            **({} if self.quick else full),
        }
        lane_defaults = {
            k: v
            for k, v in {**demo_defaults, **self.lane_gate_defaults(lane)}.items()
            if f"RLHB_TRAINER_GATE__{k.upper()}" not in environ
        }
        return {**lane_defaults, **self.gate_config}

    def drift_parts(self) -> tuple[str, str, int]:
        """(users before, users after, round) of ``drift``."""
        from rlhb.simulate.users import PRESETS

        m = re.fullmatch(r"(\w+):(\w+)@(\d+)", self.drift)
        if not m or m.group(1) not in PRESETS or m.group(2) not in PRESETS:
            raise ValueError(
                f"drift must be PRESET_A:PRESET_B@ROUND with presets from {', '.join(PRESETS)}; got {self.drift!r}"
            )
        at = int(m.group(3))
        if not 1 <= at <= self.rounds:
            raise ValueError(f"the drift round must be in 1..rounds ({self.rounds}); got {at}")
        return m.group(1), m.group(2), at

    def users_at(self, round_no: int) -> str:
        """The users' taste for the traffic and evaluation after round ``round_no`` (0: base traffic)."""
        if not self.drift:
            return self.users
        before, after, at = self.drift_parts()
        return after if round_no >= at else before

    def at_round(self, round_no: int) -> DemoConfig:
        """This config with the users of round ``round_no``."""
        return dataclasses.replace(self, users=self.users_at(round_no))

    def ab_min_views(self) -> int:
        """Views per arm the live guardrail waits for: about 60% of what one traffic batch gives the smaller arm."""
        smaller = min(self.ab_share, 1 - self.ab_share)
        return max(1, int(0.6 * self.traffic_per_round * smaller * self.viewers_mean))


def quick_config(out_dir: Path, **overrides) -> DemoConfig:
    """The --quick settings: tiny model, a few answers, one short round per algorithm."""
    base = dict(
        out_dir=out_dir,
        rounds=1,
        base_traffic=40,
        traffic_per_round=0,
        eval_samples=1,
        eval_questions=8,
        train_questions=8,
        steps=1,
        max_tokens=8,
        viewers_mean=5.0,
        concurrency=4,
        threads=1,
        quick=True,
        show_answers=2,
        algorithm_config=json.loads(json.dumps(QUICK_ALGORITHM_CONFIG)),
        round_timeout_s=600,
        # The tiny random model's candidates are noise; let the gate's reward check pass them so
        # the quick run exercises publish, hot-swap and evaluation (finite and KL checks still apply).
        gate_config={"reward_tolerance": 0.99},
    )
    base.update(overrides)
    return DemoConfig(**base)
