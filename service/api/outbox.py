"""Impression logging that never loses an impression and never delays an answer for the broker.

Write-ahead ("transactional outbox") design:

1. ``ImpressionLog.log`` appends the impression to ``Outbox`` -- a sqlite file under
   ``settings.state_dir`` in WAL mode with ``synchronous=FULL`` (every commit is fsync'd) --
   before the answer is returned. That is the durability point: from here on the impression
   survives a crash or a restart of the API.
2. It is then sent to the impressions topic (key = impression id) on a sender thread; the
   broker's acknowledgement (acks=all) deletes the row (in batches, by the flusher).
3. When the broker is unreachable the send fails (or is skipped while the broker is known
   to be down): the row stays. A background flusher retries every ``flush_interval_s``,
   probing with one row first so a dead broker costs one timeout, not one per row, and
   then drains the rest. Rows left by a previous process are sent at start-up.

Bounded: while the broker is away the outbox grows by one row per answer. At
``max_pending`` rows (RLHB_API_OUTBOX_MAX_PENDING) it is full and the API refuses new
answers with 503 + Retry-After (``ImpressionLog.full``, checked before generating) rather
than letting the file and the flusher's backlog grow without limit; answers already being
generated are still logged, so the bound can be passed by at most the requests in flight.
Answering without logging would lose the impressions the training loop learns from.
For the same reason a write the disk refuses (full, failing) refuses that answer with 503
(``OutboxUnwritable``; /readyz names it) and the next answer tries the disk again.

Delivery is at-least-once: a crash between the broker's ack and the row's deletion
re-sends that impression after a restart. Consumers key impressions by impression id, so
a duplicate is harmless.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.impression import Impression

log = logging.getLogger(__name__)


class Outbox:
    """A durable FIFO of (key, value) rows in sqlite; thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "key BLOB NOT NULL, value BLOB NOT NULL, created_at REAL NOT NULL)"
        )
        self._size = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def size(self) -> int:
        """Rows waiting, kept in memory (cheap enough to read on every request)."""
        return self._size

    def append(self, key: bytes, value: bytes) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (key, value, created_at) VALUES (?, ?, ?)", (key, value, time.time())
            )
            self._size += 1
            return int(cur.lastrowid)

    def append_many(self, rows: list[tuple[bytes, bytes]]) -> list[int]:
        """Append ``rows`` in one transaction (one fsync); their ids in order."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                ids = [
                    int(
                        self._db.execute(
                            "INSERT INTO outbox (key, value, created_at) VALUES (?, ?, ?)", (k, v, now)
                        ).lastrowid
                    )
                    for k, v in rows
                ]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._size += len(ids)
            return ids

    def oldest(self, limit: int, exclude: set[int] | frozenset = frozenset()) -> list[tuple[int, bytes, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, value FROM outbox ORDER BY id LIMIT ?", (limit + len(exclude),)
            ).fetchall()
        return [(int(i), bytes(k), bytes(v)) for i, k, v in rows if i not in exclude][:limit]

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")
            self._size -= max(0, cur.rowcount)

    def writable(self, probe_bytes: int = 65536) -> bool:
        """Whether the disk under the outbox takes (and syncs) a small write: after a refused
        write, readiness comes back without waiting for the next answer to try."""
        probe = self.path.with_name(self.path.name + ".probe")
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def count(self) -> int:
        with self._lock:
            self._size = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            return self._size

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OutboxUnwritable(RuntimeError):
    """The outbox cannot take a row (the disk under it is full or failing): the answer whose
    impression this was is refused with a 503 (service.api.app), never served unlogged."""


class ImpressionLog:
    """Outbox first, then the broker; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        topic: str,
        producer_factory: Callable[[], Any],
        producer: Any = None,
        metrics: Any = None,
        flush_interval_s: float = 1.0,
        retry_s: float = 2.0,
        on_producer: Callable[[Any], None] | None = None,
        max_pending: int = 100_000,
    ):
        self.outbox = outbox
        self.topic = topic
        self._factory = producer_factory
        self._producer = producer
        self._on_producer = on_producer
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._acked: list[int] = []
        self._down = False
        self._retry_at = 0.0
        self.last_error = ""
        self.write_error = ""  # the last failed outbox write ("" once a write succeeds again)
        # One sender thread: sends may block (metadata fetch) while the broker is away, and must
        # never do so on the event loop.
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlhb-impressions")
        self._task: asyncio.Task | None = None
        self._to_append: list[tuple[bytes, bytes, asyncio.Future]] = []
        self._appender: asyncio.Task | None = None

    @property
    def broker_ok(self) -> bool:
        return not self._down

    @property
    def full(self) -> bool:
        """The outbox holds ``max_pending`` rows: new answers are refused (see the module docstring)."""
        return self.outbox.size >= self.max_pending

    # ------------------------------------------------------------------ request path
    async def log(self, impression: Impression) -> None:
        """Durably record ``impression`` (returns once fsync'd), then send it in the background.

        Group commit: impressions logged while a commit is running share the next one (one
        fsync), so a batch of answers finishing together is not answered one fsync apart --
        which would stagger the clients' next requests past the batching window."""
        key, value = impression.impression_id.encode(), impression.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._to_append.append((key, value, done))
        if self._appender is None or self._appender.done():
            self._appender = loop.create_task(self._append_pending())
        rowid = await done
        if self._down and time.monotonic() < self._retry_at:
            with self._lock:
                self._inflight.discard(rowid)
            self._count_failure()  # known down: the flusher sends it when the broker is back
            return
        self._sender.submit(self._send, rowid, key, value, True)

    async def _append_pending(self) -> None:
        while self._to_append:
            batch, self._to_append = self._to_append, []
            try:
                rowids = await asyncio.to_thread(self._append_many, [(k, v) for k, v, _ in batch])
            except Exception as e:  # noqa: BLE001 - each waiting request gets the error
                if isinstance(e, sqlite3.Error | OSError):  # e.g. "database or disk is full": a 503, not a 500
                    self.write_error = f"{type(e).__name__}: {e}"
                    log.error("impressions: the outbox %s cannot be written: %s", self.outbox.path, self.write_error)
                    e = OutboxUnwritable(self.write_error)  # noqa: PLW2901
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            self.write_error = ""
            for (*_, done), rowid in zip(batch, rowids, strict=True):
                if not done.done():
                    done.set_result(rowid)

    def _append_many(self, rows: list[tuple[bytes, bytes]]) -> list[int]:
        # Under the lock, so the flusher never picks up a row the request path is about to send.
        with self._lock:
            rowids = self.outbox.append_many(rows)
            self._inflight.update(rowids)
        return rowids

    def _count_failure(self) -> None:
        if self.metrics is not None:
            self.metrics.impression_log_failures.inc()

    # ------------------------------------------------------------------ sending (sender thread)
    def _producer_or_raise(self) -> Any:
        if self._producer is None:
            self._producer = self._factory()
            if self._on_producer is not None:
                self._on_producer(self._producer)
        return self._producer

    def _send(self, rowid: int, key: bytes, value: bytes, first_try: bool) -> Any:
        try:
            fut = self._producer_or_raise().send(self.topic, key=key, value=value)
        except Exception as e:  # noqa: BLE001 - any failure leaves the row for the flusher
            self._failed(rowid, e, first_try)
            return None
        fut.add_callback(lambda _md: self._delivered(rowid))
        fut.add_errback(lambda e: self._failed(rowid, e, first_try))
        return fut

    def _delivered(self, rowid: int) -> None:
        with self._lock:
            self._inflight.discard(rowid)
            self._acked.append(rowid)
        if self._down:
            log.info("impressions: the broker acknowledges writes again")
        self._down = False
        if self.metrics is not None:
            self.metrics.impressions_logged.inc()

    def _failed(self, rowid: int, error: BaseException, first_try: bool) -> None:
        with self._lock:
            self._inflight.discard(rowid)
        if first_try:
            self._count_failure()
        if not self._down:
            log.warning(
                "impressions: broker write failed (%s: %s); keeping them in the outbox %s",
                type(error).__name__,
                error,
                self.outbox.path,
            )
        self.last_error = f"{type(error).__name__}: {error}"
        self._down = True
        self._retry_at = time.monotonic() + self.retry_s

    # ------------------------------------------------------------------ flusher
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="rlhb-outbox-flusher")

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._sender, self.flush_once)
            except Exception:  # noqa: BLE001 - the flusher must outlive any one failure
                log.exception("outbox flush failed")
            await asyncio.sleep(self.flush_interval_s)

    def flush_once(self, batch: int = 500, probe_timeout_s: float = 5.0) -> int:
        """Delete acknowledged rows and (re)send waiting ones; the number of rows still waiting."""
        if self.write_error and self.outbox.writable():
            self.write_error = ""
        with self._lock:
            acked, self._acked = self._acked, []
        self.outbox.delete(acked)
        if not self._down or time.monotonic() >= self._retry_at:
            with self._lock:
                rows = self.outbox.oldest(batch, exclude=set(self._inflight))
                self._inflight.update(r[0] for r in rows)
            if rows and self._down:  # probe with one row: a dead broker costs one timeout, not one per row
                rowid, key, value = rows.pop(0)
                fut = self._send(rowid, key, value, False)
                if fut is not None:
                    with contextlib.suppress(Exception):
                        fut.get(timeout=probe_timeout_s)
                if self._down:
                    with self._lock:
                        self._inflight.difference_update(r[0] for r in rows)
                    rows = []
            for n, (rowid, key, value) in enumerate(rows):
                if self._down:  # the broker went away mid-batch: the rest waits for the next probe
                    with self._lock:
                        self._inflight.difference_update(r[0] for r in rows[n:])
                    break
                self._send(rowid, key, value, False)
        pending = self.outbox.count()
        if self.metrics is not None:
            self.metrics.outbox_pending.set(pending)
        return pending

    async def close(self, timeout_s: float = 3.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await asyncio.get_running_loop().run_in_executor(self._sender, self._close_sync, timeout_s)
        self._sender.shutdown(wait=True)

    def _close_sync(self, timeout_s: float) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                if not self._down:
                    self._producer.flush(timeout=timeout_s)
                self._producer.close(timeout=0 if self._down else timeout_s)
        with self._lock:
            acked, self._acked = self._acked, []
        self.outbox.delete(acked)  # rows never acknowledged stay for the next start
