"""The vLLM backend: the same interface as the embedded one, generation by vLLM.

``vllm`` is imported only inside this module's methods (it is an optional extra, and it
cannot run on CPU-only machines). Two modes:

- **in-process** (``RLHB_API_VLLM_BASE_URL`` empty): an ``AsyncLLMEngine`` with
  ``enable_lora=True`` in this process.
- **remote** (``RLHB_API_VLLM_BASE_URL=http://gpu-host:8000``): a vLLM OpenAI-compatible
  server; adapters are registered with ``POST /v1/load_lora_adapter`` and selected with
  ``model=<version name>`` on ``/v1/completions``.

Every adapter version is an immutable (name, unique int id, path) value and is passed as
``LoRARequest(lora_name=name, lora_int_id=id, lora_path=path)``: vLLM keys its LoRA slots
and prefix cache by the int id, and the registry never reuses one, so a cache can never
serve text from a stale adapter. Prompts arrive rendered: the routes render them with
core.prompts.render_prompt (service/api/answer.py), using this backend's ``tokenizer`` (loaded
from ``RLHB_MODEL_PATH``), and they are sent as plain text, so vLLM applies no template.

Running it on a GPU machine::

    pip install 'rlhb[vllm]'
    # in-process
    RLHB_API_BACKEND=vllm RLHB_MODEL_PATH=/models/SmolLM2-135M-Instruct rlhb api
    # or remote: start vLLM with runtime LoRA loading, then point the API at it
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/SmolLM2-135M-Instruct \\
        --enable-lora --max-lora-rank 64 --max-loras 4
    RLHB_API_BACKEND=vllm RLHB_API_VLLM_BASE_URL=http://gpu-host:8000 \\
        RLHB_MODEL_PATH=/models/SmolLM2-135M-Instruct rlhb api

The adapter folders (``RLHB_ADAPTER_DIR``) must be readable by the vLLM process at the same
paths (a shared volume). The tests here are contract tests of the request mapping against a
fake engine and a fake server (tests/service/api/test_vllm_contract.py).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
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


def lora_request_args(version: AdapterVersion) -> dict[str, Any]:
    """``vllm.lora.request.LoRARequest`` arguments: the version's immutable (name, int id, path)."""
    return {"lora_name": version.name, "lora_int_id": version.id, "lora_path": version.path}


def completion_payload(request: GenerationRequest, base_model: str, stream: bool) -> dict[str, Any]:
    """Body of ``POST /v1/completions`` on a vLLM OpenAI server."""
    return {
        "model": request.adapter.name if request.adapter is not None else base_model,
        "prompt": request.prompt,
        **{k: v for k, v in sampling_kwargs(request).items() if k != "skip_special_tokens"},
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def load_lora_payload(version: AdapterVersion) -> dict[str, str]:
    """Body of ``POST /v1/load_lora_adapter`` (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
    return {"lora_name": version.name, "lora_path": version.path}


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


# --------------------------------------------------------------------------- backend
class VllmBackend(Backend):
    kind = "vllm"

    def __init__(self, settings: Any, *, http_transport: Any = None):
        """``http_transport``: an httpx transport for the remote mode (tests pass a fake server)."""
        self.settings = settings
        self.remote_url = settings.vllm_base_url.rstrip("/")
        self._transport = http_transport
        self._engine: Any = None
        self._http: Any = None
        self._loaded: dict[int, AdapterVersion] = {}
        self._ready = False
        self.base_model = settings.vllm_model_name

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        import asyncio

        from transformers import AutoTokenizer

        model_path = self.settings.resolved_model_path()
        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        self.model_id = model_path.rstrip("/").rsplit("/", 1)[-1]
        if self.remote_url:
            import httpx

            self._http = httpx.AsyncClient(
                base_url=self.remote_url, timeout=httpx.Timeout(300, connect=10), transport=self._transport
            )
            try:
                served = (await self._http.get("/v1/models")).raise_for_status().json()["data"]
            except Exception as e:  # noqa: BLE001 - reported through /readyz
                raise BackendError(f"the vLLM server at {self.remote_url} does not answer /v1/models: {e}") from e
            self.base_model = self.base_model or served[0]["id"]
            self.max_context = int(served[0].get("max_model_len") or self.max_context)
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
        if self._http is not None:
            await self._http.aclose()
        if self._engine is not None and hasattr(self._engine, "shutdown"):
            self._engine.shutdown()

    def loaded_adapters(self) -> list[str]:
        return [v.name for v in self._loaded.values()]

    def _lora(self, version: AdapterVersion | None):
        if version is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(**lora_request_args(version))

    async def load_adapter(self, version: AdapterVersion) -> None:
        if version.id in self._loaded:
            return
        try:
            if self._http is not None:
                r = await self._http.post("/v1/load_lora_adapter", json=load_lora_payload(version))
                if r.status_code >= 400 and "already" not in r.text.lower():
                    raise AdapterLoadError(f"vLLM refused adapter {version.name!r}: {r.status_code} {r.text[:300]}")
            elif hasattr(self._engine, "add_lora"):
                await self._engine.add_lora(self._lora(version))
        except AdapterLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - any engine failure is a failed load
            raise AdapterLoadError(f"vLLM could not load adapter {version.name!r}: {e}") from e
        self._loaded[version.id] = version

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
        if self._http is not None:
            source = self._remote(request, _deltas)
        else:
            source = self._in_process(request, cancel)
        async for item in source:
            if isinstance(item, GenerationResult) or _deltas:
                yield item

    async def _in_process(self, request: GenerationRequest, cancel: Cancellation | None):
        from vllm import SamplingParams

        request_id = uuid.uuid4().hex
        sent, final = "", None
        params = SamplingParams(**sampling_kwargs(request))
        async for out in self._engine.generate(
            request.prompt, params, request_id, lora_request=self._lora(request.adapter)
        ):
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

    async def _remote(self, request: GenerationRequest, stream: bool):
        payload = completion_payload(request, self.base_model, stream)
        if not stream:
            r = await self._http.post("/v1/completions", json=payload)
            if r.status_code >= 400:
                raise BackendError(f"vLLM server error {r.status_code}: {r.text[:300]}")
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
        async with self._http.stream("POST", "/v1/completions", json=payload) as r:
            if r.status_code >= 400:
                raise BackendError(f"vLLM server error {r.status_code}: {(await r.aread())[:300]!r}")
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
