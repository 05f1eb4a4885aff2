"""Hot-swap: follow the registry's active pointer in Redis, load first, then switch.

Every ``poll_s`` (<= 0.25 s by default) the watcher reads the pointer (core/registry.py
writes it). When it names another version, the watcher first checks that the registry lists
it as published (the registry publishes a version when it promotes it): the pointer is a
plain Redis key, and anyone who can write Redis could otherwise make every instance serve
a candidate that never passed the gate, or a version it rejected. A pointer to an
unpublished version is refused like a failed load (the old version keeps serving, reported
in ``last_error``). Then the watcher validates it (the registry checks
the folder and the weights' sha256), loads it into the backend next to the current one and
only then switches ``current``, which new requests read. Requests already running hold a
pin on the version they started with (``Backend.acquire``) and finish on it; the response
names it. A version that fails to validate or load leaves the old one serving, and is
reported: ``rlhb_adapter_load_failures_total``, an error log line, and ``last_error`` in
/readyz. It is retried every ``retry_s`` while the pointer still names it.

The registry also publishes every pointer move on a Redis channel; a listener thread wakes
the watcher when a message arrives, so every instance swaps at once instead of at its next
poll (the poll stays: pub/sub delivers only to connected listeners, so a message sent while
Redis or this instance was away is lost, and the poll catches up). The admin routes also
call ``poke()`` after moving the pointer.

Preloading: every ``preload_s`` the watcher also loads (never switches to) the newest
registered, non-rejected versions it does not hold yet, while the backend has free adapter
slots. The trainer registers a candidate before its gate decides to promote it, so by the
time the pointer moves the weights are usually in memory and the swap is only the switch.
A preload failure is only logged; it is reported if and when that version is promoted.
A preloaded candidate that the gate then rejects is unloaded at the next preload tick
(unless a request still holds it), so a rejected version never keeps a slot.

A/B trials: the registry's ``serving()`` gives the pointer and the running trial together
(one transaction writes both). While a trial runs the watcher keeps its candidate loaded
and protected next to the active version, and ``pick`` sends each new request to an arm by
a hash of its impression id (``ABTrial.arm_of``: reproducible, and every instance agrees);
the impression records the arm and the trial. The trial serves only once the candidate is
loaded and the active arm is the version the trial names; until then every request goes to
the active version, unlabelled. When the trial ends, the next check stops labelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from schemas.adapters import BASE_VERSION, ABTrial, AdapterStatus, AdapterVersion
from service.api.backends.base import Backend

log = logging.getLogger(__name__)


class AdapterWatcher:
    def __init__(
        self,
        backend: Backend,
        registry: Any,
        metrics: Any = None,
        poll_s: float = 0.25,
        retry_s: float = 5.0,
        preload_s: float = 2.0,
    ):
        self.backend = backend
        self.registry = registry
        self.metrics = metrics
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.preload_s = preload_s
        self._preload_failed: dict[str, float] = {}
        self._next_preload = 0.0
        self.current: AdapterVersion | None = None
        """The version new requests use by default (None: the base model)."""
        self.pointer: str = BASE_VERSION
        """The pointer's value at the last poll."""
        self.last_error: str = ""
        self.swapped_at: float = 0.0
        self.trial: ABTrial | None = None
        """The A/B trial being served (its candidate loaded, its active arm the current version)."""
        self.trial_version: AdapterVersion | None = None
        """The trial's candidate, loaded."""
        self._failed: dict[str, float] = {}  # name -> monotonic time of the next retry
        self._wake = asyncio.Event()
        self._closing = threading.Event()  # stops the pointer listener thread
        self._switching = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def current_name(self) -> str:
        return self.current.name if self.current is not None else BASE_VERSION

    async def start(self) -> None:
        """Serve the active version from the first request on, then follow the pointer."""
        try:
            await self.check()
        except Exception as e:  # noqa: BLE001 - Redis away at start: serve the base, keep polling
            self.last_error = f"cannot read the active pointer: {type(e).__name__}: {e}"
            log.warning("adapter watcher: %s", self.last_error)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="rlhb-adapter-watcher")
        if hasattr(self.registry, "subscribe_pointer"):
            self._closing.clear()
            threading.Thread(target=self._listen, args=(loop,), name="rlhb-pointer-listener", daemon=True).start()

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the watcher on every pointer move the registry publishes (a thread: the
        registry's Redis client is synchronous). Reconnects after an error; ends on close()."""
        while not self._closing.is_set():
            pubsub = None
            try:
                pubsub = self.registry.subscribe_pointer()
                while not self._closing.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        loop.call_soon_threadsafe(self._wake.set)
            except Exception as e:  # noqa: BLE001 - Redis away or loop closed: the poll still works
                if self._closing.is_set() or loop.is_closed():
                    return
                log.debug("pointer listener reconnecting after %s: %s", type(e).__name__, e)
                self._closing.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Check the pointer now (after this process moved it)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.check()
            except Exception as e:  # noqa: BLE001 - Redis away: keep serving, keep polling
                self.last_error = f"cannot read the active pointer: {type(e).__name__}: {e}"
                log.warning("adapter watcher: %s", self.last_error)
            if self.preload_s > 0 and time.monotonic() >= self._next_preload:
                self._next_preload = time.monotonic() + self.preload_s
                try:
                    await self.preload()
                except Exception as e:  # noqa: BLE001 - an optimisation: never let it stop the watcher
                    log.warning("adapter preload skipped: %s: %s", type(e).__name__, e)

    async def preload(self) -> list[str]:
        """Unload versions the gate rejected since (a candidate is preloaded before its gate
        decides), then load the newest registered versions not loaded yet into free slots only;
        the names loaded."""
        versions = await asyncio.to_thread(self.registry.list)
        await self._unload_rejected(versions)
        room = getattr(self.backend, "max_loaded_adapters", 0) - len(self.backend.loaded_adapters())
        if room <= 0:
            return []
        loaded, now = set(self.backend.loaded_adapters()), time.monotonic()
        wanted = [
            v
            for v in reversed(versions)
            if v.status != AdapterStatus.rejected
            and v.name not in loaded
            and now >= self._preload_failed.get(v.name, 0.0)
        ][:room]
        done = []
        for v in wanted:
            try:
                version = await asyncio.to_thread(self.registry.validate, v.name)
                await self.backend.load_adapter(version)
                done.append(v.name)
            except Exception as e:  # noqa: BLE001 - reported if the version is ever promoted
                self._preload_failed[v.name] = time.monotonic() + 60
                log.info("adapter %s not preloaded: %s: %s", v.name, type(e).__name__, e)
        if done:
            log.info("adapters preloaded", extra={"event": "adapters_preloaded", "versions": ",".join(done)})
        return done

    async def _unload_rejected(self, versions: list[AdapterVersion]) -> None:
        loaded = set(self.backend.loaded_adapters())
        for v in versions:
            if v.status == AdapterStatus.rejected and v.name in loaded and v.name != self.current_name:
                if self.trial_version is not None and v.name == self.trial_version.name:
                    continue  # still served until the next check sees the trial end
                if await self.backend.unload_adapter(v):
                    log.info("unloaded rejected adapter", extra={"event": "adapter_unloaded", "version": v.name})

    def pick(self, impression_id: str) -> tuple[AdapterVersion | None, str | None, str | None]:
        """The version a new default request uses: (version, arm, trial). Outside a trial the
        current version with no arm; during one, the arm ``impression_id`` hashes to."""
        trial, candidate = self.trial, self.trial_version
        if trial is None or candidate is None:
            return self.current, None, None
        arm = trial.arm_of(impression_id)
        return (candidate if arm == "candidate" else self.current), arm, trial.candidate

    async def check(self) -> None:
        async with self._switching:
            # A missing pointer (Redis flushed or restarted) is restored from the manifest by
            # the registry, so we keep serving the active version instead of the base.
            if hasattr(self.registry, "serving"):
                name, trial = await asyncio.to_thread(self.registry.serving)
            else:
                name, trial = await asyncio.to_thread(self.registry.pointer), None
            self.pointer = name
            if name != self.current_name and time.monotonic() >= self._failed.get(name, 0.0):
                await self._switch(name)
            elif name == self.current_name:
                self.last_error = ""  # the pointer is back on what we serve: nothing is wrong any more
            await self._follow_trial(trial if trial is not None and trial.active == self.current_name else None)

    async def _follow_trial(self, trial: ABTrial | None) -> None:
        """Serve ``trial`` (load its candidate first) or stop serving the one that ended."""
        if trial == self.trial:
            return
        if trial is None:
            ended = self.trial
            self.trial, self.trial_version = None, None
            self.backend.set_protected(self.current)
            log.info("A/B trial ended", extra={"event": "ab_trial_ended", "candidate": ended.candidate})
            return
        if time.monotonic() < self._failed.get(trial.candidate, 0.0):
            return
        try:
            version = await asyncio.to_thread(self.registry.validate, trial.candidate)
            await self.backend.load_adapter(version)
        except Exception as e:  # noqa: BLE001 - the active version keeps answering every request
            self._failed[trial.candidate] = time.monotonic() + self.retry_s
            self.last_error = f"could not load A/B candidate {trial.candidate!r}: {type(e).__name__}: {e}"
            log.error("A/B candidate not loaded", extra={"event": "ab_load_failed", "target": trial.candidate})
            if self.metrics is not None:
                self.metrics.adapter_load_failures.inc()
            return
        self.backend.set_protected(self.current, version)
        self.trial, self.trial_version = trial, version
        log.info(
            "A/B trial serving",
            extra={
                "event": "ab_trial_started",
                "candidate": trial.candidate,
                "active": trial.active,
                "share": trial.share,
            },
        )

    def _published(self, name: str) -> AdapterVersion:
        """The registry's entry for ``name`` if it lists it as published; else why not (ValueError)."""
        try:
            version = self.registry.get(name)
        except KeyError:
            raise ValueError(f"the registry does not know {name!r}") from None
        if version.status != AdapterStatus.published:
            raise ValueError(
                f"the registry lists {name!r} as {version.status.value}, not published; only promoted "
                "versions are served (POST /admin/promote/{version})"
            )
        return version

    async def _switch(self, name: str) -> None:
        started = time.perf_counter()
        try:
            if name != BASE_VERSION:
                await asyncio.to_thread(self._published, name)
            version = None if name == BASE_VERSION else await asyncio.to_thread(self.registry.validate, name)
            if version is not None:
                await self.backend.load_adapter(version)
        except Exception as e:  # noqa: BLE001 - any failure: keep the old version and report it
            self._failed[name] = time.monotonic() + self.retry_s
            self.last_error = (
                f"could not switch to {name!r}: {type(e).__name__}: {e}; still serving {self.current_name!r}"
            )
            log.error(
                "adapter hot-swap failed",
                extra={"event": "adapter_swap_failed", "target": name, "serving": self.current_name, "error": str(e)},
            )
            if self.metrics is not None:
                self.metrics.adapter_load_failures.inc()
            return
        previous = self.current_name
        self.backend.set_protected(version, self.trial_version if self.trial and self.trial.active == name else None)
        self.current = version  # the switch: requests that start from now on use it
        if self.trial is not None and self.trial.active != name:  # the trial's active arm is gone
            self.trial, self.trial_version = None, None
        self._failed.pop(name, None)
        self.last_error = ""
        self.swapped_at = time.time()
        if self.metrics is not None:
            self.metrics.set_active(name, version.id if version is not None else 0)
            self.metrics.adapter_swaps.inc()
        log.info(
            "adapter hot-swapped",
            extra={
                "event": "adapter_swapped",
                "from": previous,
                "to": name,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
