"""A FAKE vLLM OpenAI-compatible server for contract tests (vLLM needs a GPU; these machines
have none). It is a real HTTP server (FastAPI under uvicorn, in a thread, on a free loopback
port) that speaks the endpoints rlhb uses, with vLLM's request and response shapes and error
codes as vLLM's server implements them (vllm/entrypoints/openai/serving_models.py and
api_server.py):

- ``GET /v1/models``: the base model card (with ``max_model_len``) and one card per loaded LoRA.
- ``POST /v1/load_lora_adapter {lora_name, lora_path}``: 200 with the plain text
  ``Success: LoRA adapter '<name>' added successfully.``; 400 ``InvalidUserInput`` when a field is
  missing or the name is already loaded (vLLM refuses a duplicate name); 404 ``NotFoundError``
  when the folder holds no adapter (vLLM's "No adapter found"). Each load gets the next int id,
  as vLLM's ``lora_id_counter`` does.
- ``POST /v1/unload_lora_adapter {lora_name}``: 200 ``Success: LoRA adapter '<name>' removed
  successfully.``; 404 ``NotFoundError`` for a name that is not loaded.
- ``POST /v1/completions`` (prompt as text or a list, ``n``, ``stream`` with
  ``stream_options.include_usage``) and ``POST /v1/chat/completions``: 404 ``NotFoundError``
  ("The model `x` does not exist.") for a model that is neither the base nor a loaded LoRA.
  The text is made up (``<replica> <model> answer <i>``), so tests can tell which replica and
  which adapter answered; it does not return token ids (as vLLM before ``return_token_ids``).

Errors use vLLM's ErrorResponse body (``object: "error"``, message, type, param, code). It
records every call (``calls``) and can be told to refuse loads (``fail_loads``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

# module level, not inside _app: FastAPI resolves the (postponed) annotation ``Request`` by name
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


class FakeVllmServer:
    """One fake replica. ``with FakeVllmServer("r0") as s: s.url``."""

    def __init__(self, name: str = "fake-vllm", base_model: str = "served-base", max_model_len: int = 2048):
        self.name = name
        self.base_model = base_model
        self.max_model_len = max_model_len
        self.calls: list[tuple[str, dict]] = []
        self.loras: dict[str, dict[str, Any]] = {}  # lora_name -> {"path", "int_id"}
        self.ever_loaded: list[str] = []
        self.fail_loads = False
        """True: every load answers 400 like an engine that cannot take the adapter."""
        self._next_id = 0
        self._lock = threading.Lock()
        self.port = 0
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what tests read
    def paths(self) -> list[str]:
        return [p for p, _ in self.calls]

    def bodies(self, path: str) -> list[dict]:
        return [b for p, b in self.calls if p == path]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeVllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> FakeVllmServer:
        import uvicorn

        from core.infra.ports import free_port, wait_tcp

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, name=f"fake-vllm-{self.name}", daemon=True)
        self._thread.start()
        if not wait_tcp("127.0.0.1", self.port, 30):
            raise RuntimeError(f"fake vLLM {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)

    # ------------------------------------------------------------------ the app
    def _app(self):
        app = FastAPI()

        def error(message: str, kind: str, code: int) -> JSONResponse:
            return JSONResponse(
                {"object": "error", "message": message, "type": kind, "param": None, "code": code}, status_code=code
            )

        async def body_of(request: Request, path: str) -> dict:
            raw = await request.body()
            body = json.loads(raw) if raw else {}
            self.calls.append((path, body))
            return body

        @app.get("/v1/models")
        async def models():
            self.calls.append(("/v1/models", {}))
            cards = [
                {
                    "id": self.base_model,
                    "object": "model",
                    "owned_by": "vllm",
                    "root": f"/models/{self.base_model}",
                    "max_model_len": self.max_model_len,
                }
            ]
            cards += [
                {"id": n, "object": "model", "owned_by": "vllm", "root": x["path"], "parent": self.base_model}
                for n, x in self.loras.items()
            ]
            return {"object": "list", "data": cards}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await body_of(request, "/v1/load_lora_adapter")
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
            with self._lock:
                if name in self.loras:
                    return error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
                if self.fail_loads:
                    return error(f"fake failure: replica {self.name} cannot load {name}", "BadRequestError", 400)
                if not (Path(path) / "adapter_config.json").is_file():
                    return error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
                self._next_id += 1
                self.loras[name] = {"path": path, "int_id": self._next_id}
                self.ever_loaded.append(name)
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            body = await body_of(request, "/v1/unload_lora_adapter")
            name = body.get("lora_name")
            with self._lock:
                if name not in self.loras:
                    return error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
                del self.loras[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

        def unknown_model(model: str) -> JSONResponse | None:
            if model == self.base_model or model in self.loras:
                return None
            return error(f"The model `{model}` does not exist.", "NotFoundError", 404)

        def text_for(model: str, i: int, max_tokens: int) -> tuple[str, str]:
            words = [self.name, model, "answer", str(i)]
            return " ".join(words[:max_tokens]), "length" if max_tokens <= len(words) else "stop"

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await body_of(request, "/v1/completions")
            model = body.get("model", "")
            if (bad := unknown_model(model)) is not None:
                return bad
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            n, max_tokens = int(body.get("n") or 1), int(body.get("max_tokens") or 16)
            choices = []
            for p in range(len(prompts)):
                for j in range(n):
                    text, finish = text_for(model, p * n + j, max_tokens)
                    choices.append({"index": p * n + j, "text": text, "logprobs": None, "finish_reason": finish})
            usage = {
                "prompt_tokens": sum(len(p.split()) for p in prompts),
                "completion_tokens": sum(len(c["text"].split()) for c in choices),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            head = {"id": f"cmpl-{len(self.calls)}", "object": "text_completion", "created": int(time.time())}
            if not body.get("stream"):
                return {**head, "model": model, "choices": choices, "usage": usage}

            def sse():
                for c in choices:
                    words = c["text"].split(" ")
                    for k, w in enumerate(words):
                        piece = w if k == 0 else " " + w
                        chunk = {"index": c["index"], "text": piece, "logprobs": None, "finish_reason": None}
                        yield f"data: {json.dumps({**head, 'model': model, 'choices': [chunk]})}\n\n"
                    end = {"index": c["index"], "text": "", "logprobs": None, "finish_reason": c["finish_reason"]}
                    yield f"data: {json.dumps({**head, 'model': model, 'choices': [end]})}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield f"data: {json.dumps({**head, 'model': model, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await body_of(request, "/v1/chat/completions")
            model = body.get("model", "")
            if (bad := unknown_model(model)) is not None:
                return bad
            text, finish = text_for(model, 0, int(body.get("max_tokens") or 16))
            return {
                "id": f"chatcmpl-{len(self.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 1 + len(text.split()),
                },
            }

        return app
