"""RLHB: PPO against a behavior-conditioned discriminator (RLHB paper, section 4, Algorithm 1).

One iteration, in the paper's order:

    1. sample (query s, behavior b) pairs from real behavior records
    2. generate k rollouts per prompt (``PPOCore``)
    3. reward each from D at the last token (eq. 2), minus eta * per-token KL (eq. 10)
    4. GAE (eq. 7-9); PPO epochs on the actor (eq. 5-6), then the critic (eq. 11)
    5. update D (eq. 4): real logged triplets (s, a, b) vs fakes made of rollouts (s, a_hat, b),
       behavior-swapped real triplets (s, a, b') whose b' differs in likes/dislikes, and a
       bootstrap share kappa (section 4.3) of highly-rewarded real records labelled fake

Timing: besides PPO's ``seconds_generate``, ``seconds_score`` (D scoring the rollouts) and ``seconds_update``
(``PPOCore``), each iteration logs ``seconds_discriminator``: step 5 (D's updates) plus D's held-out
measurement below, so an iteration's time splits into generation, update and discriminator.

Every iteration D's accuracy on held-out records (real vs swapped, never trained on) is
measured; when PPO starts from a D at chance, a loud warning is logged and ``d_at_chance``
is 1 in the metrics: the policy is then learning from noise. With ``request.heldout_pairs_path``
the last iteration's measurement (the one in the last metrics row) is also written out, pair by
pair with D's logits (``trainer.heldout_pairs``: the demo sets it against the best AUROC any model
could reach on the same pairs, ``rlhb.evaluation.d_ceiling``).

Programmatic use (benchmarks, DDP tests)::

    trainer = RLHBTrainer(request, config)   # loads policy, critic, D; splits held-out records
    trainer.warmup()                          # config.d_warmup_steps D steps (optional)
    metrics = trainer.iteration(0)            # one full RLHB iteration -> dict of floats
    # or the whole run (warm-up, request.steps iterations, checkpoint): run(request, config)

Departures from the paper:
- Reward: besides log D (eq. 2) the default is the contrast z(s, a; b) - z(s, a; b_opp)
  with b_opp the logged sentence farthest from b in likes/dislikes (docs/architecture.md: the raw
  D barely tracked preference, the contrast did). ``config.reward`` picks one;
  ``reward_realness_weight`` adds w * log D to the contrast, which cancels realness.
- Bootstrap: the paper bootstraps "highly-rewarded demonstrations as fake-real data" with a
  proportion kappa "to avoid overfitting" of D, and reports that kappa = 50% collapses D. We
  read it as real logged triplets with the highest shaped reward (the top fifth of the
  training records) relabelled as fake (``kappa_source="records"``): it brakes D exactly
  where the policy is heading, and at 50% half of D's fakes are real, which is why D would
  collapse. The other reading, the highest-rewarded generations so far, stays available
  (``kappa_source="generations"``); those are fakes anyway, so it cannot collapse D.
- Steering (off by default): ``steer_steps`` of behavior-conditioned SFT (SteerLM, which the
  paper cites) on the training records under their own sentences before D's warm-up, so the
  policy knows what a sentence predicts before PPO (``trainer.algorithms.steer``).
- Stabilisers (all off by default, for this CPU scale): one-sided label smoothing of the
  reals (``d_label_smoothing``), a reservoir of older generations replayed to D
  (``d_replay_size``, ``d_replay_share``), skipping D's step when it already separates
  the batch better than ``d_max_acc``, and a lower learning rate for D once PPO starts
  (``d_adversarial_lr_scale``).
- D's fake batch also holds behavior-swapped real triplets (``swap_share``): without them
  D can ignore b entirely and still separate real from generated text. Optionally a share of them swap the
  answer instead, to a sibling answer to the same question (``d_answer_swap_share``, off by default;
  ``d_heldout_answer_auroc`` measures that direction whatever the share).
- Finish priors (``missing_eos_penalty``, ``d_truncated_share``, ``reward_realness_weight``) can be made
  conditional on the records (``finish_priors="if_feedback_agrees"``, ``decide_finish_priors``): they apply to
  a round only when its records show that answers stopped mid-sentence were rewarded significantly less.
- Truncated fakes (``d_truncated_share``, off by default): real answers cut to a few words, under the
  sentence a PPO prompt would carry, labelled fake from the warm-up on. A frozen D has never seen a
  near-empty answer and PPO found that gap in every frozen-D run; these close it ahead of time.
  ``d_truncated_cut="mid_sentence"`` cuts them after any word that does not end a sentence, at any length,
  so D learns "unfinished", not "short" (E19). Whatever the share, ``d_heldout_truncated_win`` and
  ``d_heldout_cut_win`` measure the gap: the share of held-out records whose answer cut to a few words
  (resp. stopped mid-sentence) gets a higher reward than the whole answer, under the served sentence.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from core.text_measures import ends_cleanly
from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.ppo_core import PPOCore, check_finite, mean_over_ranks
from trainer.algorithms.runner import check_request, run_iterations, seed_everything
from trainer.algorithms.steer import steer
from trainer.config import RLHBConfig
from trainer.discriminator import build_discriminator, make_optimizer
from trainer.finish_evidence import finish_evidence
from trainer.losses.discriminator import contrastive_reward, discriminator_loss, discriminator_reward, pairwise_auroc
from trainer.policy import Policy
from trainer.records import answer_swap_siblings, as_records, check_swappable, sample_prompts, split_heldout
from trainer.rollouts import Prompt

Config = RLHBConfig
ALGORITHM = "rlhb"
log = logging.getLogger(__name__)

Triplet = tuple[str, str, str]  # (query, answer, behavior)
TOP_RECORD_SHARE = 0.2
"""kappa_source="records": the bootstrap draws from this top share of training records by shaped reward."""


def truncate_words(answer: str, max_words: int, rng: random.Random) -> str:
    """The answer's first k words, k uniform in 0..max_words and below its word count (a near-empty prefix)."""
    words = answer.split()
    return " ".join(words[: rng.randint(0, max(0, min(max_words, len(words) - 1)))])


