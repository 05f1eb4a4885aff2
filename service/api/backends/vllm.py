"""The vLLM backend: the same interface as the embedded one, generation by vLLM.

``vllm`` is imported only inside this module's methods (it is an optional extra, and it
cannot run on CPU-only machines). Two modes:

- **in-process** (no URL set): an ``AsyncLLMEngine`` with ``enable_lora=True`` in this process.
- **remote replicas** (``RLHB_API_VLLM_URLS=http://vllm-0:8000,http://vllm-1:8000``, or the
  single ``RLHB_API_VLLM_BASE_URL``): vLLM OpenAI-compatible servers started with
  ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. Adapters are registered with
  ``POST /v1/load_lora_adapter {lora_name, lora_path}``, removed with
  ``POST /v1/unload_lora_adapter {lora_name}`` and selected with ``model=<lora_name>`` on
  ``/v1/completions``.

Replicas. A version is loaded into EVERY replica (concurrently) before ``load_adapter``
returns, and only then may the hot-swap watcher move traffic to it (service/api/hot_swap.py
switches after ``load_adapter`` returns and keeps the old version when it raises). If any
replica refuses or cannot be reached, the replicas that did load it are told to unload it
again and ``AdapterLoadError`` names the failing replicas: every replica then serves the same
set of versions (a request is never sent to a replica that lacks its adapter), nothing holds
a slot for a version that is not served, and the watcher retries later under a fresh name.
Requests are spread over the replicas round-robin.

Names are never reused. Each load gets a served name ``<version>.<process nonce>.<load
counter>`` and, in-process, a fresh ``lora_int_id`` from the same counter. vLLM keys its
LoRA slots and its prefix cache by the adapter; a version unloaded and loaded again (a
rollback to it, a failed load retried) under the old name or int id could be answered from
stale cache entries (vllm#42125, vllm#30931). The vLLM server itself gives every
``load_lora_adapter`` a new int id, so in remote mode the name is what we must not reuse.
The process nonce keeps several API instances that share the same replicas from colliding
(vLLM refuses a second load of a loaded name with 400): each instance loads and unloads its
own names. Size ``--max-loras`` (and ``--max-cpu-loras``) for API instances x
``RLHB_API_MAX_LOADED_ADAPTERS``.

Retirement. A version that was served (the active one, or an A/B trial's candidate: what
``set_protected`` names) and no longer is, is unloaded from every replica as soon as no
request holds it (``acquire``/``release``), so retired versions never keep vLLM's LoRA slots.
Rejected versions are unloaded by the watcher (``unload_adapter``); other loaded versions
(preloaded candidates, versions an admin named) are evicted oldest first when
``RLHB_API_MAX_LOADED_ADAPTERS`` would be exceeded. An unload that fails is logged and
forgotten: the name is never used again, so a leftover costs memory only.

Prompts arrive rendered: the routes render them with core.prompts.render_prompt
(service/api/answer.py), using this backend's ``tokenizer`` (loaded from ``RLHB_MODEL_PATH``),
and they are sent as plain text, so vLLM applies no template.

Running it on a GPU machine (docker-compose.yml's ``vllm`` profile does this)::

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/base \\
        --enable-lora --max-lora-rank 16 --max-loras 4
    RLHB_API_BACKEND=vllm RLHB_API_VLLM_URLS=http://gpu-0:8000,http://gpu-1:8000 \\
        RLHB_MODEL_PATH=/models/base rlhb api

The adapter folders (``RLHB_ADAPTER_DIR``) must be readable by every vLLM replica at the same
paths (a shared volume). The tests are contract tests against a fake engine and fake servers
that speak vLLM's documented endpoints (tests/service/api/test_vllm_contract.py,
tests/helpers/fake_vllm.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
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

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- request mapping (pure)
def sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments. temperature 0 is vLLM's greedy decoding."""
    return {
        "max_tokens": request.max_new_tokens,
        "temperature": 0.0 if request.greedy else request.temperature,
        "top_p": 1.0 if request.greedy else request.top_p,
        "skip_special_tokens": True,
    }


def served_name(version: AdapterVersion, nonce: str, load: int) -> str:
    """The name one load of ``version`` is registered under in vLLM: unique per load, never reused."""
    return f"{version.name}.{nonce}.{load}"


def lora_request_args(version: AdapterVersion, name: str, int_id: int) -> dict[str, Any]:
    """``vllm.lora.request.LoRARequest`` arguments of one load: a fresh (name, int id), the version's path."""
    return {"lora_name": name, "lora_int_id": int_id, "lora_path": version.path}


