"""The publication gate: a candidate adapter goes live only if it passes four checks.

1. **Finite weights.** Every tensor in the adapter file is finite (a NaN/inf LoRA would
   make every answer garbage). Checked from the file, before any model is built.
2. **KL to the reference is bounded.** On held-out prompts (``guard_prompts``: each held-out
   question under the sentence the API serves, ``prompt_behavior="served"``, or under its record's
   own logged sentence, ``"record"``; ``answers_per_prompt`` answers each) the candidate samples
   answers; along each
   answer we take the exact KL between the candidate's and the reference's next-token
   distributions over the whole vocabulary, and average over answer tokens:
   ``kl_token = mean_t KL(pi_cand(.|s,b,a_<t) || pi_ref(.|s,b,a_<t))``. The reference is the
   parent by default (``kl_reference="parent"``: the active version the candidate would
   replace, the base model while base is active), so the bound is on one round's step: in a
   continual loop the distance to the base only grows round after round, and a fixed bound
   on it would block every round once earlier ones had used it up (E12 measured a steered
   round-1 candidate at 0.58 nats/token from the base). ``kl_reference="base"`` bounds the
   total distance instead; ``kl_token_base`` is reported either way.
   ``kl_token <= kl_bound`` is the check. Per token, not per answer, so the bound does not
   depend on answer length; ``kl_seq`` (the per-answer sum, the quantity eq. 10 penalises)
   is reported alongside. A degenerate policy that repeats a phrase the base model finds
   unlikely has a large per-token KL and is stopped here.
3. **Held-out reward is not worse than the active version's.** The measure is the
   *implicit-reward ranking accuracy* on held-out logged answers: each logged answer a_i
   to (s_i, b_i) gets the implicit reward z_i = mean_t [log pi_v(a_it|...) - log pi_ref(a_it|...)]
   (the DPO implicit reward, length-normalised as in SimPO) and for every pair of records
   whose shaped rewards differ by at least ``min_reward_gap`` we count whether z ranks the
   better-rewarded answer higher (ties count 1/2). 0.5 means the version prefers liked and
   disliked answers equally (the base model scores exactly 0.5: z = 0 everywhere); above
   0.5 means it moved probability toward the answers users rewarded. It is
   algorithm-independent (every algorithm's reward model is different and not always
   saved), uses only the logged behavior, and is computed for the candidate and for the
   active version on the same records. The check: ``acc_cand >= acc_active - reward_tolerance``.
   With fewer than ``min_pairs`` pairs the check is skipped (and the metrics say so).
4. **Behavior guard** (reward hacking: every report of RL on live feedback met it; here a run
   made a third of its answers near-empty and direct-reward RL collapsed to 1-token answers).
   The parent (the active version, or the base model when base is active) answers the KL
   check's held-out prompts with the same sampling and the same seed as the candidate (common
   random numbers: a close candidate gives the same answers, so a difference is not sampling
   noise). Over both sets of answers: mean words, near-empty share (fewer than
   ``near_empty_words`` words), refusal share (``core.text_measures.REFUSAL_OPENINGS``), unfinished
   share (answers that stop mid-sentence, ``core.text_measures.ends_cleanly``), mean
   repeated-3-gram rate, and relevance (MiniLM cosine of question and answer,
   ``core/relevance.py``; the relative drop is taken against at least ``RELEVANCE_FLOOR``).
   A move past a bound blocks: near-empty share up by more than ``max_near_empty_increase``,
   mean length down by more than ``max_length_drop`` (relative), repetition up by more than
   ``max_repetition_increase``, relevance down by more than ``max_relevance_drop`` (relative),
   refusal share up by more than ``max_refusal_increase``, unfinished share up by more than
   ``max_unfinished_increase``. Every guard metric, candidate's and
   parent's (suffix ``_parent``), goes into the metrics; ``behavior_guard=False`` skips it.

   The default bounds come from the measured runs (bench/demo_experiments.md, 352 answers
   each, base: 28.5 words, near-empty 0.9%, relevance 0.59, repeated 3-grams 0.03). Healthy
   candidates that users liked got much shorter but stayed on topic: E3 RLHB 16.3 words (-43%),
   near-empty 2.6%, relevance 0.64; RLHBC 15.7 words (-44%), 3.1%, 0.73. The hacked ones: E4
   RLHBC 6.9 words (-76%), near-empty 32%; direct-reward RL 3.2 words (-89%), near-empty 62%,
   relevance 0.11 (-81%), and in a second run empty answers only. So: length drop 0.6 and
   near-empty +0.10 sit between the two groups; near-empty +0.10 also tolerates one extra
   near-empty answer of the 16 default prompts (1/16 = 0.0625), and relevance -25% is about
   three standard errors of a 16-answer mean (per-answer cosines scatter by about 0.2).
   Repetition: base 0.03-0.04 and healthy runs lower, a looping policy 0.3-0.9, so +0.10.
   Refusals: base about 0, so +0.10 (two refusals more in 16 answers). The demo's published
   RLHB (11.5 words, -59%, near-empty 9.9%) sits just inside both bounds. ``rlhb demo`` asks 64 answers
   and sets near-empty +0.04 (three answers more): over 64 a rise of 3 came with 9-15 more near-empty
   answers of 176 in the evaluation, 3 runs of 16 (``rlhb.demo.config.GATE_NEAR_EMPTY_INCREASE``, E41).
   The guard's answers are sampled at ``guard_temperature`` (``rlhb demo``: the serving temperature, so it
   judges answers as users get them; the KL check stays at temperature 1, where its bound was measured).
   Unfinished answers, the hacking a learned reward misses in the other direction
   (bench/demo_experiments.md E20: 176 served answers per version, 48 tokens): every version that
   lost like rate stopped mid-sentence more often than base (E15's poisoned round 0.55 -> 0.94,
   E18 on example users 0.57 -> 0.95, E20's 0.64 -> 0.88, published with like rate 0.097 ->
   0.040), every version that gained did so less often (0.6 -> 0.0-0.36). So +0.20: below the
   harmful moves (+0.24 to +0.39) and about 1.6 standard deviations (0.12) of the difference of
   two independent 32-answer shares near 0.6 (common random numbers make it smaller).
   The guard's answers are as long as the KL check's (``max_new_tokens``), so answers longer
   than that are compared cut: the length drop of verbose parents reads smaller than in full,
   and the unfinished share means "cut at the serving budget" only when ``max_new_tokens`` is
   that budget (``rlhb demo`` sets it so, and gates on 32 prompts).

Device and dtype: ``evaluate``/``gate_and_publish`` take ``device`` and ``dtype`` (the trainer
passes ``RLHB_DEVICE``/``RLHB_DTYPE``; ``core.device.resolve_device``); the base model loads
there, every tensor the gate makes goes there, and KL and log-probs are taken in float32.

Every failed check is named in the reason (KL and guards are measured together; the reward
check runs only when they pass). A failed candidate is kept on disk and marked rejected with
the reason in the registry (``gate_and_publish``; trainer/loop.py puts it in the round's
summary) and the reason is logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.checkpoint_format import weights_file
from core.settings import GateSettings
from core.text_measures import near_empty_share, refusal_share, repeated_ngram_rate, unfinished_share, words
from schemas.adapters import AdapterVersion
from schemas.behavior import BehaviorRecord

GateConfig = GateSettings
"""The gate's thresholds and sizes: declared in core/settings.py (``RLHB_TRAINER_GATE__<FIELD>``)."""

