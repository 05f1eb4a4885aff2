"""Keep a few long-running processes alive: what `rlhb up` runs (API, aggregator, trainer).

The policy, and why:

- A process that exits while the supervisor did not ask it to is restarted after a backoff
  that doubles with each consecutive quick failure (``initial_backoff_s``, 2x, 4x ... up to
  ``max_backoff_s``): a crash loop must not eat the machine's cores. A run that lasted
  ``stable_s`` resets the backoff (it was a crash, not a loop).
- At most ``max_restarts`` restarts in any ``window_s`` seconds. Beyond that the process is
  broken, not unlucky: the supervisor gives up on it, logs it at ERROR, and keeps the others
  serving (the API keeps answering without a trainer; feedback waits in Kafka).
- Exit status 2 is this project's "configuration error" (core.errors): restarting cannot fix
  it, so the supervisor gives up at once and says so.
- Each child runs in its own session (process group): Ctrl-C in the terminal reaches only
  the supervisor, which then stops the children itself (no restart racing the shutdown), and
  a signal to the group also reaches whatever a child started.
- Stop (SIGINT, SIGTERM, SIGHUP): SIGTERM to every child's group, wait ``grace_s``, SIGKILL
  what is left, reap everything. No orphans.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("rlhb.supervisor")

CONFIG_ERROR_EXIT = 2
"""Exit status of a configuration error (core.errors.fail): never restarted."""


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 60.0
    stable_s: float = 30.0

    def backoff(self, failures: int) -> float:
        """Wait before restart number ``failures`` (1-based) of a run of quick failures."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, failures - 1))


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick exits (sets the backoff)
    restarts: deque = field(default_factory=deque)  # times of restarts inside the window
    restart_at: float | None = None  # a restart is due at this time
    gave_up: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Start ``commands`` (name -> argv), restart them per ``policy``, stop them on request.

    ``run()`` is the blocking loop of `rlhb up`; tests drive ``start()``/``tick()``/``stop()``.
    """

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy = RestartPolicy(),
        grace_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        popen_kwargs: Mapping | None = None,
    ):
        self.children = {name: Child(name, list(argv)) for name, argv in commands.items()}
        self.env = dict(env) if env is not None else None
        self.policy, self.grace_s, self.clock = policy, grace_s, clock
        self.popen_kwargs = dict(popen_kwargs or {})
        self.stopping = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for child in self.children.values():
            self._spawn(child)
            log.info("started %s (pid %d)", child.name, child.proc.pid)

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, start_new_session=True, **self.popen_kwargs)
        child.started_at, child.restart_at = self.clock(), None

    def tick(self) -> None:
        """Notice exits, schedule restarts, perform the ones that are due."""
        now = self.clock()
        for child in self.children.values():
            if self.stopping or child.gave_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts.append(now)
                    self._spawn(child)
                    log.warning("restarted %s (pid %d): restart %d of %d allowed per %gs",
                                child.name, child.proc.pid, len(child.restarts), self.policy.max_restarts,
                                self.policy.window_s)  # fmt: skip
                continue
            code = child.proc.poll() if child.proc is not None else None
            if code is not None:
                self._on_exit(child, code, now)

    def _on_exit(self, child: Child, code: int, now: float) -> None:
        _signal_group(child.proc.pid, signal.SIGKILL)  # whatever the dead child started must not linger
        ran_s = now - child.started_at
        while child.restarts and now - child.restarts[0] > self.policy.window_s:
            child.restarts.popleft()
        child.failures = 1 if ran_s >= self.policy.stable_s else child.failures + 1
        why = describe_exit(code)
        if code == CONFIG_ERROR_EXIT:
            self._give_up(child, f"{why} (a configuration error: restarting cannot fix it)")
        elif len(child.restarts) >= self.policy.max_restarts:
            self._give_up(child, f"{why}, {len(child.restarts)} restarts in the last {self.policy.window_s:g}s")
        else:
            delay = self.policy.backoff(child.failures)
            child.restart_at = now + delay
            log.warning("%s (pid %d) exited unexpectedly: %s after %.1fs; restarting in %.1fs",
                        child.name, child.proc.pid, why, ran_s, delay)  # fmt: skip

    def _give_up(self, child: Child, why: str) -> None:
        child.gave_up = True
        serving = [c.name for c in self.children.values() if not c.gave_up]
        log.error("=" * 72)
        log.error("GAVE UP on %s: %s. Still serving: %s. Fix the cause (its log above) and restart.",
                  child.name, why, ", ".join(serving) or "nothing")  # fmt: skip
        log.error("=" * 72)

    @property
    def all_gave_up(self) -> bool:
        return all(c.gave_up for c in self.children.values())

    def stop(self) -> None:
        """SIGTERM every child's group, wait up to ``grace_s``, SIGKILL the rest; reap all."""
        self.stopping = True
        running = [c for c in self.children.values() if c.pid is not None]
        for child in running:
            log.info("stopping %s (pid %d)", child.name, child.proc.pid)
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in running:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %gs: SIGKILL", child.name, child.proc.pid, self.grace_s)
        for child in self.children.values():
            if child.proc is not None:
                _signal_group(child.proc.pid, signal.SIGKILL)  # stragglers and their descendants
                child.proc.wait()
        log.info("all processes stopped")

    def run(self, poll_s: float = 0.2) -> int:
        """Start, supervise until SIGINT/SIGTERM/SIGHUP (0) or until every child gave up (1)."""
        stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._request_stop) for s in stop_signals}
        try:
            self.start()
            while not self.stopping and not self.all_gave_up:
                self.tick()
                time.sleep(poll_s)
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 1 if self.all_gave_up else 0

    def _request_stop(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("%s: stopping every process", signal.Signals(signum).name)
        self.stopping = True


def _signal_group(pgid: int, sig: int) -> None:
    # The group id is the child's pid (start_new_session). Linux keeps a pid number reserved
    # while any process of that group lives, so this reaches the child's leftovers, not a
    # stranger; an empty group is simply not found.
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