def cut_mid_sentence(answer: str, rng: random.Random) -> str:
    """The answer stopped mid-sentence: its first k words, k uniform over the positions short of the whole
    answer where the kept text does not end a sentence (k = 0, the empty answer, always counts). Any length,
    so it teaches "stops mid-sentence", not "short"."""
    words = answer.split()
    cuts = [0] + [k for k in range(1, len(words)) if not ends_cleanly(words[k - 1])]
    return " ".join(words[: cuts[rng.randrange(len(cuts))]])


def cut_answer(answer: str, config: RLHBConfig, rng: random.Random) -> str:
    """A truncated fake as ``d_truncated_cut`` says: a near-empty prefix ("head") or a mid-sentence stop."""
    if config.d_truncated_cut == "mid_sentence":
        return cut_mid_sentence(answer, rng)
    return truncate_words(answer, config.d_truncated_max_words, rng)


def top_rewarded(records, share: float) -> list:
    """The ``share`` of records with the highest shaped reward (at least one)."""
    ranked = sorted(records, key=lambda r: r.reward, reverse=True)
    return ranked[: max(1, round(share * len(ranked)))]


def decide_finish_priors(config: RLHBConfig, records) -> tuple[RLHBConfig, dict[str, float]]:
    """``config.finish_priors``: with "if_feedback_agrees", the config for this round (the three finish priors
    zeroed unless the records support them, ``trainer.finish_evidence``) and the evidence as metrics; with
    "always", the config as given and no metrics."""
    if config.finish_priors == "always":
        return config, {}
    evidence = finish_evidence(records, config.finish_priors_alpha)
    log.info("RLHB: %s", evidence.describe())
    if not evidence.supports_priors:
        config = replace(config, missing_eos_penalty=0.0, d_truncated_share=0.0, reward_realness_weight=0.0)
    return config, evidence.as_metrics()


