"""Contract tests of the vLLM backend's request mapping. vLLM cannot run on these machines
(no GPU), so the engine and the server are FAKES, named as such, that only record what the
backend asks of them and answer in vLLM's formats; everything else (tokenizer, prompts,
registry, broker, Redis, the API) is real."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import httpx
import pytest

from schemas.adapters import AdapterVersion
from service.api.backends.base import GenerationRequest, GenerationResult
from service.api.backends.vllm import VllmBackend, completion_payload, lora_request_args, sampling_kwargs
from tests.helpers.serving import AUTH, new_topics, register_test_versions, serving_settings

V1 = AdapterVersion(name="v-one", id=7, path="/adapters/v-one")
V1_AGAIN = AdapterVersion(name="v-one-b", id=8, path="/adapters/v-one")  # same folder, new version


# --------------------------------------------------------------------------- fake in-process vLLM
@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclass
class FakeCompletion:
    text: str
    token_ids: list
    finish_reason: str


@dataclass
class FakeOutput:
    outputs: list
    prompt_token_ids: list


@dataclass
class FakeVllmEngine:
    calls: list = field(default_factory=list)
    added: list = field(default_factory=list)

    async def add_lora(self, lora):
        self.added.append(lora)

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.calls.append({"prompt": prompt, "params": params.kwargs, "lora": lora_request, "id": request_id})
        words = ["fake", " answer", " from", f" {lora_request.lora_name if lora_request else 'base'}"]
        for i in range(1, len(words) + 1):
            yield FakeOutput(
                [FakeCompletion("".join(words[:i]), list(range(i)), "length" if i == 4 else None)], [1, 2, 3]
            )

    async def abort(self, request_id):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    engine = FakeVllmEngine()
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = FakeSamplingParams
    vllm.AsyncEngineArgs = lambda **kw: types.SimpleNamespace(**kw)
    vllm.AsyncLLMEngine = types.SimpleNamespace(from_engine_args=lambda args: engine)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, mod in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return engine


def _settings(tiny_model_dir, **kw):
    from core.settings import ApiSettings

    return ApiSettings(dev_mode=True, backend="vllm", model_path=str(tiny_model_dir), **kw)


# --------------------------------------------------------------------------- pure mapping
def test_mapping_functions():
    greedy = GenerationRequest(prompt="p", max_new_tokens=9, temperature=0.0, top_p=0.5, adapter=V1)
    sampled = GenerationRequest(prompt="p", max_new_tokens=9, temperature=0.7, top_p=0.9)
    assert sampling_kwargs(greedy) == {"max_tokens": 9, "temperature": 0.0, "top_p": 1.0, "skip_special_tokens": True}
    assert sampling_kwargs(sampled)["temperature"] == 0.7 and sampling_kwargs(sampled)["top_p"] == 0.9
    assert lora_request_args(V1) == {"lora_name": "v-one", "lora_int_id": 7, "lora_path": "/adapters/v-one"}
    assert lora_request_args(V1_AGAIN)["lora_int_id"] != lora_request_args(V1)["lora_int_id"]
    assert completion_payload(greedy, "base-model", stream=False)["model"] == "v-one"
    assert completion_payload(sampled, "base-model", stream=True)["model"] == "base-model"
    assert completion_payload(sampled, "base-model", stream=True)["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_in_process_engine_gets_one_lora_request_per_immutable_version(fake_vllm, tiny_model_dir):
    backend = VllmBackend(_settings(tiny_model_dir))
    await backend.start()
    await backend.load_adapter(V1)
    await backend.load_adapter(V1_AGAIN)
    assert fake_vllm.added == [
        FakeLoRARequest("v-one", 7, "/adapters/v-one"),
        FakeLoRARequest("v-one-b", 8, "/adapters/v-one"),
    ]
    result = await backend.generate(GenerationRequest(prompt="PROMPT", max_new_tokens=5, adapter=V1))
    assert result == GenerationResult(
        text="fake answer from v-one",
        prompt_tokens=3,
        completion_tokens=4,
        finish_reason="length",
        adapter_version="v-one",
    )
    call = fake_vllm.calls[-1]
    assert call["prompt"] == "PROMPT" and call["lora"] == FakeLoRARequest("v-one", 7, "/adapters/v-one")
    assert call["params"] == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "skip_special_tokens": True}
    items = [x async for x in backend.stream(GenerationRequest(prompt="P", max_new_tokens=5))]
    assert fake_vllm.calls[-1]["lora"] is None  # base model: no LoRA
    assert "".join(items[:-1]) == items[-1].text == "fake answer from base"
    assert backend.loaded_adapters() == ["v-one", "v-one-b"]


# --------------------------------------------------------------------------- fake remote vLLM server
class FakeVllmServer:
    """Answers like a vLLM OpenAI server; records every request body."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "served-smollm", "max_model_len": 2048}]})
        if request.url.path == "/v1/load_lora_adapter":
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if request.url.path == "/v1/completions":
            text = f"remote answer by {body['model']}"
            if not body.get("stream"):
                return httpx.Response(
                    200,
                    json={
                        "choices": [{"text": text, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 4},
                    },
                )
            chunks = [{"choices": [{"text": w, "finish_reason": None}]} for w in text.split(" ")]
            chunks.append(
                {
                    "choices": [{"text": "", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 4},
                }
            )
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": "unknown path"})


@pytest.mark.anyio
async def test_remote_server_mapping(tiny_model_dir):
    server = FakeVllmServer()
    backend = VllmBackend(
        _settings(tiny_model_dir, vllm_base_url="http://gpu:8000"), http_transport=httpx.MockTransport(server)
    )
    await backend.start()
    assert backend.base_model == "served-smollm" and backend.max_context == 2048
    await backend.load_adapter(V1)
    assert server.requests[-1] == ("/v1/load_lora_adapter", {"lora_name": "v-one", "lora_path": "/adapters/v-one"})
    result = await backend.generate(GenerationRequest(prompt="PROMPT", max_new_tokens=6, adapter=V1))
    assert result.text == "remote answer by v-one" and result.adapter_version == "v-one"
    assert server.requests[-1] == (
        "/v1/completions",
        {"model": "v-one", "prompt": "PROMPT", "max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "stream": False},
    )
    items = [x async for x in backend.stream(GenerationRequest(prompt="P", max_new_tokens=6))]
    assert server.requests[-1][1]["model"] == "served-smollm" and server.requests[-1][1]["stream"] is True
    assert items[-1].finish_reason == "length" and items[-1].completion_tokens == 4
    await backend.close()


def test_api_with_the_vllm_backend_serves_the_promoted_version(
    tiny_model_dir, kafka_bootstrap, redis_url, redis_prefix, tmp_path
):
    """The whole API over the vLLM backend: promote -> the fake server is told to load that
    version -> rlhb-latest requests name it."""
    import redis
    from fastapi.testclient import TestClient

    from core.registry import Registry
    from service.api.app import create_app
    from tests.helpers.serving import wait_ready

    settings = serving_settings(
        tmp_path,
        kafka_bootstrap,
        redis_url,
        redis_prefix,
        new_topics(kafka_bootstrap),
        tiny_model_dir,
        backend="vllm",
        vllm_base_url="http://gpu:8000",
    )
    registry = Registry(settings.adapter_dir, redis.Redis.from_url(redis_url), redis_prefix)
    (version,) = register_test_versions(registry, tiny_model_dir, ["r1"])
    server = FakeVllmServer()
    backend = VllmBackend(settings, http_transport=httpx.MockTransport(server))
    with TestClient(create_app(settings, backend=backend)) as c:
        wait_ready("", client=c)
        assert c.post("/admin/promote/r1", params={"wait": "true"}, headers=AUTH).json()["serving"] == "r1"
        assert ("/v1/load_lora_adapter", {"lora_name": "r1", "lora_path": version.path}) in server.requests
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "r1" and r.json()["choices"][0]["message"]["content"] == "remote answer by r1"
    path, body = server.requests[-1]
    assert path == "/v1/completions" and body["model"] == "r1"
    assert "<|im_start|>user\nhi" in body["prompt"]  # rendered here by render_prompt, sent as text
