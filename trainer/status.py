"""What the trainer is doing, for people: Prometheus gauges on ``RLHB_TRAINER_METRICS_PORT``, a
status in Redis every ``RLHB_TRAINER_STATUS_PERIOD_S`` (``core.process_status``; read by
``GET /admin/status`` and the dashboard) and each round's training curve in Redis.

The numbers come from the round's metrics JSONL (``trainer.algorithms.runner`` writes one line
per iteration): the consumer thread tails that file, so the algorithms need no hook and the
round thread is never slowed by Redis. Phases: idle -> warmup (models loading, D warm-up, no
iteration finished yet) -> training -> gating -> publishing -> idle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.process_status import publish_status, push_curve_points, serve_metrics, stop_reporting

log = logging.getLogger(__name__)

PHASES = ("idle", "warmup", "training", "gating", "publishing")
FAILED_OUTCOMES = ("error", "diverged")


def curve_point(row: dict[str, Any]) -> dict[str, Any]:
    """The four curves of the dashboard from one metrics row. Reward: the discriminator's
    reward for RLHB (what the policy is trained on), the mean return for the other PPO runs."""
    reward = row.get("d_reward", row.get("mean_return", row.get("loss")))
    return {
        "i": row.get("iteration"),
        "reward": reward,
        "kl": row.get("kl"),
        "d_acc": row.get("d_heldout_acc"),
        "clipfrac": row.get("clipfrac"),
        "seconds": row.get("seconds"),
    }


class TrainerStatus:
    def __init__(self, redis, prefix: str, period_s: float, metrics_port: int = 0):
        self.redis, self.prefix, self.period_s, self.metrics_port = redis, prefix, period_s, metrics_port
        self._lock = threading.Lock()  # the round thread sets the phase, the consumer thread reads it
        self.phase = "idle"
        self.round_no = 0
        self.steps = 0
        self.step = 0
        self.iteration_s: float | None = None
        self.d_acc: float | None = None
        self.last_error = ""
        self.round_started = 0.0
        self.round_reason = ""
        self._iteration_total_s = 0.0
        self._path: Path | None = None
        self._read_at = 0
        self._last_publish = 0.0
        self._server = None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.g_phase = Gauge("rlhb_trainer_phase", "1 for the trainer's current phase.", ["phase"], registry=r)
        self.g_round = Gauge("rlhb_trainer_round", "Number of the current (or last) round.", registry=r)
        self.g_step = Gauge("rlhb_trainer_step", "Iterations finished in the current round.", registry=r)
        self.g_steps = Gauge("rlhb_trainer_round_steps", "Iterations the current round will run.", registry=r)
        self.g_iter = Gauge("rlhb_trainer_iteration_seconds", "Seconds of the last training iteration.", registry=r)
        self.g_eta = Gauge("rlhb_trainer_eta_seconds", "Estimated seconds left in the round's training.", registry=r)
        self.g_dacc = Gauge("rlhb_trainer_d_accuracy", "Discriminator held-out pairwise accuracy.", registry=r)
        self.c_rounds = Counter("rlhb_trainer_rounds", "Finished rounds by outcome.", ["outcome"], registry=r)
        self._set_gauges()

    # ------------------------------------------------------------------ lifecycle
    def serve(self) -> None:
        self._server = serve_metrics(self.metrics_port, self.registry, "trainer", log)

    def close(self) -> None:
        stop_reporting(self.redis, self.prefix, "trainer", self._server, log)
        self._server = None

    # ------------------------------------------------------------------ round events
    def begin_round(self, round_no: int, steps: int, reason: str) -> None:
        with self._lock:
            self.phase, self.round_no, self.steps, self.step = "warmup", round_no, steps, 0
            self.round_started, self.round_reason = time.time(), reason
            self.iteration_s, self._iteration_total_s, self._path, self._read_at = None, 0.0, None, 0

    def watch(self, metrics_path: Path) -> None:
        """The round's metrics file (called from the round thread once the name is known)."""
        with self._lock:
            self._path, self._read_at = Path(metrics_path), 0

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown trainer phase {phase!r}; one of {PHASES}")
        with self._lock:
            self.phase = phase

    def end_round(self, result: dict[str, Any]) -> None:
        self.poll_curve()  # the last iterations, written after the previous look
        outcome = str(result.get("outcome", "error"))
        with self._lock:
            self.phase = "idle"
            if outcome in FAILED_OUTCOMES:
                self.last_error = f"round {result.get('round')}: {outcome}: {result.get('reason', '')}"[:500]
        self.c_rounds.labels(outcome).inc()

    def note_error(self, message: str) -> None:
        with self._lock:
            self.last_error = message[:500]

    # ------------------------------------------------------------------ curve
    def poll_curve(self) -> int:
        """Read the iterations written since the last look; push them to the round's curve."""
        with self._lock:
            path, start, round_no = self._path, self._read_at, self.round_no
        if path is None or not path.exists():
            return 0
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0  # only a half-written line so far
        rows = []
        for line in chunk[: end + 1].splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        points = [curve_point(r) for r in rows]
        push_curve_points(self.redis, self.prefix, round_no, points)
        with self._lock:
            self._read_at = start + end + 1
            for row in rows:
                self.step = max(self.step, int(row.get("iteration", self.step - 1)) + 1)
                if isinstance(row.get("seconds"), int | float):
                    self.iteration_s = float(row["seconds"])
                    self._iteration_total_s += self.iteration_s
                if isinstance(row.get("d_heldout_acc"), int | float):
                    self.d_acc = float(row["d_heldout_acc"])
            if rows and self.phase == "warmup":
                self.phase = "training"
        return len(points)

    # ------------------------------------------------------------------ status
    def eta_s(self) -> float | None:
        if self.phase != "training" or self.step <= 0:
            return None
        return max(0, self.steps - self.step) * self._iteration_total_s / self.step

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase,
                "round": self.round_no,
                "round_reason": self.round_reason,
                "round_started_at": self.round_started or None,
                "step": self.step,
                "steps": self.steps,
                "eta_s": self.eta_s(),
                "iteration_s": self.iteration_s,
                "d_acc": self.d_acc,
                "last_error": self.last_error,
            }

    def _set_gauges(self) -> None:
        for phase in PHASES:
            self.g_phase.labels(phase).set(1.0 if phase == self.phase else 0.0)
        self.g_round.set(self.round_no)
        self.g_step.set(self.step)
        self.g_steps.set(self.steps)
        self.g_iter.set(self.iteration_s or 0.0)
        self.g_eta.set(self.eta_s() or 0.0)
        self.g_dacc.set(self.d_acc if self.d_acc is not None else float("nan"))

    def publish(self, base: Callable[[], dict[str, Any]], force: bool = False) -> bool:
        """Every period (or now with ``force``): the curve, the gauges, the Redis status
        (``base()``, the loop's own status, plus the phase). Best effort: never raises."""
        if not force and time.monotonic() - self._last_publish < self.period_s:
            return False
        self._last_publish = time.monotonic()
        try:
            self.poll_curve()
            self._set_gauges()
            publish_status(self.redis, self.prefix, "trainer", {**base(), **self.snapshot()}, self.period_s)
            return True
        except Exception as e:  # noqa: BLE001 - Redis away: the loop goes on; the status reads as down
            log.debug("trainer status not published: %s", e)
            return False