log = logging.getLogger(__name__)


@dataclass
class GateResult:
    passed: bool
    reason: str
    """Empty when passed; otherwise which check failed, with the numbers."""
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


def nonfinite_weights(adapter_dir: Path) -> dict[str, int]:
    """Tensor name -> count of NaN/inf entries (empty when all finite)."""
    import torch

    path = weights_file(Path(adapter_dir))
    if path is None:
        return {"<missing weights file>": 1}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    bad = {}
    for name, tensor in state.items():
        n = int((~torch.isfinite(tensor.float())).sum()) if tensor.is_floating_point() else 0
        if n:
            bad[name] = n
    return bad


def ranking_accuracy(rewards: Sequence[float], scores: Sequence[float], min_gap: float) -> tuple[float, int]:
    """(share of pairs where ``scores`` order the better-rewarded record first, ties 1/2; pairs)."""
    hits, pairs = 0.0, 0
    for i in range(len(rewards)):
        for j in range(len(rewards)):
            if rewards[i] - rewards[j] >= min_gap:
                pairs += 1
                hits += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return (hits / pairs if pairs else 0.5), pairs


RELEVANCE_FLOOR = 0.2
"""Smallest denominator of the relative relevance drop. MiniLM's cosine of a question and an
unrelated text is about 0-0.15, so a parent below this has no relevance to lose: a relative
drop from there would be noise (a fluent model's answers score about 0.55, bench/demo_experiments.md)."""


