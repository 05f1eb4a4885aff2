"""The feedback route's Kafka producer, built when first needed and rebuilt after failures.

Built once at start-up, a producer that could not be made (the broker was down then) stayed
None for the life of the process: feedback answered 503 forever while /readyz said ready.
``LazyProducer.get()`` builds it on demand instead, at most once per backoff period
(``min_backoff_s`` doubling to ``max_backoff_s`` after each failed build, back to the
minimum after a success), and a cheap TCP probe first, so a closed port costs a refused
connection instead of the Kafka client's bootstrap timeout. ``broken()`` drops a producer
that failed to deliver so the next call builds a fresh one (kafka-python producers do not
always recover after the broker restarts).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """No producer now; the message says why and when the next attempt is."""


class LazyProducer:
    def __init__(
        self,
        bootstrap: str,
        factory: Callable[[str], Any],
        producer: Any = None,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        probe: Callable[[str], bool] | None = None,
    ):
        self.bootstrap = bootstrap
        self._factory = factory
        self._producer = producer
        self._probe = probe
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self._backoff = min_backoff_s
        self._next_try = 0.0
        self._lock = threading.Lock()
        self.last_error = ""

    @property
    def ready(self) -> bool:
        """A producer exists (it may still fail to deliver; /readyz also probes the broker)."""
        return self._producer is not None

    def get(self) -> Any:
        """The producer, built now if there is none and the backoff allows; BrokerUnavailable otherwise."""
        producer = self._producer
        if producer is not None:
            return producer
        with self._lock:  # one build at a time; the others wait for it and share the result
            if self._producer is not None:
                return self._producer
            now = time.monotonic()
            if now < self._next_try:
                raise BrokerUnavailable(
                    f"the broker was unreachable ({self.last_error}); next connection attempt in "
                    f"{self._next_try - now:.1f}s"
                )
            try:
                if self._probe is not None and not self._probe(self.bootstrap):
                    raise ConnectionError(f"nothing accepts connections at {self.bootstrap}")
                self._producer = self._factory(self.bootstrap)
            except Exception as e:  # noqa: BLE001 - any failure: back off and say so
                self.last_error = f"{type(e).__name__}: {e}"
                self._next_try = now + self._backoff
                self._backoff = min(self._backoff * 2, self.max_backoff_s)
                log.warning("feedback producer not built (%s); retrying within %.1fs", self.last_error, self._backoff)
                raise BrokerUnavailable(f"the broker is unreachable ({self.last_error})") from None
            self._backoff, self.last_error = self.min_backoff_s, ""
            log.info("feedback producer connected", extra={"event": "producer_ready", "bootstrap": self.bootstrap})
            return self._producer

    def connect_soon(self) -> None:
        """Try to build the producer in the background (for /readyz, which must not block on it)."""
        if self._producer is None and not self._lock.locked() and time.monotonic() >= self._next_try:
            threading.Thread(target=self._try_get, name="rlhb-producer-connect", daemon=True).start()

    def _try_get(self) -> None:
        with contextlib.suppress(BrokerUnavailable):
            self.get()

    def broken(self, producer: Any) -> None:
        """``producer`` failed to deliver: drop it so the next ``get`` builds a fresh one."""
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
            self._next_try = time.monotonic() + self._backoff
        with contextlib.suppress(Exception):
            producer.close(timeout=0)

    def close(self, timeout_s: float = 2.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.flush(timeout_s)
            with contextlib.suppress(Exception):
                producer.close(timeout_s)