class RLHBTrainer:
    """Actor + critic (``PPOCore``), discriminator, records, and the RLHB iteration."""

    def __init__(self, request: TrainRequest, config: RLHBConfig, algorithm: str = ALGORITHM) -> None:
        self.request, self.config, self.algorithm = request, config, algorithm
        seed_everything(request.seed, config.threads)
        self.rng = random.Random(request.seed)
        records = as_records(request.records)
        self.pool = check_swappable(records, request.encoding)
        self.train_records, self.heldout_records = split_heldout(
            records, config.heldout_fraction, config.heldout_max, request.seed
        )
        self.config, self.finish_metrics = decide_finish_priors(config, self.train_records)
        config = self.config
        parent_path = Path(request.parent.path) if request.parent is not None else None
        self.policy = Policy.load(
            request.model_path, config, adapter_path=parent_path, device=request.device, dtype=request.dtype
        )
        self.core = PPOCore(self.policy, config)
        self.discriminator = build_discriminator(config, request.model_path, self.policy.device, request.dtype)
        self.discriminator.fit_behaviors(self.pool.texts)
        if parent_path is not None:
            self.discriminator.load_state(parent_path / "trainer_state")
        self.d_optimizer = make_optimizer(self.discriminator, config)
        swap_rng = random.Random(request.seed + 1)  # fixed held-out swaps: the metric compares like with like
        self.heldout_swaps = [self.pool.swap(r.behavior_text, swap_rng) for r in self.heldout_records]
        self.heldout_truncated = [
            truncate_words(r.response, config.d_truncated_max_words, swap_rng) for r in self.heldout_records
        ]  # fixed for the metric whatever d_truncated_cut is, so runs compare
        self.heldout_cut_mid = [cut_mid_sentence(r.response, swap_rng) for r in self.heldout_records]
        self.answer_siblings = answer_swap_siblings(self.train_records, self.pool)  # d_answer_swap_share
        self.heldout_answer_swaps = [  # fixed: another held-out answer to the same question, or None
            self.heldout_records[swap_rng.choice(s)].response if s else None
            for s in answer_swap_siblings(self.heldout_records, self.pool)
        ]
        self.top_generations: list[tuple[float, int, Triplet]] = []  # min-heap of the best (reward, tiebreak, triplet)
        self.top_records = top_rewarded(self.train_records, TOP_RECORD_SHARE)  # kappa_source="records"
        self.replay: list[Triplet] = []  # reservoir of earlier generations (d_replay_size)
        self._generated_seen = 0
        self._adversarial = False  # set at the first PPO iteration (D's learning rates then scale)
        self._pushed = 0
        self._warmup_summary: dict[str, float] = dict(self.finish_metrics)  # reported with the first iteration
        self._heldout_scores: tuple[list, list[float], list[float]] | None = None  # (pairs, z_real, z_swap)
        self.heldout_acc = self.heldout_accuracy()["d_heldout_acc"]

    # ------------------------------------------------------------------ rewards
    def reward(self, queries: list[str], answers: list[str], behaviors: list[str]) -> torch.Tensor:
        """The score PPO maximizes (B,): contrastive or raw D (``config.reward``)."""
        reward, z = self._score(queries, answers, behaviors)
        self._last_prob = torch.sigmoid(z)
        return reward

    @torch.no_grad()
    def _score(self, queries: list[str], answers: list[str], behaviors: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward (B,), z(s, a; b) (B,)) without side effects."""
        d = self.discriminator
        if self.config.reward == "contrastive":
            opposite = [self.pool.opposite(b) or b for b in behaviors]
            z, z_opp = d.logits_pair(queries, answers, behaviors, opposite)
            reward = contrastive_reward(z, z_opp)
            if self.config.reward_realness_weight:  # realness, which the contrast cancels (config docstring)
                reward = reward + self.config.reward_realness_weight * discriminator_reward(z, "log_d")
            return reward, z
        z = d.logits(queries, answers, behaviors)
        return discriminator_reward(z, self.config.reward), z

    # ------------------------------------------------------------------ discriminator
    def _real_batch(self, n: int) -> list[Triplet]:
        picks = [self.rng.randrange(len(self.train_records)) for _ in range(n)]
        return [(r.query, r.response, r.behavior_text) for r in (self.train_records[i] for i in picks)]

    def _swapped_batch(self, n: int) -> list[Triplet]:
        """Behavior swaps (s, a, b'), and a share ``d_answer_swap_share`` of answer swaps (s, a', b) where the
        record has a sibling answer (``trainer.records.answer_swap_siblings``)."""
        out = []
        share = self.config.d_answer_swap_share
        while len(out) < n:
            i = self.rng.randrange(len(self.train_records))
            r = self.train_records[i]
            siblings = self.answer_siblings[i]
            if share and siblings and self.rng.random() < share:  # no extra draw at 0: runs stay reproducible
                out.append((r.query, self.train_records[self.rng.choice(siblings)].response, r.behavior_text))
                continue
            swapped = self.pool.swap(r.behavior_text, self.rng)
            if swapped is not None:
                out.append((r.query, r.response, swapped))
        return out

    def _truncated_batch(self, n: int) -> list[Triplet]:
        """Real answers cut (``d_truncated_cut``), under the sentence a PPO prompt carries (``d_truncated_share``)."""
        cfg, out = self.config, []
        preferred = self.pool.most_preferred() if n else ""  # once per batch, not per fake
        for _ in range(n):
            r = self.train_records[self.rng.randrange(len(self.train_records))]
            served = self.rng.random() < cfg.preferred_prompt_share
            behavior = preferred if served else r.behavior_text
            out.append((r.query, cut_answer(r.response, cfg, self.rng), behavior))
        return out

    def _bootstrap_pool(self) -> list[Triplet]:
        if self.config.kappa_source == "records":
            return [(r.query, r.response, r.behavior_text) for r in self.top_records]
        return [t for _, _, t in self.top_generations]

    def _fake_batch(self, generated: list[Triplet]) -> list[Triplet]:
        """swap_share swapped reals + kappa bootstrap + d_truncated_share truncated reals + the rest
        generations (fresh, or replayed)."""
        cfg = self.config
        size = cfg.d_batch_size
        pool = self._bootstrap_pool()
        n_boot = round(cfg.kappa * size) if pool else 0
        boot = [pool[self.rng.randrange(len(pool))] for _ in range(n_boot)]
        n_trunc = round(cfg.d_truncated_share * size)
        boot += self._truncated_batch(n_trunc)
        if not generated:  # warm-up: no generations yet
            return self._swapped_batch(size - n_boot - n_trunc) + boot
        n_swap = round(cfg.swap_share * size)
        n_gen = size - n_swap - n_boot - n_trunc
        n_old = round(cfg.d_replay_share * n_gen) if self.replay else 0
        old = [self.replay[self.rng.randrange(len(self.replay))] for _ in range(n_old)]
        n_new = n_gen - n_old
        if n_new <= len(generated):
            fresh = self.rng.sample(generated, n_new)
        else:
            fresh = [generated[self.rng.randrange(len(generated))] for _ in range(n_new)]
        return self._swapped_batch(n_swap) + boot + old + fresh

    def _keep_for_replay(self, triplets: list[Triplet]) -> None:
        """Reservoir sampling (Vitter's algorithm R): a uniform sample of every generation so far."""
        size = self.config.d_replay_size
        for t in triplets:
            self._generated_seen += 1
            if len(self.replay) < size:
                self.replay.append(t)
            elif size:
                j = self.rng.randrange(self._generated_seen)
                if j < size:
                    self.replay[j] = t

    def _remember(self, triplets: list[Triplet], rewards: torch.Tensor) -> None:
        """Keep the batch_size highest-rewarded generations seen so far (the bootstrap pool)."""
        for triplet, reward in zip(triplets, rewards.tolist(), strict=True):
            self._pushed += 1
            item = (float(reward), self._pushed, triplet)
            if len(self.top_generations) < self.config.batch_size:
                heapq.heappush(self.top_generations, item)
            else:
                heapq.heappushpop(self.top_generations, item)

    def d_step(self, generated: list[Triplet], train: bool = True) -> dict[str, float]:
        """One D update (eq. 4) on real vs fake triplets; with train=False only the loss."""
        real = self._real_batch(self.config.d_batch_size)
        fake = self._fake_batch(generated)
        both = real + fake
        with torch.set_grad_enabled(train):
            z = self.discriminator.logits([t[0] for t in both], [t[1] for t in both], [t[2] for t in both])
            loss, stats = discriminator_loss(
                z[: len(real)], z[len(real) :], real_label=1.0 - self.config.d_label_smoothing
            )
        check_finite("discriminator loss", loss)
        batch_acc = 0.5 * (stats["acc_real"] + stats["acc_fake"])
        # decided on the mean over ranks under torch.distributed: a rank that skipped its backward
        # would leave the others waiting in their gradient all-reduce (itself when single-process)
        skipped = train and mean_over_ranks(batch_acc, z.device) > self.config.d_max_acc
        stats["skipped"] = float(skipped)
        if train and not skipped:
            self.d_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.config.max_grad_norm)
            self.d_optimizer.step()
        # stats: acc_real, acc_fake, d_real, d_fake, loss_real, loss_fake -> all prefixed "d_" once
        return {"d_loss": loss.item(), **{k if k.startswith("d_") else f"d_{k}": v for k, v in stats.items()}}

    @torch.no_grad()
    def heldout_accuracy(self) -> dict[str, float]:
        """D on held-out records: pairwise accuracy z(real) > z(swapped), and threshold accuracy."""
        pairs = [(r, s) for r, s in zip(self.heldout_records, self.heldout_swaps, strict=True) if s is not None]
        if not pairs:
            return {
                "d_heldout_acc": float("nan"),
                "d_heldout_cls_acc": float("nan"),
                "d_heldout_auroc": float("nan"),
                "d_heldout_answer_auroc": self.answer_swap_auroc(),
            }
        z_real, z_swap = self.discriminator.logits_pair(
            [r.query for r, _ in pairs],
            [r.response for r, _ in pairs],
            [r.behavior_text for r, _ in pairs],
            [s for _, s in pairs],
        )  # (N,), (N,)
        self._heldout_scores = (pairs, z_real.tolist(), z_swap.tolist())  # for write_heldout_pairs
        pairwise = (z_real > z_swap).float().mean().item()
        threshold = 0.5 * ((z_real > 0).float().mean() + (z_swap < 0).float().mean()).item()
        return {
            "d_heldout_acc": pairwise,
            "d_heldout_cls_acc": threshold,
            "d_heldout_auroc": pairwise_auroc(z_real, z_swap),
            "d_heldout_truncated_win": self.truncated_win(self.heldout_truncated),
            "d_heldout_cut_win": self.truncated_win(self.heldout_cut_mid),
            "d_heldout_answer_auroc": self.answer_swap_auroc(),
        }

    @torch.no_grad()
    def answer_swap_auroc(self) -> float:
        """D's AUROC on held-out records against their fixed answer swaps: z(s, a, b) vs z(s, a', b), a' another
        held-out answer to the same question logged under a sentence of other levels. The question PPO's reward
        asks (which answer suits this sentence), where ``d_heldout_auroc`` asks which sentence suits this answer.
        NaN when no held-out question has two such answers."""
        pairs = [(r, a) for r, a in zip(self.heldout_records, self.heldout_answer_swaps, strict=True) if a is not None]
        if not pairs:
            return float("nan")
        queries = [r.query for r, _ in pairs] * 2
        behaviors = [r.behavior_text for r, _ in pairs] * 2
        z = self.discriminator.logits(queries, [r.response for r, _ in pairs] + [a for _, a in pairs], behaviors)
        return pairwise_auroc(z[: len(pairs)], z[len(pairs) :])  # (N,) real vs (N,) answer-swapped

    def write_heldout_pairs(self, path: Path, iteration: int, d_heldout_auroc: float) -> Path | None:
        """The pairs of the last ``heldout_accuracy`` with D's logits, the pool's sentences and the encoding
        (``trainer.heldout_pairs``), so that AUROC can be read again and set against a ceiling. None when
        nothing was measured yet. A failure to write is logged, never raised: training does not depend on it."""
        from trainer.heldout_pairs import HeldoutPair, write_heldout_pairs

        if self._heldout_scores is None:
            return None
        pairs, z_real, z_swap = self._heldout_scores
        rows = [
            HeldoutPair(r.impression_id, r.query, r.response, r.behavior_text, s, zr, zs, dict(r.counts))
            for (r, s), zr, zs in zip(pairs, z_real, z_swap, strict=True)
        ]
        try:
            return write_heldout_pairs(
                path,
                version=self.request.version_name,
                iteration=iteration,
                d_heldout_auroc=d_heldout_auroc,
                encoding=self.pool.encoding,
                sentences=self.pool.by_text,
                pairs=rows,
            )
        except OSError as e:
            log.warning("could not write D's held-out pairs to %s: %s", path, e)
            return None

    @torch.no_grad()
    def truncated_win(self, cut_answers: list[str]) -> float:
        """Share of held-out records whose cut answer (``cut_answers[i]`` for record i) outranks the whole
        answer in PPO's reward, both under the served sentence: 0 = D never prefers the cut; higher = a gap
        PPO can exploit by stopping early. ``d_heldout_truncated_win``: cut to a few words;
        ``d_heldout_cut_win``: stopped mid-sentence at any length."""
        records = self.heldout_records
        if not records:
            return float("nan")
        queries = [r.query for r in records] * 2
        served = [self.pool.most_preferred()] * len(queries)
        rewards, _ = self._score(queries, [r.response for r in records] + cut_answers, served)
        whole, cut = rewards[: len(records)], rewards[len(records) :]  # (N,), (N,)
        return (cut > whole).float().mean().item()

    def warmup(self) -> list[dict[str, float]]:
        """Before any PPO: ``steer_steps`` behavior-conditioned SFT steps on the policy
        (``trainer.algorithms.steer``), then ``d_warmup_steps`` D updates on real vs
        behavior-swapped triplets. Returns D's warm-up history."""
        cfg = self.config
        steered = steer(
            self.policy,
            self.train_records,
            cfg.steer_steps,
            cfg.steer_learning_rate,
            cfg.steer_batch_size,
            self.rng,
            contrast_weight=cfg.steer_contrast,
            beta=cfg.steer_beta,
            opposite=self.pool.contrast_mirror(cfg.steer_contrast_records),
        )
        if steered:
            self._warmup_summary |= {
                "steer_steps": float(len(steered)),
                "steer_loss_first": steered[0]["steer_loss"],
                "steer_loss_last": steered[-1]["steer_loss"],
                "steer_margin_last": steered[-1]["steer_margin"],
            }
        history = [self.d_step([]) for _ in range(cfg.d_warmup_steps)]
        if history:
            self.heldout_acc = self.heldout_accuracy()["d_heldout_acc"]
            self._warmup_summary.update(
                {
                    "d_warmup_steps": float(len(history)),
                    "d_warmup_loss": history[-1]["d_loss"],
                    "d_warmup_heldout_acc": self.heldout_acc,
                }
            )
        return history

    # ------------------------------------------------------------------ the iteration
    def sample_prompts(self) -> list[Prompt]:
        """Step 1: (query, behavior) from records; a share ``preferred_prompt_share`` of them
        carries the most preferred sentence instead (the one served)."""
        prompts = sample_prompts(self.train_records, self.config.prompts_per_batch, self.rng)
        share = self.config.preferred_prompt_share
        if share <= 0:
            return prompts
        preferred = self.pool.most_preferred()
        return [Prompt(p.query, preferred) if self.rng.random() < share else p for p in prompts]

    def at_chance(self) -> bool:
        return abs(self.heldout_acc - 0.5) <= self.config.chance_margin

    def iteration(self, i: int) -> dict[str, float]:
        """One RLHB iteration (steps 1-5 of the module docstring) -> metrics."""
        cfg = self.config
        chance = self.at_chance()
        if chance:
            log.warning(
                "RLHB iteration %d: THE DISCRIMINATOR IS AT CHANCE (held-out accuracy %.3f, real vs swapped): "
                "its reward is noise and PPO learns nothing useful. Add records, raise d_warmup_steps, "
                "or check that behaviors differ in likes/dislikes.",
                i,
                self.heldout_acc,
            )
        prompts = self.sample_prompts()  # 1
        result = self.core.iteration(prompts, self.reward)  # 2-4
        batch, scores = result.rollouts.batch, result.rollouts.scores
        generated = list(zip(batch.queries, batch.responses, batch.behaviors, strict=True))
        self._remember(generated, scores)
        self._keep_for_replay(generated)
        d_prob = self._last_prob.mean().item()
        train_d = not cfg.d_frozen and cfg.d_updates_per_iteration > 0  # 5
        if train_d and not self._adversarial:  # warm-up is over: D adapts to the policy at its own pace
            self._adversarial = True
            for group in self.d_optimizer.param_groups:
                group["lr"] *= cfg.d_adversarial_lr_scale
        d_stats: dict[str, float] = {}
        started = time.perf_counter()
        for _ in range(cfg.d_updates_per_iteration if train_d else 1):
            d_stats = self.d_step(generated, train=train_d)
        held = self.heldout_accuracy()
        seconds_discriminator = time.perf_counter() - started  # step 5 and D's held-out measurement
        self.heldout_acc = held["d_heldout_acc"]
        if self.request.heldout_pairs_path is not None and i == self.request.steps - 1:
            self.write_heldout_pairs(self.request.heldout_pairs_path, i, held["d_heldout_auroc"])
        warmup, self._warmup_summary = self._warmup_summary, {}  # reported once, with the first iteration
        return {
            "iteration": i,
            **warmup,
            **result.metrics,
            **d_stats,
            "d_reward": scores.mean().item(),
            "d_prob_generated": d_prob,
            **held,
            "d_at_chance": float(chance),
            "seconds_discriminator": seconds_discriminator,
        }

    # ------------------------------------------------------------------ outputs
    def save_adapter(self, folder: Path) -> None:
        self.policy.save_adapter(folder)

    def save_state(self, folder: Path) -> None:
        from trainer.policy import VALUE_HEAD_FILE

        self.policy.save_value_head(folder / VALUE_HEAD_FILE)
        self.discriminator.save_state(folder)

    def run(self) -> RunResult:
        try:
            self.warmup()
            return run_iterations(
                self.request,
                algorithm=self.algorithm,
                step=self.iteration,
                save_adapter=self.save_adapter,
                save_state=self.save_state,
            )
        finally:
            self.core.close()  # vLLM rollouts: unload the last rollout adapter


def run(request: TrainRequest, config: RLHBConfig | None = None) -> RunResult:
    """Train with RLHB and write one checkpoint (see ``TrainRequest``)."""
    config = config or Config()
    check_request(request)
    return RLHBTrainer(request, config).run()
