"""Data rollback: a version users turned down takes the records it learned from out of training.

Rolling back a version restores the old adapter, but not the old data: the records that
taught the bad version stay in the replay buffer, and the next round, started from the
restored parent, would learn the same thing again (bench/demo_experiments.md E15: a round
trained on inverted feedback). So each round writes down its *data window*: the records'
``updated_at`` span it learned beyond its parent, ``(parent's until, until]`` where ``until``
is the newest update among the round's sampled records (0 for a round from the base model).
When the live guardrail rolls a version back, or rejects an A/B candidate, because users
liked it significantly less, that window is quarantined (``RLHB_TRAINER_QUARANTINE_REJECTED_DATA``):
records updated inside it leave the buffer and the trainer's record file, and records read
later (a replay of the topic, a restart) that fall inside it are kept out too.

A time window rather than a list of impressions because what goes wrong is the feedback of a
period (a bot wave, a broken client sending inverted reactions), and every record updated in
that period carries it. What it cannot undo: an impression reacted to both inside and after
the window comes back with its later record, whose counts include the quarantined events.
A candidate rejected only by the behavior guard (terse or degenerate answers) keeps its data:
that is the algorithm gaming the reward, not the users' feedback.

The file (``RLHB_STATE_DIR/data-windows.json``) is the trainer's own, written atomically; the
trainer's status (``/admin/status``) lists the quarantined windows. An operator's rollback
(``rlhb rollback``) does not quarantine: it says nothing about why the version was bad.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from core.registry import atomic_write_json
from schemas.behavior import BehaviorRecord

log = logging.getLogger(__name__)

FILE_NAME = "data-windows.json"


class DataWindows:
    """Each version's data window and the quarantined ones, kept in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # the round thread records windows while the main thread quarantines
        self.windows: dict[str, dict[str, float]] = {}  # version -> {"since": t0, "until": t1}
        self.quarantined: list[dict] = []  # {"version", "since", "until", "reason", "at"}, oldest first
        try:
            data = json.loads(self.path.read_text())
            windows = data["windows"].items()
            self.windows = {k: {"since": float(v["since"]), "until": float(v["until"])} for k, v in windows}
            self.quarantined = list(data["quarantined"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:  # a hand-edited file: say so, do not guess
            raise ValueError(f"{self.path} is not a data-windows file ({e}); fix or remove it") from e

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"windows": self.windows, "quarantined": self.quarantined})

    def record_round(self, version: str, parent: str | None, records: Iterable[BehaviorRecord]) -> dict[str, float]:
        """Note the window ``version`` learned from (beyond ``parent``) and return it."""
        until = max((r.updated_at for r in records), default=0.0)
        with self._lock:
            since = self.windows.get(parent, {}).get("until", 0.0) if parent else 0.0
            self.windows[version] = {"since": since, "until": max(since, until)}
            self._save()
            return dict(self.windows[version])

    def until(self, version: str) -> float | None:
        """The newest record update ``version`` learned from (None: no window recorded, e.g. base)."""
        with self._lock:
            window = self.windows.get(version)
            return window["until"] if window else None

    def quarantine(self, version: str, reason: str) -> dict | None:
        """Quarantine ``version``'s window (None if it has none, or it is quarantined already)."""
        with self._lock:
            window = self.windows.get(version)
            if window is None or any(q["version"] == version for q in self.quarantined):
                return None
            entry = {"version": version, **window, "reason": reason, "at": time.time()}
            self.quarantined = [*self.quarantined, entry]  # a new list: readers iterate the old one safely
            self._save()
        log.warning(
            "data rollback: records updated in (%.0f, %.0f] (what %s learned) are out of training: %s",
            window["since"],
            window["until"],
            version,
            reason,
        )
        return entry

    def is_quarantined(self, record: BehaviorRecord) -> bool:
        return any(q["since"] < record.updated_at <= q["until"] for q in self.quarantined)