def answer_measures(answers: Sequence[str], relevance: Sequence[float], near_empty_words: int) -> dict[str, float]:
    """What the behavior guard compares, over one version's answers: mean words, near-empty share
    (fewer than ``near_empty_words`` words), refusal share, unfinished share (stopped mid-sentence), mean
    repeated-3-gram rate and mean relevance (``relevance``: one question-answer score per answer)."""
    n = max(len(answers), 1)
    return {
        "mean_words": sum(len(words(a)) for a in answers) / n,
        "near_empty_share": near_empty_share(answers, near_empty_words),
        "refusal_share": refusal_share(answers),
        "unfinished_share": unfinished_share(answers),
        "repeated_ngram_rate": sum(repeated_ngram_rate(a) for a in answers) / n,
        "relevance": sum(relevance) / max(len(relevance), 1),
    }


def compare_behavior(
    parent: dict[str, float], candidate: dict[str, float], cfg: GateConfig
) -> tuple[dict[str, float], list[str]]:
    """(metrics, reasons): the candidate's ``answer_measures``, the parent's (suffix ``_parent``) and
    the relative drops ``length_drop`` (1 - candidate/parent) and ``relevance_drop`` ((parent -
    candidate) / max(parent, ``RELEVANCE_FLOOR``)), negative when the measure rose; one reason per
    bound crossed, naming the guard, both numbers and the bound."""
    length_drop = 1 - candidate["mean_words"] / parent["mean_words"] if parent["mean_words"] > 0 else 0.0
    relevance_drop = (parent["relevance"] - candidate["relevance"]) / max(parent["relevance"], RELEVANCE_FLOOR)
    metrics = {
        **candidate,
        **{f"{k}_parent": v for k, v in parent.items()},
        "length_drop": length_drop,
        "relevance_drop": relevance_drop,
    }
    eps = 1e-9  # a share exactly at its bound passes
    reasons = []
    for key, label, bound in (
        ("near_empty_share", f"near-empty answers (< {cfg.near_empty_words} words)", cfg.max_near_empty_increase),
        ("repeated_ngram_rate", "repeated 3-grams", cfg.max_repetition_increase),
        ("refusal_share", "refusals", cfg.max_refusal_increase),
        ("unfinished_share", "answers stopped mid-sentence", cfg.max_unfinished_increase),
    ):
        if candidate[key] - parent[key] > bound + eps:
            reasons.append(f"{label} {parent[key]:.2f} -> {candidate[key]:.2f} (bound +{bound:.2f})")
    if length_drop > cfg.max_length_drop + eps:
        reasons.append(
            f"mean answer length {parent['mean_words']:.1f} -> {candidate['mean_words']:.1f} words "
            f"(-{length_drop:.0%}, bound -{cfg.max_length_drop:.0%})"
        )
    if relevance_drop > cfg.max_relevance_drop + eps:
        reasons.append(
            f"relevance to the question {parent['relevance']:.2f} -> {candidate['relevance']:.2f} "
            f"(-{relevance_drop:.0%}, bound -{cfg.max_relevance_drop:.0%})"
        )
    return metrics, [f"behavior guard: {r}" for r in reasons]


