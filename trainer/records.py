"""Training records: loading exported BehaviorRecords, sampling prompts, behavior swaps.

Swaps: a behavior-swapped triplet (s, a, b') is a fake for the discriminator only if b'
differs from b in an indicator that reflects the answer (likes, dislikes): swaps that
differ only in exposure (views, clicks) cannot be told apart from the text even in
principle (ARCHITECTURE.md). Swapped sentences are taken from the records themselves, so D
is only ever asked about sentences that occur in the logs. No torch here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from core.errors import validation_message
from schemas.behavior import BehaviorRecord
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
def preference_keys(record: BehaviorRecord) -> tuple[str, ...]:
    """Bucket keys that reflect the answer: the encoding's preference indicators when the
    record names a known encoding, else any key mentioning like/dislike."""
    keys = tuple(sorted(record.buckets))
    if record.encoding:
        try:
            from core.behavior.encoding import make_encoding

            enc = make_encoding(record.encoding)
            known = tuple(k for k in keys if k in enc.keys() and enc.preference(k))
            if known:
                return known
        except (ImportError, ValueError, KeyError):
            pass
    return tuple(k for k in keys if "like" in k)  # "like", "dislike", "like_rate", "dislike_rate"


def signature(record: BehaviorRecord) -> tuple[tuple[str, int], ...]:
    """The record's levels on the preference keys (all keys if it has none)."""
    keys = preference_keys(record) or tuple(sorted(record.buckets))
    return tuple((k, int(record.buckets[k])) for k in keys)


def _score(sig: tuple[tuple[str, int], ...]) -> int:
    """Higher = more preferred: likes count up, dislikes down."""
    return sum(-level if "dislike" in key else level for key, level in sig)


class BehaviorPool:
    """The distinct behavior sentences of a record set and their preference levels."""

    def __init__(self, records: Sequence[BehaviorRecord]) -> None:
        self.by_text: dict[str, tuple[tuple[str, int], ...]] = {}
        for r in records:
            self.by_text.setdefault(r.behavior_text, signature(r))
        self.texts = sorted(self.by_text)

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

    def most_preferred(self) -> str:
        """The logged sentence with the most likes and fewest dislikes."""
        return max(self.texts, key=lambda t: (_score(self.by_text[t]), t))

    def least_preferred(self) -> str:
        return min(self.texts, key=lambda t: (_score(self.by_text[t]), t))


def check_swappable(records: Sequence[BehaviorRecord]) -> BehaviorPool:
    """The pool, or a clear error when no record can be behavior-swapped."""
    pool = BehaviorPool(records)
    if len({pool.by_text[t] for t in pool.texts}) < 2:
        raise RecordsError(
            "every record has the same like/dislike levels, so no behavior-swapped fake exists and the "
            "discriminator cannot learn; train on records with varied feedback"
        )
    return pool


# --------------------------------------------------------------------------- sampling
def sample_prompts(records: Sequence[BehaviorRecord], n: int, rng: random.Random) -> list[Prompt]:
    """n (query, behavior) prompts from distinct records when there are enough."""
    picks = rng.sample(range(len(records)), n) if n <= len(records) else [rng.randrange(len(records)) for _ in range(n)]
    return [Prompt(records[i].query, records[i].behavior_text) for i in picks]


def split_heldout(
    records: Sequence[BehaviorRecord], fraction: float, cap: int, seed: int
) -> tuple[list[BehaviorRecord], list[BehaviorRecord]]:
    """(train, heldout): a seeded random share of records kept away from D's training."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = min(cap, max(1, int(round(len(records) * fraction))))
    if len(records) - n_held < 2:
        raise RecordsError(f"{len(records)} records are too few: need at least {n_held + 2} (training + held-out)")
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [records[i] for i in train], [records[i] for i in held]
