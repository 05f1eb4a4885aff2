"""Training records: loading exported BehaviorRecords, sampling prompts, behavior and answer swaps.

Swaps: a behavior-swapped triplet (s, a, b') is a fake for the discriminator only if b'
differs from b in an indicator that reflects the answer (likes, dislikes): swaps that
differ only in exposure (views, clicks) cannot be told apart from the text even in
principle (docs/architecture.md). Swapped sentences are taken from the records themselves, so D
is only ever asked about sentences that occur in the logs. No torch here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from core.behavior.encoding import Encoding, infer_encoding, least_preferred_sentence, most_preferred_sentence
from core.errors import validation_message
from schemas.behavior import BehaviorRecord
from trainer.reward_models.split import query_key
from trainer.rollouts import Prompt


class RecordsError(ValueError):
    """The records file or list cannot be used; the message names the file, line and problem."""


# --------------------------------------------------------------------------- loading
def load_records(path: str | Path) -> list[BehaviorRecord]:
    """JSONL of BehaviorRecord, one per line (blank lines skipped); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise RecordsError(f"{path}: no such records file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordsError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            records.append(_validate(data, f"{path}:{number}"))
    if not records:
        raise RecordsError(f"{path}: no records (the file is empty); export BehaviorRecords as JSON lines first")
    return records


def as_records(items: Iterable[BehaviorRecord | Mapping]) -> list[BehaviorRecord]:
    """In-memory records (models or dicts), validated; errors name the item's index."""
    records = [
        item if isinstance(item, BehaviorRecord) else _validate(item, f"record {i}") for i, item in enumerate(items)
    ]
    if not records:
        raise RecordsError("no records to train on")
    return records


def _validate(data: object, where: str) -> BehaviorRecord:
    if not isinstance(data, Mapping):
        raise RecordsError(f"{where}: expected a JSON object (a BehaviorRecord), got {type(data).__name__}")
    try:
        record = BehaviorRecord.model_validate(data)
    except ValidationError as e:
        raise RecordsError(f"{where}: {validation_message(e, default='record')}") from None
    if not record.query.strip() or not record.response.strip():
        raise RecordsError(f"{where}: query and response must not be empty")
    if not record.behavior_text.strip():
        raise RecordsError(f"{where}: behavior_text is empty; records must carry their behavior sentence")
    return record


# --------------------------------------------------------------------------- behaviors
class BehaviorPool:
    """The distinct behavior sentences of a record set, their levels on the preference keys
    (likes, dislikes: ``Encoding.preference``) and the encoding's served sentences.

    ``encoding``: the deployment's encoding (the trainer loads the one the aggregator
    stored); None infers it from the records (``infer_encoding``, for offline files). The
    most and least preferred sentences come from ``core.behavior.encoding`` -- the same
    function the API serves with -- not from a ranking of whatever happens to be logged."""

    def __init__(self, records: Sequence[BehaviorRecord], encoding: Encoding | None = None) -> None:
        self.encoding = encoding or infer_encoding(records)
        keys = [k for k in self.encoding.keys() if self.encoding.preference(k)] or list(self.encoding.keys())
        self.by_text: dict[str, tuple[tuple[str, int], ...]] = {}
        for r in records:
            own = [k for k in keys if k in r.buckets] or sorted(r.buckets)
            self.by_text.setdefault(r.behavior_text, tuple((k, int(r.buckets[k])) for k in own))
        self.texts = sorted(self.by_text)

    @classmethod
    def from_signatures(cls, by_text: Mapping[str, Sequence[tuple[str, int]]], encoding: Encoding) -> BehaviorPool:
        """The pool of a run rebuilt from its sentences and their levels (``trainer.heldout_pairs`` keeps
        them), without the records: the same swap candidates, opposites and served sentences."""
        pool = cls.__new__(cls)
        pool.encoding = encoding
        pool.by_text = {t: tuple((k, int(v)) for k, v in sig) for t, sig in by_text.items()}
        pool.texts = sorted(pool.by_text)
        return pool

    def swap_candidates(self, behavior: str) -> list[str]:
        """Sentences differing from ``behavior`` in at least one preference level."""
        sig = self.by_text.get(behavior)
        return [t for t in self.texts if t != behavior and (sig is None or self.by_text[t] != sig)]

    def swap(self, behavior: str, rng: random.Random) -> str | None:
        candidates = self.swap_candidates(behavior)
        return rng.choice(candidates) if candidates else None

    def opposite(self, behavior: str) -> str | None:
        """The logged sentence farthest from ``behavior`` in preference: the mirror when it
        exists (high likes <-> low likes, low dislikes <-> high dislikes)."""
        candidates = self.swap_candidates(behavior)
        if not candidates:
            return None
        sig = dict(self.by_text.get(behavior, ()))

        def distance(text: str) -> tuple[int, str]:
            other = dict(self.by_text[text])
            return (sum(abs(other.get(k, 0) - v) for k, v in sig.items()), text)

        return max(candidates, key=distance)

    def preference_score(self, behavior: str) -> int:
        """How far up the preference order ``behavior`` is: the sum of its levels on positive
        keys (likes) minus those on negative keys (dislikes); 0 for a sentence not in the records."""
        return sum(level if self.encoding.positive(k) else -level for k, level in self.by_text.get(behavior, ()))

    def opposite_below(self, behavior: str) -> str | None:
        """``opposite(behavior)`` when that mirror is less preferred than ``behavior``, else None:
        the behavior contrast on the preferred side only (``RLHBConfig.steer_contrast_records``)."""
        mirror = self.opposite(behavior) if behavior in self.by_text else None  # unknown: no level to compare
        if mirror is None or self.preference_score(mirror) >= self.preference_score(behavior):
            return None
        return mirror

    def contrast_mirror(self, contrast_records: str) -> Callable[[str], str | None]:
        """The steering contrast's mirror for ``RLHBConfig.steer_contrast_records``: "preferred" ->
        ``opposite_below``, "all" -> ``opposite``."""
        return self.opposite_below if contrast_records == "preferred" else self.opposite

    def most_preferred(self) -> str:
        """The served sentence: top level on positive keys, bottom on negative ones."""
        return most_preferred_sentence(self.encoding)

    def least_preferred(self) -> str:
        return least_preferred_sentence(self.encoding)


def check_swappable(records: Sequence[BehaviorRecord], encoding: Encoding | None = None) -> BehaviorPool:
    """The pool, or a clear error when no record can be behavior-swapped."""
    pool = BehaviorPool(records, encoding)
    if len({pool.by_text[t] for t in pool.texts}) < 2:
        raise RecordsError(
            "every record has the same like/dislike levels, so no behavior-swapped fake exists and the "
            "discriminator cannot learn; train on records with varied feedback"
        )
    return pool


def indices_by_query(records: Sequence[BehaviorRecord]) -> dict[str, list[int]]:
    """Record indices grouped by question (``query_key``: case and spacing do not make a new question)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(query_key(r.query), []).append(i)
    return groups


def answer_swap_siblings(records: Sequence[BehaviorRecord], pool: BehaviorPool) -> list[list[int]]:
    """For each record i, the indices of the other records answering the same question (``query_key``) under a
    sentence that differs from record i's in preference: the answers an answer swap (s, a', b) may take
    (``RLHBConfig.d_answer_swap_share``). Empty where the question was asked once, or only under equal levels."""
    groups = indices_by_query(records)
    level = [pool.by_text.get(r.behavior_text) for r in records]
    return [[j for j in groups[query_key(r.query)] if j != i and level[j] != level[i]] for i, r in enumerate(records)]


# --------------------------------------------------------------------------- sampling
def sample_prompts(records: Sequence[BehaviorRecord], n: int, rng: random.Random) -> list[Prompt]:
    """n (query, behavior) prompts from distinct records when there are enough."""
    picks = rng.sample(range(len(records)), n) if n <= len(records) else [rng.randrange(len(records)) for _ in range(n)]
    return [Prompt(records[i].query, records[i].behavior_text) for i in picks]


def split_heldout(
    records: Sequence[BehaviorRecord], fraction: float, cap: int, seed: int
) -> tuple[list[BehaviorRecord], list[BehaviorRecord]]:
    """(train, heldout) by query: whole queries (seeded) go to the held-out side until it
    holds about ``fraction`` of the records (at most ``cap``), so no held-out query was seen
    in D's training (answers to one query share most of their words: a split by record
    leaks them and makes D's held-out accuracy, and its at-chance alarm, read too high)."""
    groups = indices_by_query(records)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = min(cap, max(1, int(round(len(records) * fraction))))
    held: list[int] = []
    for key in keys[:-1]:  # never every query
        if len(held) >= target:
            break
        if len(held) + len(groups[key]) > cap:
            continue
        held.extend(groups[key])
    if not held and len(keys) > 1:  # every query has more than `cap` answers: hold out the smallest one
        held = list(min((groups[k] for k in keys), key=len))
    if not held or len(records) - len(held) < 2:
        raise RecordsError(
            f"{len(records)} records over {len(groups)} queries are too few to hold out whole queries: need at "
            "least 2 queries and 2 training records"
        )
    held_set = set(held)
    return [r for i, r in enumerate(records) if i not in held_set], [records[i] for i in sorted(held)]