def completion_payload(request: GenerationRequest, model: str, stream: bool) -> dict[str, Any]:
    """Body of ``POST /v1/completions`` on a vLLM OpenAI server; ``model`` is the base model's
    name or the served name of the adapter's load."""
    return {
        "model": model,
        "prompt": request.prompt,
        **{k: v for k, v in sampling_kwargs(request).items() if k != "skip_special_tokens"},
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def load_lora_payload(version: AdapterVersion, name: str) -> dict[str, str]:
    """Body of ``POST /v1/load_lora_adapter`` (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
    return {"lora_name": name, "lora_path": version.path}


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


@dataclass
class _Load:
    """One load of a version: registered under ``name`` (and ``int_id`` in-process) until unloaded."""

    version: AdapterVersion
    name: str
    int_id: int
    pins: int = 0
    served: bool = False
    """It has been the active version or a trial candidate (``set_protected``): retire it when it stops."""
    retired: bool = False
    """No longer served but still pinned: unloaded by the last ``release``."""


# --------------------------------------------------------------------------- backend
class VllmBackend(Backend):
    kind = "vllm"

    def __init__(self, settings: Any, *, http_transport: Any = None):
        """``http_transport``: an httpx transport for the remote mode (tests may pass a mock)."""
        self.settings = settings
        self.urls: list[str] = settings.vllm_replica_urls()
        self.remote_url = self.urls[0] if self.urls else ""
        self.max_loaded_adapters = settings.max_loaded_adapters
        self._transport = http_transport
        self._engine: Any = None
        self._replicas: list[Any] = []  # one httpx.AsyncClient per URL
        self._next_replica = itertools.count()
        self._nonce = uuid.uuid4().hex[:8]
        self._loads = itertools.count(1)  # served-name suffix and in-process lora_int_id: never repeats
        self._loaded: dict[str, _Load] = {}  # version name -> its current load, oldest first
        self._protected: set[str] = set()
        self._load_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self._ready = False
        self.base_model = settings.vllm_model_name

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        from transformers import AutoTokenizer

        model_path = self.settings.resolved_model_path()
        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        self.model_id = model_path.rstrip("/").rsplit("/", 1)[-1]
        if self.urls:
            import httpx

            self._replicas = [
                httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300, connect=10), transport=self._transport)
                for url in self.urls
            ]
            served = []
            for url, client in zip(self.urls, self._replicas, strict=True):
                try:
                    served.append((await client.get("/v1/models")).raise_for_status().json()["data"])
                except Exception as e:  # noqa: BLE001 - reported through /readyz
                    raise BackendError(f"the vLLM replica at {url} does not answer /v1/models: {e}") from e
            self.base_model = self.base_model or served[0][0]["id"]
            for url, models in zip(self.urls, served, strict=True):
                if self.base_model not in {m["id"] for m in models}:
                    raise BackendError(
                        f"the vLLM replica at {url} does not serve {self.base_model!r} (it serves "
                        f"{[m['id'] for m in models]}); every replica in RLHB_API_VLLM_URLS must serve the same model"
                    )
            self.max_context = int(served[0][0].get("max_model_len") or self.max_context)
        else:
            try:
                from vllm import AsyncEngineArgs, AsyncLLMEngine
            except ImportError as e:
                raise BackendError("RLHB_API_BACKEND=vllm needs vLLM: pip install 'rlhb[vllm]' (GPU machines)") from e
            args = AsyncEngineArgs(
                model=model_path, enable_lora=True, max_loras=self.settings.max_loaded_adapters, max_lora_rank=64
            )
            self._engine = AsyncLLMEngine.from_engine_args(args)
            self.base_model = self.base_model or model_path
            self.max_context = int(getattr(args, "max_model_len", None) or self.max_context)
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        # This process's names are never used again: free the replicas' slots now instead of
        # leaving one set of adapters behind per API restart.
        for load in list(self._loaded.values()):
            with contextlib.suppress(Exception):
                await self._unload(load)
        self._loaded.clear()
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        for client in self._replicas:
            await client.aclose()
        if self._engine is not None and hasattr(self._engine, "shutdown"):
            self._engine.shutdown()

    # ------------------------------------------------------------------ adapters
    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    def served_name_of(self, version: AdapterVersion | None) -> str:
        """The name requests for ``version`` use now (the base model's for None)."""
        if version is None:
            return self.base_model
        return self._loaded[version.name].name

    async def load_adapter(self, version: AdapterVersion) -> None:
        async with self._load_lock:  # one load at a time: two loads of one version would waste a name and a slot
            if version.name in self._loaded:
                return
            await self._make_room()
            n = next(self._loads)
            load = _Load(version, served_name(version, self._nonce, n), n, served=version.name in self._protected)
            if self._replicas:
                await self._load_everywhere(load)
            else:
                try:
                    if hasattr(self._engine, "add_lora"):
                        await self._engine.add_lora(self._lora(load))
                except Exception as e:  # noqa: BLE001 - any engine failure is a failed load
                    raise AdapterLoadError(f"vLLM could not load adapter {version.name!r}: {e}") from e
            self._loaded[version.name] = load
            log.info(
                "adapter loaded into vLLM",
                extra={"event": "vllm_adapter_loaded", "version": version.name, "lora_name": load.name},
            )

    async def _load_everywhere(self, load: _Load) -> None:
        """Load into every replica; on any failure unload it from those that loaded it, then raise."""
        results = await asyncio.gather(
            *(self._load_on(i, load) for i in range(len(self._replicas))), return_exceptions=True
        )
        failed = [(self.urls[i], r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            return
        loaded = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        # Roll back rather than leave it half-loaded: traffic does not move to it anyway, the retry
        # uses a fresh name, and a partial load would make the replicas serve different sets.
        undo = await asyncio.gather(*(self._unload_on(i, load.name) for i in loaded), return_exceptions=True)
        kept = [self.urls[i] for i, r in zip(loaded, undo, strict=True) if isinstance(r, BaseException)]
        reasons = "; ".join(f"{url}: {e}" for url, e in failed)
        message = (
            f"vLLM could not load adapter {load.version.name!r} (as {load.name!r}) on {len(failed)} of "
            f"{len(self.urls)} replicas ({reasons}); unloaded it again from the {len(loaded) - len(kept)} that had "
            "loaded it, so traffic stays on the current version"
        )
        if kept:
            message += f" (the unload failed on {kept}: that name is never used again)"
        log.error(message, extra={"event": "vllm_adapter_load_failed", "version": load.version.name})
        raise AdapterLoadError(message)

    async def _load_on(self, i: int, load: _Load) -> None:
        r = await self._replicas[i].post("/v1/load_lora_adapter", json=load_lora_payload(load.version, load.name))
        if r.status_code == 404 and "lora" not in r.text.lower():
            raise AdapterLoadError(
                "no /v1/load_lora_adapter route: start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                "and --enable-lora"
            )
        if r.status_code >= 400:
            raise AdapterLoadError(f"refused with {r.status_code}: {r.text[:300]}")

    async def _unload_on(self, i: int, name: str) -> None:
        r = await self._replicas[i].post("/v1/unload_lora_adapter", json={"lora_name": name})
        # 404: the replica does not have it (restarted since): it is gone, which is what we want
        if r.status_code >= 400 and r.status_code != 404:
            raise BackendError(f"unload refused with {r.status_code}: {r.text[:300]}")

    async def _unload(self, load: _Load) -> None:
        """Unregister one load everywhere (best effort: a failure is logged; the name is never reused)."""
        if self._replicas:
            results = await asyncio.gather(
                *(self._unload_on(i, load.name) for i in range(len(self._replicas))), return_exceptions=True
            )
            for url, r in zip(self.urls, results, strict=True):
                if isinstance(r, BaseException):
                    log.warning("vLLM replica %s did not unload %s: %s", url, load.name, r)
        elif hasattr(self._engine, "remove_lora"):
            result = self._engine.remove_lora(load.int_id)
            if asyncio.iscoroutine(result):
                await result
        log.info(
            "adapter unloaded from vLLM",
            extra={"event": "vllm_adapter_unloaded", "version": load.version.name, "lora_name": load.name},
        )

    def _forget_later(self, load: _Load) -> None:
        """Drop ``load`` now (new requests cannot pick it) and unload it in the background (sync callers)."""
        if self._loaded.get(load.version.name) is load:
            del self._loaded[load.version.name]
        task = asyncio.get_running_loop().create_task(self._unload(load), name=f"vllm-unload-{load.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for the background unloads started so far (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _make_room(self) -> None:
        """Evict the oldest loads that are neither served nor pinned until one more fits."""
        while len(self._loaded) >= self.max_loaded_adapters:
            victim = next((x for x in self._loaded.values() if not x.pins and not x.served), None)
            if victim is None:
                log.warning("every loaded vLLM adapter is served or in use: loading one more than the limit")
                return
            del self._loaded[victim.version.name]
            await self._unload(victim)

    async def unload_adapter(self, version: AdapterVersion) -> bool:
        load = self._loaded.get(version.name)
        if load is None:
            return True
        if load.pins or version.name in self._protected:
            return False
        del self._loaded[version.name]
        await self._unload(load)
        return True

    def set_protected(self, version: AdapterVersion | None, *also: AdapterVersion | None) -> None:
        self._protected = {v.name for v in (version, *also) if v is not None}
        for name, load in list(self._loaded.items()):
            if name in self._protected:
                load.served, load.retired = True, False
            elif load.served:  # it was served and no longer is: retire it
                load.served = False
                if load.pins:
                    load.retired = True  # the last request holding it unloads it
                else:
                    self._forget_later(load)

    def acquire(self, version: AdapterVersion | None) -> bool:
        if version is None:
            return True
        load = self._loaded.get(version.name)
        if load is None:
            return False
        load.pins += 1
        return True

    def release(self, version: AdapterVersion | None) -> None:
        if version is None:
            return
        load = self._loaded.get(version.name)
        if load is None:
            return
        load.pins = max(0, load.pins - 1)
        if load.retired and not load.pins:
            self._forget_later(load)

    def _lora(self, load: _Load | None):
        if load is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(**lora_request_args(load.version, load.name, load.int_id))

    async def _load_for(self, request: GenerationRequest) -> _Load | None:
        """The load a request runs on (loaded now if a caller skipped load_adapter)."""
        if request.adapter is None:
            return None
        if request.adapter.name not in self._loaded:
            await self.load_adapter(request.adapter)
        return self._loaded[request.adapter.name]

    # ------------------------------------------------------------------ generation
    async def generate(self, request: GenerationRequest, cancel: Cancellation | None = None) -> GenerationResult:
        result = None
        async for item in self.stream(request, cancel, _deltas=False):
            result = item
        return result

    async def stream(
        self, request: GenerationRequest, cancel: Cancellation | None = None, _deltas: bool = True
    ) -> AsyncIterator[str | GenerationResult]:
        if not self._ready:
            raise BackendError("the vLLM backend is not started")
        load = await self._load_for(request)
        if self._replicas:
            source = self._remote(request, load, _deltas)
        else:
            source = self._in_process(request, load, cancel)
        async for item in source:
            if isinstance(item, GenerationResult) or _deltas:
                yield item

    async def _in_process(self, request: GenerationRequest, load: _Load | None, cancel: Cancellation | None):
        from vllm import SamplingParams

        request_id = uuid.uuid4().hex
        sent, final = "", None
        params = SamplingParams(**sampling_kwargs(request))
        async for out in self._engine.generate(request.prompt, params, request_id, lora_request=self._lora(load)):
            final = out
            text = out.outputs[0].text
            if len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
            if cancel is not None and cancel.cancelled:
                await self._engine.abort(request_id)
                break
        if final is None:
            raise BackendError("vLLM returned no output")
        completion = final.outputs[0]
        yield GenerationResult(
            text=completion.text,
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
            finish_reason=_finish(completion.finish_reason),
            adapter_version=request.version_name,
        )

    def _replica(self) -> tuple[str, Any]:
        """The next replica, round-robin (each serves the same versions under the same names)."""
        i = next(self._next_replica) % len(self._replicas)
        return self.urls[i], self._replicas[i]

    async def _remote(self, request: GenerationRequest, load: _Load | None, stream: bool):
        payload = completion_payload(request, load.name if load is not None else self.base_model, stream)
        url, http = self._replica()
        if not stream:
            r = await http.post("/v1/completions", json=payload)
            if r.status_code >= 400:
                raise BackendError(f"vLLM replica {url} error {r.status_code}: {r.text[:300]}")
            body = r.json()
            choice, usage = body["choices"][0], body.get("usage") or {}
            yield GenerationResult(
                text=choice["text"],
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                finish_reason=_finish(choice.get("finish_reason")),
                adapter_version=request.version_name,
            )
            return
        parts, finish, usage = [], None, {}
        async with http.stream("POST", "/v1/completions", json=payload) as r:
            if r.status_code >= 400:
                raise BackendError(f"vLLM replica {url} error {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        parts.append(choice["text"])
                        yield choice["text"]
                    finish = choice.get("finish_reason") or finish
        yield GenerationResult(
            text="".join(parts),
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", len(parts)),
            finish_reason=_finish(finish),
            adapter_version=request.version_name,
        )
