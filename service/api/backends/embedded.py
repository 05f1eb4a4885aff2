"""The embedded backend: transformers + peft in this process, with iteration-level batching.

One worker thread owns the model, so the event loop never blocks on torch. Requests are
batched continuously (service/api/backends/decode_batch.py): the worker runs one decode
step at a time for every running row; between steps, requests that arrived are prefilled
together (rows sharing the system prompt reuse its cached keys/values) and join the batch,
and rows that finished answer at once and leave it. A request that arrives while others
generate waits one step, not a whole batch, and a short answer never waits for a long one.
When nothing runs, the first requests are collected while they keep arriving (no gap
longer than ``batch_window_ms``, at most 4 windows) so a burst prefills together.

Several adapter versions live on one ``PeftModel`` at once (``load_adapter``); the running
batch may mix them and the base model, through peft's mixed-batch inference
(``adapter_names``, ``"__base__"`` for the base rows): after a hot-swap, rows started on the
old version finish on it while new rows decode beside them on the new one. A step whose
rows share one version takes the cheaper ordinary path (``set_adapter``, or
``disable_adapter`` for the base). Adapters are keyed by the version's unique int id
(``v<id>``), never by name, and loads/evictions run on the worker thread between steps,
so the model never changes under a running forward.
A request pins its version (``acquire``) until it completes: eviction (LRU, beyond
``max_loaded_adapters``) skips pinned versions and the active one.

Per row: its own ``max_new_tokens``, temperature and top_p (greedy and sampled rows share
a batch), its own stream of text deltas, and its own cancellation (a client that leaves
frees its row at the next step).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.adapters import AdapterVersion
from service.api.backends.base import (
    AdapterLoadError,
    Backend,
    BackendError,
    Cancellation,
    GenerationRequest,
    GenerationResult,
)
from service.api.backends.decode_batch import DecodeBatch, sample_rows

log = logging.getLogger(__name__)

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed batch
MIXED_ROWS = "__mixed__"  # adapter mode of a step whose rows use different versions
PREFIX_CACHE_ENTRIES = 32  # (version, prefix) pairs kept; one SmolLM2 system prompt is ~2 MB
PREFIX_TOKEN_ENTRIES = 256  # tokenized prefixes kept: one per distinct behavior sentence, so clients
# choose how many there are (any `behavior` string); least recently used ones are dropped


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancel: Cancellation
    deltas: asyncio.Queue | None  # streaming jobs only
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self) -> str:
        # Jobs prefilled together share the system prompt, so its cached keys/values serve them all.
        return self.request.prefix


@dataclass
class _Row:
    """A job in the running batch."""

    job: _Job
    name: str  # peft adapter name of its version (BASE_ROW for the base model)
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)  # generated so far (no end-of-sequence)
    sent: str = ""  # text already streamed


@dataclass
class _Control:
    fn: Callable[[], Any]
    future: concurrent.futures.Future


@dataclass
class _Loaded:
    version: AdapterVersion
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)


def _notify(job: _Job, fn: Callable, *args: Any) -> None:
    """Run ``fn(*args)`` on the job's event loop. A loop that is gone (its caller left, the server
    is shutting down) has no one to tell: never let that kill the worker thread."""
    try:
        job.loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # event loop is closed
        pass


def _resolve(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class EmbeddedBackend(Backend):
    kind = "embedded"

    def __init__(
        self,
        model_path: str | Path,
        *,
        batch_window_ms: float = 15.0,
        max_batch_size: int = 8,
        max_loaded_adapters: int = 4,
        torch_threads: int = 0,
        on_batch: Callable[[int], None] | None = None,
        prefix_cache: bool = True,
        device: str = "auto",
        dtype: str = "auto",
    ):
        self.model_path = Path(model_path)
        # RLHB_DEVICE / RLHB_DTYPE (core/device.py), resolved when the model loads: auto is CUDA
        # in bfloat16 where there is one, else the CPU in float32 (the same rule as the trainer).
        self.device_setting, self.dtype_setting = device, dtype
        self.device: Any = None
        self.model_id = self.model_path.name
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.max_loaded_adapters = max_loaded_adapters
        self.torch_threads = torch_threads
        self.on_batch = on_batch
        self.prefix_cache = prefix_cache
        self.prefix_hits = 0
        self._prefix_tokens: dict[str, list[int]] = {}
        self._prefix_kvs: dict[tuple[str, str], list] = {}  # (adapter name, prefix) -> per-layer (k, v)
        self._model: Any = None
        self._peft: Any = None  # PeftModel wrapping _model once the first adapter is loaded
        self._mode: str | None = None  # adapter state the model is in (_adapter_mode); None: unknown
        self._adapters: dict[int, _Loaded] = {}
        self._protected: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._eos: set[int] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._load_model)
        self._thread = threading.Thread(target=self._worker, name="rlhb-generate", daemon=True)
        self._thread.start()

    def _load_model(self) -> None:
        from core.device import dtype_name, resolve_device
        from core.model_loading import load_causal_lm

        if not (self.model_path / "config.json").exists():
            raise BackendError(f"no model at {self.model_path} (config.json missing); set RLHB_MODEL_PATH")
        try:
            device, dtype = resolve_device(self.device_setting, self.dtype_setting)
        except ValueError as e:  # a device this machine lacks: say which setting to change
            raise BackendError(str(e)) from e
        # Left padding: decoder-only batching, prompts end where generation starts. Everything
        # is loaded from local folders: never wait on (or call) a model hub.
        model, tok = load_causal_lm(
            self.model_path, dtype=dtype, device=device, padding_side="left", local_files_only=True
        )
        self.device = device
        log.info("embedded backend on %s in %s", device, dtype_name(dtype))
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._eos = {int(e) for e in [*eos, tok.eos_token_id] if e is not None}
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.tokenizer, self._model = tok, model
        log.info("embedded backend loaded %s (max context %d)", self.model_path, self.max_context)

    async def close(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    @property
    def ready(self) -> bool:
        return self._model is not None and self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ adapters
    def _adapter_name(self, version: AdapterVersion | None) -> str:
        return BASE_ROW if version is None else f"v{version.id}"

    def loaded_adapters(self) -> list[str]:
        with self._lock:
            return [a.version.name for a in self._adapters.values()]

    def set_protected(self, version: AdapterVersion | None, *also: AdapterVersion | None) -> None:
        self._protected = frozenset(v.id for v in (version, *also) if v is not None)

    def acquire(self, version: AdapterVersion | None) -> bool:
        if version is None:
            return True
        with self._lock:
            loaded = self._adapters.get(version.id)
            if loaded is None:
                return False
            loaded.refs += 1
            loaded.last_used = time.monotonic()
            return True

    def release(self, version: AdapterVersion | None) -> None:
        if version is None:
            return
        with self._lock:
            loaded = self._adapters.get(version.id)
            if loaded is not None and loaded.refs > 0:
                loaded.refs -= 1

    async def load_adapter(self, version: AdapterVersion) -> None:
        with self._lock:
            if version.id in self._adapters:
                return
        if not self.ready:
            raise BackendError("the model is not loaded yet")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(_Control(lambda: self._load_adapter_sync(version), fut))
        await asyncio.wrap_future(fut)

    def _load_adapter_sync(self, version: AdapterVersion) -> None:
        from peft import PeftModel

        if version.id in self._adapters:
            return
        path = Path(version.path)
        if not (path / "adapter_config.json").is_file():
            raise AdapterLoadError(f"adapter {version.name!r}: no adapter_config.json in {path}")
        name = self._adapter_name(version)
        started = time.perf_counter()
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._model, path, adapter_name=name, is_trainable=False)
                self._peft.eval()
            else:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        except Exception as e:
            self._mode = None
            if self._peft is not None and name in getattr(self._peft, "peft_config", {}):
                try:
                    self._peft.delete_adapter(name)
                except Exception:  # noqa: BLE001 - best effort cleanup of a half-loaded adapter
                    log.exception("could not remove half-loaded adapter %s", name)
            raise AdapterLoadError(f"adapter {version.name!r} from {path} failed to load: {e}") from e
        self._mode = None  # peft may have changed the active adapter: set the mode again at the next step
        with self._lock:
            self._adapters[version.id] = _Loaded(version)
        log.info(
            "loaded adapter %s (id %d) in %.0f ms", version.name, version.id, (time.perf_counter() - started) * 1000
        )
        self._evict(keep=version.id)
        self._warm_prefixes(name)

    def _warm_prefixes(self, name: str, most: int = 2) -> None:
        """Compute the new version's keys/values of the most recently used shared prefixes now (a
        load happens before the switch), so its first requests after a hot-swap skip that work."""
        if not self.prefix_cache:
            return
        recent: list[str] = []
        for _, prefix in reversed(self._prefix_kvs):
            if prefix not in recent:
                recent.append(prefix)
        for prefix in recent[:most]:
            try:
                self._prefix_kv(prefix, self._prefix_ids(prefix), name)
            except Exception:  # noqa: BLE001 - an optimisation; the request path computes it anyway
                log.exception("could not precompute a prefix for %s", name)

    def _evict(self, keep: int) -> None:
        """Drop least recently used adapters beyond the limit (worker thread). Never a pinned one, the
        active one or ``keep`` (the one just loaded): the limit is soft while those exceed it."""
        with self._lock:
            spare = len(self._adapters) - self.max_loaded_adapters
            if spare <= 0:
                return
            idle = sorted(
                (
                    a
                    for a in self._adapters.values()
                    if a.refs == 0 and a.version.id not in self._protected and a.version.id != keep
                ),
                key=lambda a: a.last_used,
            )
            victims = idle[:spare]
            for a in victims:
                del self._adapters[a.version.id]
        for a in victims:
            self._delete_adapter(a.version)
            log.info("evicted adapter %s (id %d)", a.version.name, a.version.id)

    def _delete_adapter(self, version: AdapterVersion) -> None:
        """Free one adapter's weights and cached prefixes (worker thread; already out of ``_adapters``)."""
        gone = self._adapter_name(version)
        self._peft.delete_adapter(gone)
        self._mode = None  # peft picks another active adapter when the active one is deleted
        for key in [k for k in self._prefix_kvs if k[0] == gone]:
            del self._prefix_kvs[key]

    async def unload_adapter(self, version: AdapterVersion) -> bool:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(_Control(lambda: self._unload_adapter_sync(version), fut))
        return await asyncio.wrap_future(fut)

    def _unload_adapter_sync(self, version: AdapterVersion) -> bool:
        with self._lock:
            loaded = self._adapters.get(version.id)
            if loaded is None:
                return True
            if loaded.refs > 0 or version.id in self._protected:
                return False  # a request still runs on it, or it is active: keep it
            del self._adapters[version.id]
        self._delete_adapter(version)
        log.info("unloaded adapter %s (id %d)", version.name, version.id)
        return True

    # ------------------------------------------------------------------ requests
    def _submit(self, request: GenerationRequest, cancel: Cancellation | None, stream: bool) -> _Job:
        if not self.ready:
            raise BackendError("the model is not loaded yet")
        if request.adapter is not None:
            with self._lock:
                if request.adapter.id not in self._adapters:
                    raise BackendError(f"adapter {request.adapter.name!r} is not loaded")
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, loop.create_future(), cancel or Cancellation(), asyncio.Queue() if stream else None)
        self._inbox.put(job)
        return job

    async def generate(self, request: GenerationRequest, cancel: Cancellation | None = None) -> GenerationResult:
        job = self._submit(request, cancel, stream=False)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancel.cancelled = True  # the client left: stop spending compute on this row
            raise

    async def stream(
        self, request: GenerationRequest, cancel: Cancellation | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        job = self._submit(request, cancel, stream=True)
        finished = False
        try:
            while True:
                item = await job.deltas.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, GenerationResult):
                    finished = True
                    return
        finally:
            if not finished:
                job.cancel.cancelled = True

    # ------------------------------------------------------------------ worker thread
    def _worker(self) -> None:
        try:
            self._run()
        except BaseException:
            # A bug here must not leave callers waiting forever on a dead thread: log it; ``ready``
            # turns false (the thread is gone), so /readyz reports it and new requests are refused.
            log.exception("the generation worker stopped")
            self._stopping = True
            raise

    def _run(self) -> None:
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)  # per thread (OpenMP): only generation is affected
        pending: deque[_Job] = deque()
        running: DecodeBatch | None = None
        rows: list[_Row] = []  # parallel to running's rows
        try:
            while not self._stopping:
                idle = running is None and not pending
                if not self._take(pending, timeout=None if idle else 0.0):
                    break
                if pending and running is None:
                    self._collect(pending)
                room = self.max_batch_size - len(rows)
                if pending and room > 0:
                    group = self._pick(pending, room)
                    if group:
                        running, rows = self._admit(running, rows, group)
                if running is not None:
                    running, rows = self._step(running, rows)
        finally:  # shutting down, or a bug stopped the loop: nobody may wait forever
            error = BackendError("the server is shutting down" if self._stopping else "the generation worker failed")
            for job in pending:
                self._fail(job, error)
            for row in rows:
                self._fail(row.job, error)

    def _collect(self, pending: deque[_Job]) -> None:
        """Nothing is running: wait for more requests while they keep coming, so they prefill together.

        Until the batch is full, or no request arrived for one window, or the oldest has waited 4
        windows. Clients whose answers came back together return a few ms apart each; a fixed
        window would split them. While a batch runs, arrivals join it at the next step instead."""
        hard_deadline = pending[0].enqueued + 4 * self.batch_window_s
        while len(pending) < self.max_batch_size:
            deadline = min(pending[-1].enqueued + self.batch_window_s, hard_deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._take(pending, timeout=remaining):
                break

    def _take(self, pending: deque[_Job], timeout: float | None) -> bool:
        """Move inbox items into ``pending`` (running control items at once). False on shutdown."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout != 0.0 else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is None:
                return False
            if isinstance(item, _Control):
                if item.future.set_running_or_notify_cancel():  # False: the caller gave up waiting
                    try:
                        item.future.set_result(item.fn())
                    except BaseException as e:  # noqa: BLE001 - reported to the caller
                        item.future.set_exception(e)
            else:
                pending.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _pick(self, pending: deque[_Job], room: int) -> list[_Job]:
        """Up to ``room`` live jobs sharing the oldest job's prefix (one prefill with the cached
        prefix); the rest stay queued for the next step."""
        key = pending[0].batch_key
        batch, rest = [], deque()
        while pending:
            job = pending.popleft()
            if job.cancel.cancelled or job.future.done():
                self._drop(job)
            elif job.batch_key == key and len(batch) < room:
                batch.append(job)
            else:
                rest.append(job)
        pending.extend(rest)
        return batch

    def _drop(self, job: _Job) -> None:
        """A job whose client left before it ran."""
        if job.deltas is not None:
            _notify(job, job.deltas.put_nowait, BackendError("request cancelled"))
        _notify(job, job.future.cancel)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job.deltas is not None:
            _notify(job, job.deltas.put_nowait, error)
        _notify(job, _resolve, job.future, None, error)

    def _admit(
        self, running: DecodeBatch | None, rows: list[_Row], jobs: list[_Job]
    ) -> tuple[DecodeBatch | None, list[_Row]]:
        """Prefill ``jobs`` together, sample their first tokens and add them to the running batch."""
        import torch

        names = [self._adapter_name(j.request.adapter) for j in jobs]
        try:
            enc, prompt_tokens = self._inputs(jobs, names)
            past = enc.get("past_key_values")
            done = past.get_seq_length() if past is not None else 0  # prompt tokens already cached
            mask = enc["attention_mask"]  # (b, T)
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate derives them
            model, kwargs = self._adapter_mode(names)
            with torch.inference_mode():
                out = model(
                    input_ids=enc["input_ids"][:, done:],
                    attention_mask=mask,
                    position_ids=positions[:, done:],
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                    **kwargs,
                )
                new_rows = [_Row(j, n, p) for j, n, p in zip(jobs, names, prompt_tokens, strict=True)]
                first = self._sample(out.logits[:, -1, :], new_rows)
                joined = DecodeBatch.from_prefill(out.past_key_values, mask, first)
        except Exception as e:  # noqa: BLE001 - a failed prefill fails its requests, not the batch
            log.exception("prefill failed for %d requests", len(jobs))
            for job in jobs:
                self._fail(job, BackendError(f"generation failed: {type(e).__name__}: {e}"))
            return running, rows
        if self.on_batch is not None:
            self.on_batch(len(rows) + len(new_rows))
        joined, new_rows = self._settle(joined, new_rows, first.tolist())  # a 1-token answer is done now
        if joined is None:
            return running, rows
        return DecodeBatch.concat(running, joined), rows + new_rows

    def _step(self, running: DecodeBatch, rows: list[_Row]) -> tuple[DecodeBatch | None, list[_Row]]:
        """One decode step for every running row, then drop the rows that finished."""
        import torch

        live = [i for i, r in enumerate(rows) if not r.job.cancel.cancelled]
        if len(live) < len(rows):  # clients that left: stop spending compute on their rows
            for r in rows:
                if r.job.cancel.cancelled:
                    self._finish(r, "cancelled")
            running, rows = running.select(live), [rows[i] for i in live]
            if running is None:
                return None, []
        try:
            model, kwargs = self._adapter_mode([r.name for r in rows])
            with torch.inference_mode():
                out = model(**running.step_inputs(), **kwargs)
                tokens = self._sample(out.logits[:, -1, :], rows)
        except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the worker
            log.exception("decode step failed for a batch of %d", len(rows))
            for r in rows:
                self._fail(r.job, BackendError(f"generation failed: {type(e).__name__}: {e}"))
            return None, []
        return self._settle(running.advanced(out.past_key_values, tokens), rows, tokens.tolist())

    def _sample(self, logits, rows: list[_Row]):
        import torch

        reqs = [r.job.request for r in rows]
        on = logits.device  # the sampling settings go where the logits are (the GPU, when serving there)
        return sample_rows(
            logits.float(),  # sort and softmax in float32: bfloat16 logits would coarsen top-p
            torch.tensor([q.temperature for q in reqs], dtype=torch.float32, device=on),
            torch.tensor([q.top_p for q in reqs], dtype=torch.float32, device=on),
            torch.tensor([q.greedy for q in reqs], device=on),
        )

    def _settle(
        self, running: DecodeBatch, rows: list[_Row], tokens: list[int]
    ) -> tuple[DecodeBatch | None, list[_Row]]:
        """Give each row its new token; finished rows answer their callers and leave the batch."""
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            finish = self._push(row, token)
            if finish is None:
                keep.append(i)
            else:
                self._finish(row, finish)
        if len(keep) == len(rows):
            return running, rows
        return running.select(keep), [rows[i] for i in keep]

    def _push(self, row: _Row, token: int) -> str | None:
        """Append ``token`` to the row (streaming its text); the finish reason once the row is done."""
        if row.job.cancel.cancelled:
            return "cancelled"
        if token in self._eos:
            return "stop"
        row.tokens.append(token)
        if row.job.deltas is not None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                self._emit(row, text)
        return "length" if len(row.tokens) >= row.job.request.max_new_tokens else None

    def _emit(self, row: _Row, text: str) -> None:
        if text.startswith(row.sent) and len(text) > len(row.sent):
            delta, row.sent = text[len(row.sent) :], text
            _notify(row.job, row.job.deltas.put_nowait, delta)

    def _finish(self, row: _Row, reason: str) -> None:
        job = row.job
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        result = GenerationResult(
            text=text,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.tokens),
            finish_reason=reason,
            adapter_version=job.request.version_name,
        )
        if job.deltas is not None:
            self._emit(row, text)  # whatever the final text holds beyond what was streamed
            _notify(job, job.deltas.put_nowait, result)
        _notify(job, _resolve, job.future, result, None)

    def _adapter_mode(self, names: list[str]) -> tuple[Any, dict[str, Any]]:
        """(model, forward kwargs) running rows ``names`` on their own versions.

        peft's mixed-batch path costs ~10% per token on CPU: only steps that mix versions use
        it. A step of one version sets that adapter; a step of base rows disables the adapter
        layers. That state is kept between steps and changed only when the mode changes:
        switching costs a walk over every module (peft's ``disable_adapter()`` context took
        ~20% of a decode step when entered per step).

        Base rows run on the wrapped model itself (its LoRA layers disabled pass straight through),
        not through the PeftModel: once the last adapter is unloaded (a rejected first candidate)
        peft still names the deleted adapter as active, and its forward raises KeyError on it."""
        if self._peft is None:
            return self._model, {}
        unique = set(names)
        mode = names[0] if len(unique) == 1 else MIXED_ROWS
        if mode != self._mode:
            tuner = self._peft.base_model
            if mode == BASE_ROW:
                tuner.disable_adapter_layers()
            else:
                if self._mode in (BASE_ROW, None):
                    tuner.enable_adapter_layers()
                if mode != MIXED_ROWS:
                    self._peft.set_adapter(mode)
            self._mode = mode
        if mode == BASE_ROW:
            return self._model, {}
        return self._peft, ({"adapter_names": list(names)} if mode == MIXED_ROWS else {})

    def _inputs(self, jobs: list[_Job], names: list[str]) -> tuple[dict[str, Any], list[int]]:
        """Model inputs for the batch and each row's prompt length in tokens.

        Plain: prompts left-padded. With a shared prefix (the system prompt: chat template +
        behavior sentence, the same for most requests) whose tokens start every prompt, the
        prefix's keys/values come from ``_prefix_kv`` (computed once per version) and the
        batch is laid out ``[prefix][padding][rest of the prompt]``: the attention mask hides
        the padding and position ids follow the mask, so the model sees the same sequences
        and only the short rest is computed (greedy texts unchanged; tested)."""
        import torch

        tok = self.tokenizer
        prefix = jobs[0].request.prefix
        full = [tok(j.request.prompt, add_special_tokens=False)["input_ids"] for j in jobs]
        if self.prefix_cache and prefix and all(j.request.prefix == prefix for j in jobs):
            pids = self._prefix_ids(prefix)
            if all(len(f) > len(pids) and f[: len(pids)] == pids for f in full):
                rests = [f[len(pids) :] for f in full]
                width = max(len(r) for r in rests)
                pad = tok.pad_token_id
                ids = torch.tensor([pids + [pad] * (width - len(r)) + r for r in rests])  # (B, P + W)
                mask = torch.tensor([[1] * len(pids) + [0] * (width - len(r)) + [1] * len(r) for r in rests])
                per_row = [self._prefix_kv(prefix, pids, name) for name in names]  # per layer (1, H, P, D)
                from transformers import DynamicCache

                cache = DynamicCache()
                for layer in range(len(per_row[0])):
                    cache.update(
                        torch.cat([kv[layer][0] for kv in per_row]),  # (B, H, P, D)
                        torch.cat([kv[layer][1] for kv in per_row]),
                        layer,
                    )
                self.prefix_hits += 1
                inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
                return {**inputs, "past_key_values": cache}, [len(f) for f in full]
        enc = tok([j.request.prompt for j in jobs], return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}, [len(f) for f in full]

    def cached_prefixes(self) -> list[tuple[str, str]]:
        """(peft adapter name, prefix) pairs whose keys/values are cached, least recently used first."""
        return list(self._prefix_kvs)

    def _prefix_ids(self, prefix: str) -> list[int]:
        ids = self._prefix_tokens.pop(prefix, None)
        if ids is None:
            ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self._prefix_tokens[prefix] = ids  # most recently used last (an LRU, like _prefix_kvs)
        while len(self._prefix_tokens) > PREFIX_TOKEN_ENTRIES:
            self._prefix_tokens.pop(next(iter(self._prefix_tokens)))
        return ids

    def _prefix_kv(self, prefix: str, pids: list[int], name: str) -> list:
        """Keys/values of ``prefix`` under version ``name``, cached. Keyed by the version's
        immutable int id (``v<id>``), so an entry can never belong to another version."""
        import torch

        key = (name, prefix)
        kv = self._prefix_kvs.pop(key, None)
        if kv is None:
            model, kwargs = self._adapter_mode([name])
            with torch.inference_mode():
                out = model(input_ids=torch.tensor([pids], device=self.device), use_cache=True, **kwargs)
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._prefix_kvs[key] = kv  # most recently used last
        while len(self._prefix_kvs) > PREFIX_CACHE_ENTRIES:
            self._prefix_kvs.pop(next(iter(self._prefix_kvs)))
        return kv
