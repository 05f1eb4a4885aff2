"""Train / held-out split by query, so that no held-out query was seen in training
(answers to one query share most of their words; a split by record would leak them)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def query_key(query: str) -> str:
    """Queries that differ only in case or surrounding spaces are one query."""
    return " ".join(query.split()).lower()


def split_by_query(
    items: Sequence[T], fraction: float, seed: int, query_of: Callable[[T], str] = lambda r: r.query
) -> tuple[list[T], list[T]]:
    """(train, held_out): about ``fraction`` of the distinct queries go to held_out (at least
    one when fraction > 0 and there are two or more queries; never all of them)."""
    queries = sorted({query_key(query_of(x)) for x in items})
    if fraction <= 0 or len(queries) < 2:
        return list(items), []
    rng = random.Random(seed)
    rng.shuffle(queries)
    n_held = min(len(queries) - 1, max(1, math.floor(fraction * len(queries) + 0.5)))
    held = set(queries[:n_held])
    train = [x for x in items if query_key(query_of(x)) not in held]
    held_out = [x for x in items if query_key(query_of(x)) in held]
    return train, held_out