def _compare_answered(
    parent: Sequence[tuple[str, str]], candidate: Sequence[tuple[str, str]], cfg: GateConfig
) -> tuple[dict[str, float], list[str]]:
    """``compare_behavior`` of two sets of (question, answer) pairs, relevance scored for every pair
    (MiniLM cosine of question and answer, ``core/relevance.py``)."""
    from core.relevance import relevance_scores

    pairs = [*parent, *candidate]
    scores = relevance_scores([q for q, _ in pairs], [a for _, a in pairs])
    n = len(parent)
    return compare_behavior(
        answer_measures([a for _, a in parent], scores[:n], cfg.near_empty_words),
        answer_measures([a for _, a in candidate], scores[n:], cfg.near_empty_words),
        cfg,
    )


def live_arms_guard(
    active: Sequence[tuple[str, str]], candidate: Sequence[tuple[str, str]], cfg: GateConfig
) -> tuple[dict[str, float], list[str]]:
    """``compare_behavior`` of the answers two A/B arms served live, as (question, answer) pairs, with the
    gate's bounds: check 4 on live traffic. The arms answered different questions, drawn from the
    same stream over the same period (the split is a hash of the impression id), so their measures compare as
    two samples of one population, not pair by pair as in the gate."""
    metrics, reasons = _compare_answered(active, candidate, cfg)
    return {**metrics, "answers": float(len(candidate)), "answers_parent": float(len(active))}, reasons


def behavior_guard(
    questions: Sequence[str], parent_answers: Sequence[str], candidate_answers: Sequence[str], cfg: GateConfig
) -> tuple[dict[str, float], list[str]]:
    """``compare_behavior`` of the parent's and the candidate's answers to the same ``questions``."""
    return _compare_answered(
        list(zip(questions, parent_answers, strict=True)), list(zip(questions, candidate_answers, strict=True)), cfg
    )


# --------------------------------------------------------------------------- models


