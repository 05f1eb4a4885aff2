"""PRO baseline: Preference Ranking Optimization over the logged answers to one query, ranked
by shaped reward (Song et al., PRO paper, eq. 5-11 and Algorithm 1).

    1. lists: the records of each query, identical answers merged (mean reward), ranked by
       shaped reward, best first; a list needs two answers with different rewards
    2. each step, a batch of lists (the chunk D_i of Algorithm 1):
       optional self-bootstrapping: sample ``bootstrap`` answers per list from the current
       policy, score every candidate with a reward model (RLHBC's behavior classifier, trained
       once on the records), insert the samples into the ranking, re-rank the rewards;
       then L = L_PRO + beta * L_SFT (``trainer.losses.pro.pro_loss``), one AdamW step
    3. one checkpoint

Metrics per step: ``loss``, ``pro_loss``, ``sft_loss``, ``beta``, ``rank_accuracy`` (share of
lists whose best answer has the highest length-normalized log-prob), ``grad_norm``, list
sizes; with bootstrapping also ``bootstrap_score`` (mean reward-model score of the samples),
``bootstrap_position`` (their mean rank, 0 = best) and the classifier's ``rm_*`` metrics.

Departures from the paper:
- Rankings come from shaped rewards of real user behavior, not annotators; the dynamic
  temperature (eq. 9-11) uses the shaped rewards (or, with bootstrapping, the reward model's
  scores) times ``reward_scale``: shaped rewards lie in [-1, 1], and the scale brings the
  gaps (1/T) to the few units the paper's reward-model scores span.
- Lists longer than ``max_list_len`` keep their best l-1 answers and their worst one, so the
  full range of the ranking stays in the contrast.
- Self-bootstrapping follows the paper's footnote 6: a sampled answer never takes the top
  position of the logged best one, and the rewards are re-sorted to stay non-increasing. A
  sample goes before the first logged answer (after the top) that the reward model scores lower.
- Queries with a single logged answer are used only with bootstrapping (the list then has
  the logged answer on top and the samples below it).
- The prompt holds the same behavior sentence for every candidate ('preferred' or 'none'):
  a ranking compares answers to one prompt, so 'record' (each answer's own sentence) is refused.

Under torchrun (``trainer.distributed``) every rank draws the same batch of lists and trains
on its share (``batch_shard``; with bootstrapping it samples for its own lists), its loss and
per-list metrics weighted by its share of the lists, so the averaged gradient and the
rank-averaged metrics are the whole batch's.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from schemas.behavior import BehaviorRecord
from trainer.algorithms.base import RunResult, TrainRequest
from trainer.algorithms.conditioning import behavior_chooser
from trainer.algorithms.runner import check_request, run_iterations, seed_everything
from trainer.algorithms.supervised import AdapterOptimizer, SupervisedConfig, answer_logprobs
from trainer.distributed import BatchShard
from trainer.losses.pro import pro_loss
from trainer.policy import Policy
from trainer.records import RecordsError, as_records
from trainer.reward_models.behavior_classifier import train_behavior_classifier
from trainer.reward_models.settings import ClassifierSettings
from trainer.reward_models.split import query_key
from trainer.rollouts import Prompt

ALGORITHM = "pro"
TEMPERATURES = ("dynamic", "constant")


@dataclass
class RankedList:
    """Answers to one prompt, best first, with non-increasing rewards."""

    prompt: Prompt
    answers: list[str]
    rewards: list[float]
    generated: list[bool] = field(default_factory=list)  # True for self-bootstrapped samples


@dataclass
class Config(SupervisedConfig, ClassifierSettings):
    """PRO: list building, the loss's temperature and SFT weight, optional self-bootstrapping.

    The ``rm_*`` and classifier fields configure the bootstrapping reward model (used only
    when ``bootstrap > 0``)."""

    batch_size: int = 4
    """Ranked lists per optimizer step."""
    max_list_len: int = 4
    """Most candidates per list (logged answers; bootstrapped samples come on top of this)."""
    temperature: str = "dynamic"
    """'dynamic': eq. 9-11 from reward gaps; 'constant': every temperature 1 (eq. 8)."""
    reward_scale: float = 10.0
    """Rewards are multiplied by this before the dynamic temperature (1/T = scaled gap)."""
    sft_weight: float | None = None
    """beta in eq. 7; None: 0.05 * (l - 1)^2 per list, the paper's choice."""
    bootstrap: int = 0
    """Self-bootstrapping: answers sampled from the current policy per list and step (0 = off)."""
    bootstrap_temperature: float = 1.0
    """Sampling temperature of the bootstrapped answers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_behavior == "record":
            raise ValueError(
                "PRO ranks answers to one prompt, so every candidate needs the same behavior sentence: "
                "use prompt_behavior='preferred' or 'none', not 'record'"
            )
        if self.temperature not in TEMPERATURES:
            raise ValueError(f"temperature must be one of {TEMPERATURES}; got {self.temperature!r}")
        if self.batch_size < 1 or self.max_list_len < 2:
            raise ValueError(
                f"batch_size must be >= 1 and max_list_len >= 2; got {self.batch_size}, {self.max_list_len}"
            )
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0; got {self.reward_scale}")
        if self.sft_weight is not None and self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0 or None (0.05 (l-1)^2); got {self.sft_weight}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0 (0 = off); got {self.bootstrap}")
        if not self.bootstrap_temperature > 0:
            raise ValueError(f"bootstrap_temperature must be > 0; got {self.bootstrap_temperature}")
        if self.bootstrap:
            self.classifier_config()  # validate the reward model's fields now


def build_lists(
    records: Sequence[BehaviorRecord], max_list_len: int, behavior: Callable[[BehaviorRecord], str], min_len: int = 2
) -> list[RankedList]:
    """One ranked list per query (queries compared after collapsing case and spaces)."""
    groups: dict[str, list[BehaviorRecord]] = defaultdict(list)
    for r in records:
        if not math.isfinite(r.reward):
            raise RecordsError(f"record {r.impression_id!r} has reward {r.reward}: shaped rewards must be finite")
        groups[query_key(r.query)].append(r)
    lists = []
    for key in sorted(groups):
        group = groups[key]
        by_answer: dict[str, list[float]] = defaultdict(list)
        for r in group:
            by_answer[r.response].append(r.reward)
        ranked = sorted(((sum(v) / len(v), a) for a, v in by_answer.items()), key=lambda x: (-x[0], x[1]))
        if len(ranked) > max_list_len:
            ranked = ranked[: max_list_len - 1] + ranked[-1:]
        if len(ranked) < min_len or (len(ranked) > 1 and ranked[0][0] == ranked[-1][0]):
            continue  # too short, or every answer ties: no ranking to learn
        prompt = Prompt(group[0].query, behavior(group[0]))
        lists.append(RankedList(prompt, [a for _, a in ranked], [s for s, _ in ranked], [False] * len(ranked)))
    return lists


def insert_bootstrapped(
    logged: RankedList, logged_scores: Sequence[float], samples: Sequence[str], sample_scores: Sequence[float]
) -> RankedList:
    """Algorithm 1, lines 7-8, with footnote 6: samples enter the ranking by reward-model score
    but never above the logged best; the list's rewards become the reward-model scores,
    re-sorted to stay non-increasing."""
    answers = list(logged.answers)
    scores = list(logged_scores)
    generated = [False] * len(answers)
    for sample, score in sorted(zip(samples, sample_scores, strict=True), key=lambda x: -x[1]):
        at = next((i for i in range(1, len(answers)) if scores[i] < score), len(answers))
        answers.insert(at, sample)
        scores.insert(at, score)
        generated.insert(at, True)
    return RankedList(logged.prompt, answers, sorted(scores, reverse=True), generated)


class PROTrainer:
    """The LoRA policy, the ranked lists, and (when bootstrapping) the reward model."""

    def __init__(self, request: TrainRequest, config: Config) -> None:
        check_request(request)
        records = as_records(request.records)
        self.request, self.config = request, config
        seed_everything(request.seed, config.threads)
        behavior = behavior_chooser(records, config.prompt_behavior, request.encoding)
        self.lists = build_lists(records, config.max_list_len, behavior, min_len=1 if config.bootstrap else 2)
        if not self.lists:
            raise RecordsError(
                f"PRO needs queries with two or more logged answers whose shaped rewards differ; the {len(records)} "
                f"records hold {len({query_key(r.query) for r in records})} distinct queries and no such list. "
                "Set bootstrap > 0 to add sampled answers ranked by a reward model, or log more answers per query"
            )
        self.reward_model = None
        self.rm_metrics: dict[str, float] = {}
        if config.bootstrap:
            classifier, metrics = train_behavior_classifier(
                records, config.classifier_config(request.model_path), seed=request.seed
            )
            self.reward_model, self.rm_metrics = classifier, {f"rm_{k}": v for k, v in metrics.items()}
        sampling = {"temperature": config.bootstrap_temperature} if config.bootstrap else {}
        parent = Path(request.parent.path) if request.parent is not None else None
        self.policy = Policy.load(
            request.model_path,
            config.policy_config(**sampling),
            adapter_path=parent,
            device=request.device,
            dtype=request.dtype,
        )
        self.optimizer = AdapterOptimizer(self.policy, config)
        self.rng = random.Random(request.seed)
        self._queue: list[int] = []
        self.batch_shard = BatchShard()  # the whole batch; trainer.distributed.prepare_trainer sets this rank's

    def _next_batch(self) -> list[RankedList]:
        size = min(self.config.batch_size, len(self.lists))
        if len(self._queue) < size:
            order = list(range(len(self.lists)))
            self.rng.shuffle(order)
            self._queue = order
        picks, self._queue = self._queue[:size], self._queue[size:]
        return [self.lists[i] for i in picks]

    @torch.no_grad()
    def bootstrap(self, lists: list[RankedList]) -> list[RankedList]:
        """Sample ``config.bootstrap`` answers per list with the current policy, score and insert them."""
        k = self.config.bootstrap
        sampled = self.policy.generate([lst.prompt for lst in lists], k).responses  # grouped by prompt
        queries = [lst.prompt.query for lst in lists for _ in lst.answers] + [
            lst.prompt.query for lst in lists for _ in range(k)
        ]
        answers = [a for lst in lists for a in lst.answers] + sampled
        scores = self.reward_model.score(queries, answers).tolist()
        out, pos = [], 0
        sample_scores = scores[len(answers) - len(sampled) :]
        for j, lst in enumerate(lists):
            logged_scores = scores[pos : pos + len(lst.answers)]
            pos += len(lst.answers)
            mine = slice(j * k, (j + 1) * k)
            out.append(insert_bootstrapped(lst, logged_scores, sampled[mine], sample_scores[mine]))
        return out

    def list_scores(self, lists: Sequence[RankedList]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer log-probs and answer lengths as (B, L), zero-length padding last."""
        width = max(len(lst.answers) for lst in lists)
        prompts = [lst.prompt for lst in lists for _ in lst.answers]
        answers = [a for lst in lists for a in lst.answers]
        flat_logprobs, flat_lengths = answer_logprobs(self.policy, prompts, answers)  # (N,), (N,)
        device = flat_logprobs.device
        seq_logprobs = torch.zeros(len(lists), width, dtype=flat_logprobs.dtype, device=device)  # (B, L)
        seq_lengths = torch.zeros(len(lists), width, dtype=torch.long, device=device)  # (B, L)
        rows = torch.tensor([i for i, lst in enumerate(lists) for _ in lst.answers], device=device)  # (N,)
        cols = torch.tensor([j for lst in lists for j in range(len(lst.answers))], device=device)  # (N,)
        seq_logprobs = seq_logprobs.index_put((rows, cols), flat_logprobs)  # keeps the gradient
        seq_lengths[rows, cols] = flat_lengths.long()
        return seq_logprobs, seq_lengths

    def iteration(self, i: int) -> dict[str, float]:
        cfg = self.config
        lists, real = self.batch_shard.take(self._next_batch())  # this rank's share (all of it alone)
        # N ranks: the loss is a mean over lists, so this rank's mean counts by its share of them
        weight = self.batch_shard.weight(float(len(lists)) if real else 0.0)
        extra: dict[str, float] = {}
        if cfg.bootstrap:
            lists = self.bootstrap(lists)
            positions = [j for lst in lists for j, g in enumerate(lst.generated) if g]
            gen_scores = [r for lst in lists for r, g in zip(lst.rewards, lst.generated, strict=True) if g]
            extra = {
                "bootstrap_score": sum(gen_scores) / len(gen_scores),
                "bootstrap_position": sum(positions) / len(positions),
                **self.rm_metrics,
            }
        seq_logprobs, seq_lengths = self.list_scores(lists)  # (B, L), (B, L)
        rewards = None
        if cfg.temperature == "dynamic":
            width = seq_logprobs.shape[1]
            padded = [lst.rewards + [lst.rewards[-1]] * (width - len(lst.rewards)) for lst in lists]
            rewards = torch.tensor(padded, dtype=seq_logprobs.dtype, device=seq_logprobs.device) * cfg.reward_scale
        loss, stats = pro_loss(seq_logprobs, seq_lengths, rewards, cfg.sft_weight)  # eq. 7
        # means over this rank's lists (rank_accuracy: over those with 2+ answers, which every
        # list has; bootstrap_*: over k samples per list)
        means = {**stats, "list_len": float((seq_lengths > 0).sum(1).float().mean())}
        means.update({k: extra.pop(k) for k in ("bootstrap_score", "bootstrap_position") if k in extra})
        if weight != 1.0:  # N ranks: weighted like the loss, so their rank average is the batch's mean
            loss = loss * weight
            means = {k: v * weight for k, v in means.items()}
        self.batch_shard.check_finite("PRO loss", loss)
        grad_norm = self.optimizer.step(loss, "PRO loss")
        return {
            "iteration": i,
            "loss": loss.item(),
            **means,
            "grad_norm": grad_norm,
            "lists": float(len(self.lists)),
            **extra,
        }

    def save_adapter(self, folder: Path) -> None:
        self.policy.save_adapter(folder)

    def run(self) -> RunResult:
        return run_iterations(self.request, algorithm=ALGORITHM, step=self.iteration, save_adapter=self.save_adapter)


def build(request: TrainRequest, config: Config) -> PROTrainer:
    """The trainer object (``trainer.distributed.build_trainer``)."""
    return PROTrainer(request, config)


def run(request: TrainRequest, config: Config | None = None) -> RunResult:
    """PRO over ranked lists of logged answers (optionally self-bootstrapped); writes one checkpoint."""
    return PROTrainer(request, config or Config()).run()
