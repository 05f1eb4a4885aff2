"""The publication gate: a candidate adapter goes live only if it passes three checks.

1. **Finite weights.** Every tensor in the adapter file is finite (a NaN/inf LoRA would
   make every answer garbage). Checked from the file, before any model is built.
2. **KL to the reference is bounded.** On the held-out records' prompts (query + the
   behavior sentence they were served under) the candidate samples answers; along each
   answer we take the exact KL between the candidate's and the reference's (same base,
   adapter disabled) next-token distributions over the whole vocabulary, and average over
   answer tokens: ``kl_token = mean_t KL(pi_cand(.|s,b,a_<t) || pi_ref(.|s,b,a_<t))``.
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

A failed candidate is kept on disk and marked rejected with the reason (trainer/loop.py).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.checkpoint_format import weights_file
from core.settings import GateSettings
from schemas.adapters import AdapterVersion
from schemas.behavior import BehaviorRecord

GateConfig = GateSettings
"""The gate's thresholds and sizes: declared in core/settings.py (``RLHB_TRAINER_GATE__<FIELD>``)."""


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


# --------------------------------------------------------------------------- models


class _Scorer:
    """The base model with the candidate (and the active) adapter loaded side by side."""

    def __init__(self, model_path: str, candidate: AdapterVersion, active: AdapterVersion | None):
        import torch
        from peft import PeftModel

        from core.model_loading import load_causal_lm

        self.torch = torch
        base, self.tok = load_causal_lm(model_path, dtype="float32", padding_side="left")
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
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

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

    def kl_on_own_answers(self, prompts: Sequence[tuple[str, str]], cfg: GateConfig) -> tuple[float, float]:
        """(mean per-token KL, mean per-answer KL) of candidate vs reference on the candidate's samples."""
        torch = self.torch
        total_kl, total_tokens, seq_kls = 0.0, 0, []
        torch.manual_seed(cfg.seed)
        for start in range(0, len(prompts), cfg.batch_size):
            enc = self._prompts(prompts[start : start + cfg.batch_size])
            with self._adapter("candidate"), torch.no_grad():
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=cfg.max_new_tokens,
                    pad_token_id=self.tok.pad_token_id,
                    eos_token_id=self.eos_ids,
                )
            answer = out[:, enc["input_ids"].shape[1] :]  # (B, T)
            is_eos = torch.isin(answer, torch.tensor(self.eos_ids))
            # real tokens: up to and including the first EOS
            answer_mask = (is_eos.cumsum(1) - is_eos.long()) == 0  # (B, T)
            ids = torch.cat([enc["input_ids"], answer], 1)
            mask = torch.cat([enc["attention_mask"], answer_mask.long()], 1)
            T = answer.shape[1]
            logp = self._logits(ids, mask, "candidate", T).log_softmax(-1)  # (B, T, V)
            logq = self._logits(ids, mask, None, T).log_softmax(-1)  # (B, T, V)
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
            answer = torch.full((len(rows), T), self.tok.pad_token_id, dtype=torch.long)
            answer_mask = torch.zeros((len(rows), T), dtype=torch.long)
            for i, r in enumerate(rows):
                answer[i, : len(r)] = torch.tensor(r)
                answer_mask[i, : len(r)] = 1
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
) -> GateResult:
    """Run the three checks on ``candidate`` (``active``: the version it would replace, None = base)."""
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
    prompts = list(dict.fromkeys((r.query, r.behavior_prompt) for r in records))[: cfg.max_prompts]

    with _threads(cfg.threads):
        return _score(candidate, active, model_path, records, prompts, cfg)


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


def _score(candidate, active, model_path, records, prompts, cfg: GateConfig) -> GateResult:
    scorer = _Scorer(model_path, candidate, active)
    kl_token, kl_seq = scorer.kl_on_own_answers(prompts, cfg)
    metrics = {"finite": 1.0, "kl_token": kl_token, "kl_seq": kl_seq, "kl_prompts": float(len(prompts))}
    if not math.isfinite(kl_token) or kl_token > cfg.kl_bound:
        return GateResult(
            False, f"KL to the reference {kl_token:.3f} nats/token exceeds the bound {cfg.kl_bound}", metrics
        )

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
) -> GateResult:
    """Gate a registered candidate against the active version: promote it if it passes,
    otherwise keep it on disk marked rejected with the reason. ``registry``: core.registry.Registry."""
    from schemas.adapters import BASE_VERSION, AdapterStatus

    active_name = registry.active()
    active = registry.validate(active_name) if active_name != BASE_VERSION else None
    try:
        result = evaluate(candidate, active, model_path, heldout, config)
    except Exception as e:  # a candidate the gate cannot even evaluate is not publishable
        result = GateResult(False, f"gate could not evaluate the candidate: {type(e).__name__}: {e}")
    if result.passed:
        registry.promote(candidate.name)
    else:
        registry.mark(candidate.name, AdapterStatus.rejected, result.reason)
    return result