class _Scorer:
    """The base model with the candidate (and the active) adapter loaded side by side."""

    def __init__(
        self,
        model_path: str,
        candidate: AdapterVersion,
        active: AdapterVersion | None,
        device: str = "auto",
        dtype: str = "auto",
    ):
        import torch
        from peft import PeftModel

        from core.device import resolve_device
        from core.model_loading import load_causal_lm

        self.torch = torch
        self.device, dtype = resolve_device(device, dtype)
        base, self.tok = load_causal_lm(model_path, dtype=dtype, device=self.device, padding_side="left")
        self.model = PeftModel.from_pretrained(base, candidate.path, adapter_name="candidate")
        if active is not None:
            self.model.load_adapter(active.path, adapter_name="active")
        self.model.eval()
        eos = getattr(base.generation_config, "eos_token_id", None)
        self.eos_ids = sorted({self.tok.eos_token_id, *([eos] if isinstance(eos, int) else (eos or []))} - {None})

    def _adapter(self, name: str | None):
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _prompts(self, records: Sequence[tuple[str, str]]):
        from core.prompts import render_prompt

        texts = [render_prompt(self.tok, q, b) for q, b in records]
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _logits(self, ids, mask, adapter: str | None, n_last: int):
        torch = self.torch
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        with self._adapter(adapter), torch.no_grad():
            # the LM head only where answer tokens are predicted (a 49k vocab dominates the cost)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=n_last + 1
            )
        return out.logits[:, -n_last - 1 : -1].float()  # (B, T, V): position of token t-1 predicts t

    def _answer_logprobs(self, ids, mask, answer, adapter: str | None):
        """log-prob of each answer token: (B, T)."""
        logits = self._logits(ids, mask, adapter, answer.shape[1])  # (B, T, V)
        return self.torch.gather(logits.log_softmax(-1), 2, answer.unsqueeze(-1)).squeeze(-1)

    def sample_answers(
        self, prompts: Sequence[tuple[str, str]], adapter: str | None, cfg: GateConfig, temperature: float = 1.0
    ) -> list:
        """``adapter``'s sampled answers to ``prompts`` (None = the reference: adapter disabled), as
        batches of (prompt encoding, answer ids (B, T), answer mask (B, T), up to and including the
        first EOS). Full-vocabulary sampling at ``temperature`` reseeded with ``cfg.seed``, so two
        adapters answer the same prompts with the same random numbers (close policies give the
        same answers, and their differences are not sampling noise)."""
        torch = self.torch
        batches = []
        torch.manual_seed(cfg.seed)
        for start in range(0, len(prompts), cfg.batch_size):
            enc = self._prompts(prompts[start : start + cfg.batch_size])
            with self._adapter(adapter), torch.no_grad():
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=cfg.max_new_tokens,
                    pad_token_id=self.tok.pad_token_id,
                    eos_token_id=self.eos_ids,
                )
            answer = out[:, enc["input_ids"].shape[1] :]  # (B, T)
            is_eos = torch.isin(answer, torch.tensor(self.eos_ids, device=answer.device))  # (B, T)
            # real tokens: up to and including the first EOS
            answer_mask = (is_eos.cumsum(1) - is_eos.long()) == 0  # (B, T)
            batches.append((enc, answer, answer_mask))
        return batches

    def answer_texts(self, batches: list) -> list[str]:
        """The decoded answers of ``sample_answers`` batches (EOS and padding dropped), in prompt order."""
        eos = set(self.eos_ids)
        texts = []
        for _, answer, answer_mask in batches:
            for row, keep in zip(answer.tolist(), answer_mask.tolist(), strict=True):
                ids = [t for t, k in zip(row, keep, strict=True) if k and t not in eos]
                texts.append(self.tok.decode(ids, skip_special_tokens=True).strip())
        return texts

    def kl_on_answers(self, batches: list, reference: str | None = None) -> tuple[float, float]:
        """(mean per-token KL, mean per-answer KL) of the candidate vs ``reference`` (an adapter name; None =
        the base model) along the candidate's sampled answers (``sample_answers(prompts, "candidate", cfg)``)."""
        torch = self.torch
        total_kl, total_tokens, seq_kls = 0.0, 0, []
        for enc, answer, answer_mask in batches:
            ids = torch.cat([enc["input_ids"], answer], 1)
            mask = torch.cat([enc["attention_mask"], answer_mask.long()], 1)
            T = answer.shape[1]
            logp = self._logits(ids, mask, "candidate", T).log_softmax(-1)  # (B, T, V)
            logq = self._logits(ids, mask, reference, T).log_softmax(-1)  # (B, T, V)
            kl = (logp.exp() * (logp - logq)).sum(-1) * answer_mask  # (B, T)
            total_kl += float(kl.sum())
            total_tokens += int(answer_mask.sum())
            seq_kls.extend(kl.sum(1).tolist())
        return total_kl / max(total_tokens, 1), sum(seq_kls) / max(len(seq_kls), 1)

    def implicit_rewards(
        self, records: Sequence[BehaviorRecord], adapters: Sequence[str], cfg: GateConfig
    ) -> dict[str, list[float]]:
        """Per adapter, z_i = mean over answer tokens of log pi_adapter - log pi_ref, per logged answer."""
        torch = self.torch
        z: dict[str, list[float]] = {a: [] for a in adapters}
        for start in range(0, len(records), cfg.batch_size):
            chunk = records[start : start + cfg.batch_size]
            enc = self._prompts([(r.query, r.behavior_prompt) for r in chunk])
            eos = [self.tok.eos_token_id]
            rows = [
                self.tok(r.response, add_special_tokens=False)["input_ids"][: cfg.max_response_tokens] or eos
                for r in chunk
            ]
            T = max(len(r) for r in rows)
            answer = torch.full((len(rows), T), self.tok.pad_token_id, dtype=torch.long)  # (B, T)
            answer_mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
            for i, r in enumerate(rows):
                answer[i, : len(r)] = torch.tensor(r)
                answer_mask[i, : len(r)] = 1
            answer, answer_mask = answer.to(self.device), answer_mask.to(self.device)  # filled on the CPU, moved once
            ids = torch.cat([enc["input_ids"], answer], 1)
            mask = torch.cat([enc["attention_mask"], answer_mask], 1)

            ref = self._answer_logprobs(ids, mask, answer, None)  # (B, T), shared by every adapter
            for name in adapters:
                diff = (self._answer_logprobs(ids, mask, answer, name) - ref) * answer_mask  # (B, T)
                z[name].extend((diff.sum(1) / answer_mask.sum(1)).tolist())
        return z


