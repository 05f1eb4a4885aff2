"""Bounded replay buffer of behavior records: the latest record per impression, sampled
with a preference for recent ones.

The aggregator republishes an impression's record every time new reactions arrive, so the
same impression shows up many times on ``behavior-records``; only its latest record (the
most complete counts) is kept, and an update moves it to the "newest" end. When the buffer
is full the record updated longest ago is dropped.

Sampling weight of a record ``age`` positions from the newest end: ``0.5 ** (age / half_life)``
(``half_life = 0`` gives uniform sampling). Sampling is without replacement, by
Efraimidis-Spirakis keys ``u ** (1 / w)``, so a round never trains on one record twice.
Thread-safe: the consumer thread adds while the training thread samples.
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable

from schemas.behavior import BehaviorRecord


class ReplayBuffer:
    def __init__(self, capacity: int, half_life: float = 0.0):
        """``capacity``: most impressions kept. ``half_life``: recency half-life in records
        (0: uniform sampling)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        if half_life < 0:
            raise ValueError(f"half_life must be >= 0 (0 = uniform); got {half_life}")
        self.capacity = capacity
        self.half_life = half_life
        self._records: OrderedDict[str, BehaviorRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.added = 0
        """Records offered to ``add`` in total (updates included)."""

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: BehaviorRecord) -> None:
        """Insert or replace the impression's record; an older record (by ``updated_at``)
        never replaces a newer one, so replays and out-of-order partitions are harmless."""
        with self._lock:
            self.added += 1
            key = record.impression_id
            old = self._records.get(key)
            if old is not None and old.updated_at > record.updated_at:
                return
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def remove_if(self, predicate: Callable[[BehaviorRecord], bool]) -> int:
        """Drop every kept record for which ``predicate`` holds (a data rollback); returns how many."""
        with self._lock:
            gone = [k for k, r in self._records.items() if predicate(r)]
            for k in gone:
                del self._records[k]
        return len(gone)

    def records(self) -> list[BehaviorRecord]:
        """All kept records, oldest update first."""
        with self._lock:
            return list(self._records.values())

    def weights(self) -> list[float]:
        """Sampling weight of each record, in ``records()`` order."""
        n = len(self._records)
        if self.half_life <= 0:
            return [1.0] * n
        return [0.5 ** ((n - 1 - i) / self.half_life) for i in range(n)]

    def sample(
        self,
        k: int,
        rng: random.Random | None = None,
        fresh_since: float | None = None,
        replay_share: float | None = None,
    ) -> list[BehaviorRecord]:
        """Up to ``k`` distinct records, recency-weighted, oldest update first.

        With ``replay_share`` and ``fresh_since`` set, the draw is split (continual rounds): records updated after
        ``fresh_since`` (the data the active version has not learned from) first, up to ``k * (1 - replay_share)``
        of them, then older records, recency-weighted, as ``replay_share`` of the sample (fewer if the buffer has
        fewer). Why: a plain recency-weighted draw of ``k`` from a buffer not much larger than ``k`` takes nearly
        everything, so a round after a change of taste trained on two old records for each new one (E50). When no
        record is fresh the whole buffer is drawn from as usual (an operator asked for a round on what there is)."""
        rng = rng or random.Random()
        with self._lock:
            items = list(self._records.values())
            weights = self.weights()
        everything = range(len(items))
        if replay_share is None or fresh_since is None:
            return [items[i] for i in sorted(_draw(everything, weights, k, rng))]
        if not 0 <= replay_share < 1:
            raise ValueError(f"replay_share must be in [0, 1); got {replay_share}")
        fresh = [i for i in everything if items[i].updated_at > fresh_since]
        if not fresh:
            return [items[i] for i in sorted(_draw(everything, weights, k, rng))]
        older = [i for i in everything if items[i].updated_at <= fresh_since]
        picked = _draw(fresh, weights, max(1, math.floor(k * (1 - replay_share))), rng)
        n_old = min(k - len(picked), round(len(picked) * replay_share / (1 - replay_share)))
        picked += _draw(older, weights, n_old, rng)
        return [items[i] for i in sorted(picked)]


def _draw(indices, weights: list[float], k: int, rng: random.Random) -> list[int]:
    """``k`` of ``indices`` without replacement, each with its ``weights[i]`` (Efraimidis-Spirakis)."""
    indices = list(indices)
    if k >= len(indices):
        return indices
    if k <= 0:
        return []
    # log(u) / w is a monotone transform of u ** (1 / w): same order, no underflow.
    keys = {i: math.log(rng.random() or 1e-300) / weights[i] for i in indices}
    return sorted(indices, key=keys.__getitem__, reverse=True)[:k]