# --------------------------------------------------------------------------- the gate


def evaluate(
    candidate: AdapterVersion,
    active: AdapterVersion | None,
    model_path: str,
    heldout: Sequence[BehaviorRecord],
    config: GateConfig | None = None,
    *,
    served_behavior: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> GateResult:
    """Run the four checks on ``candidate`` (``active``: the version it would replace and the behavior
    guard's parent, None = base), with the models on ``device`` in ``dtype`` (``core.device``).
    ``served_behavior``: the sentence the API serves (``prompt_behavior="served"``); None = the most
    preferred sentence of the encoding inferred from ``heldout`` (``core.behavior.encoding.infer_encoding``)."""
    cfg = config or GateConfig()
    bad = nonfinite_weights(Path(candidate.path))
    if bad:
        worst = ", ".join(f"{k} ({v})" for k, v in sorted(bad.items())[:3])
        return GateResult(False, f"non-finite weights: {sum(bad.values())} NaN/inf values in {worst}", {"finite": 0.0})
    if not heldout:
        return GateResult(False, "no held-out records to measure KL and reward on", {"finite": 1.0})

    rng = random.Random(cfg.seed)
    records = list(heldout)
    rng.shuffle(records)
    records = records[: cfg.max_records]
    prompts = guard_prompts(records, cfg, served_behavior)

    with _threads(cfg.threads):
        return _score(candidate, active, model_path, records, prompts, cfg, device, dtype)


def guard_prompts(
    records: Sequence[BehaviorRecord], cfg: GateConfig, served_behavior: str | None = None
) -> list[tuple[str, str]]:
    """The (question, behavior sentence) prompts the KL check and the behavior guard answer, in
    ``records``' order: up to ``max_prompts`` distinct ones, each ``answers_per_prompt`` times in a row.

    Under ``prompt_behavior="served"`` every question carries the served sentence, because that is
    what users see: E24 (bench/demo_experiments.md) gated under each record's own logged sentence and
    passed two candidates whose served answers broke the guards (near-empty 1% -> 5%; relevance -30%)
    while the same candidates looked healthy under the records' sentences (relevance +4%)."""
    if cfg.prompt_behavior == "served":
        if served_behavior is None:
            from core.behavior.encoding import infer_encoding, most_preferred_sentence

            served_behavior = most_preferred_sentence(infer_encoding(records))
        distinct = list(dict.fromkeys((r.query, served_behavior) for r in records))
    else:
        distinct = list(dict.fromkeys((r.query, r.behavior_prompt) for r in records))
    return [p for p in distinct[: cfg.max_prompts] for _ in range(cfg.answers_per_prompt)]


@contextlib.contextmanager
def _threads(n: int):
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _score(candidate, active, model_path, records, prompts, cfg: GateConfig, device, dtype) -> GateResult:
    scorer = _Scorer(model_path, candidate, active, device, dtype)
    sampled = scorer.sample_answers(prompts, "candidate", cfg)
    from_parent = cfg.kl_reference == "parent" and active is not None
    kl_token, kl_seq = scorer.kl_on_answers(sampled, "active" if from_parent else None)
    # the distance to the base too, whichever the check uses: continual rounds add up, and this shows how far
    kl_token_base, kl_seq_base = scorer.kl_on_answers(sampled, None) if from_parent else (kl_token, kl_seq)
    metrics = {
        "finite": 1.0, "kl_token": kl_token, "kl_seq": kl_seq, "kl_token_base": kl_token_base,
        "kl_seq_base": kl_seq_base, "kl_from_parent": float(from_parent), "kl_prompts": float(len(prompts)),
        "gate_questions": float(len(set(prompts))),
    }  # fmt: skip
    reasons = []
    if not math.isfinite(kl_token) or kl_token > cfg.kl_bound:
        reference = f"the parent {active.name}" if from_parent else "the base model"
        reasons.append(f"KL to {reference} {kl_token:.3f} nats/token exceeds the bound {cfg.kl_bound}")
    if cfg.behavior_guard:  # the parent answers the same prompts with the same random numbers
        t = cfg.guard_temperature  # the KL check's answers are at 1, where its bound was measured
        candidate_answers = sampled if t == 1.0 else scorer.sample_answers(prompts, "candidate", cfg, t)
        parent = "active" if active is not None else None
        guard_metrics, guard_reasons = behavior_guard(
            [q for q, _ in prompts],
            scorer.answer_texts(scorer.sample_answers(prompts, parent, cfg, t)),
            scorer.answer_texts(candidate_answers),
            cfg,
        )
        metrics.update(guard_metrics)
        reasons.extend(guard_reasons)
    else:
        metrics["behavior_guard_skipped"] = 1.0
    if reasons:  # every failed check is named, so a rejection says all that went wrong
        return GateResult(False, "; ".join(reasons), metrics)

    rewards = [r.reward for r in records]
    z = scorer.implicit_rewards(records, ["candidate"] + (["active"] if active is not None else []), cfg)
    acc_cand, pairs = ranking_accuracy(rewards, z["candidate"], cfg.min_reward_gap)
    if active is not None:
        acc_active, _ = ranking_accuracy(rewards, z["active"], cfg.min_reward_gap)
    else:
        acc_active = 0.5  # the base model: z = 0 for every answer, every pair a tie
    metrics.update({"rank_acc": acc_cand, "rank_acc_active": acc_active, "rank_pairs": float(pairs)})
    if pairs < cfg.min_pairs:
        metrics["reward_check_skipped"] = 1.0
        return GateResult(True, "", metrics)
    if acc_cand < acc_active - cfg.reward_tolerance:
        return GateResult(
            False,
            f"held-out implicit-reward ranking accuracy {acc_cand:.3f} is below the active version's "
            f"{acc_active:.3f} by more than the tolerance {cfg.reward_tolerance} ({pairs} pairs)",
            metrics,
        )
    return GateResult(True, "", metrics)


def gate_and_publish(
    registry,
    candidate: AdapterVersion,
    model_path: str,
    heldout: Sequence[BehaviorRecord],
    config: GateConfig | None = None,
    *,
    served_behavior: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> GateResult:
    """Gate a registered candidate against the active version: promote it if it passes,
    otherwise keep it on disk marked rejected with the reason. ``registry``: core.registry.Registry.
    ``served_behavior``: the sentence the API serves (``evaluate``).
    ``device``/``dtype``: where the gate's models run (``core.device.resolve_device``)."""
    from core.registry import PointerPublishError
    from schemas.adapters import BASE_VERSION, AdapterStatus

    active_name = registry.active()
    active = registry.validate(active_name) if active_name != BASE_VERSION else None
    try:
        result = evaluate(
            candidate, active, model_path, heldout, config, served_behavior=served_behavior, device=device, dtype=dtype
        )
    except Exception as e:  # a candidate the gate cannot even evaluate is not publishable
        result = GateResult(False, f"gate could not evaluate the candidate: {type(e).__name__}: {e}")
    if result.passed:
        log.info("gate passed %s (parent %s): %s", candidate.name, active_name, _brief(result.metrics))
        try:
            registry.promote(candidate.name)
        except PointerPublishError as e:  # published (durable in the manifest); Redis catches up at the next read
            log.warning("gate passed %s: %s", candidate.name, e)
    else:
        log.warning(
            "gate rejected %s (parent %s): %s [%s]", candidate.name, active_name, result.reason, _brief(result.metrics)
        )
        registry.mark(candidate.name, AdapterStatus.rejected, result.reason)
    return result


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())
