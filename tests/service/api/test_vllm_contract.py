"""Contract tests of the vLLM backend. vLLM cannot run on these machines (no GPU), so the
engine and the servers are FAKES, named as such: an in-process fake engine that records the
LoRARequests it gets, and tests/helpers/fake_vllm.py, a real HTTP server that speaks vLLM's
documented LoRA and completion endpoints (its shapes and error codes, duplicate names
refused). Everything else (tokenizer, prompts, registry, broker, Redis, the API, hot swap) is
real. Two fake replicas stand for a production deployment with several vLLM servers."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field

import pytest

from schemas.adapters import AdapterVersion
from service.api.backends.base import AdapterLoadError, GenerationRequest, GenerationResult
from service.api.backends.vllm import (
    VllmBackend,
    completion_payload,
    load_lora_payload,
    lora_request_args,
    sampling_kwargs,
    served_name,
)
from tests.helpers.fake_vllm import FakeVllmServer
from tests.helpers.serving import AUTH, new_topics, register_test_versions, serving_settings

V1 = AdapterVersion(name="v-one", id=7, path="/adapters/v-one")
V1_AGAIN = AdapterVersion(name="v-one-b", id=8, path="/adapters/v-one")  # same folder, new version


def _version(tmp_path, name: str, id_: int) -> AdapterVersion:
    """A version whose folder exists (the fake, like vLLM, refuses a folder without an adapter)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return AdapterVersion(name=name, id=id_, path=str(folder))


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
    removed: list = field(default_factory=list)

    async def add_lora(self, lora):
        self.added.append(lora)

    async def remove_lora(self, lora_id):
        self.removed.append(lora_id)

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


@pytest.fixture
def replicas():
    """Two fake vLLM replicas (real HTTP servers on free ports)."""
    with FakeVllmServer("replica-a") as a, FakeVllmServer("replica-b") as b:
        yield a, b


def _settings(tiny_model_dir, **kw):
    from core.settings import ApiSettings

    return ApiSettings(dev_mode=True, backend="vllm", model_path=str(tiny_model_dir), **kw)


# --------------------------------------------------------------------------- settings and pure mapping
def test_replica_urls_setting_keeps_the_single_url_working(tiny_model_dir):
    from pydantic import ValidationError

    assert _settings(tiny_model_dir, vllm_base_url="http://gpu:8000/").vllm_replica_urls() == ["http://gpu:8000"]
    two = _settings(tiny_model_dir, vllm_urls=" http://a:8000, http://b:8000/ ")
    assert two.vllm_replica_urls() == ["http://a:8000", "http://b:8000"]
    assert _settings(tiny_model_dir).vllm_replica_urls() == []  # in-process
    with pytest.raises(ValidationError, match="not both"):
        _settings(tiny_model_dir, vllm_urls="http://a:8000", vllm_base_url="http://b:8000")
    with pytest.raises(ValidationError, match="http"):
        _settings(tiny_model_dir, vllm_urls="a:8000")


def test_mapping_functions():
    greedy = GenerationRequest(prompt="p", max_new_tokens=9, temperature=0.0, top_p=0.5, adapter=V1)
    sampled = GenerationRequest(prompt="p", max_new_tokens=9, temperature=0.7, top_p=0.9)
    assert sampling_kwargs(greedy) == {"max_tokens": 9, "temperature": 0.0, "top_p": 1.0, "skip_special_tokens": True}
    assert sampling_kwargs(sampled)["temperature"] == 0.7 and sampling_kwargs(sampled)["top_p"] == 0.9
    assert served_name(V1, "abc", 3) == "v-one.abc.3" != served_name(V1, "abc", 4)
    args = lora_request_args(V1, "v-one.abc.3", 3)
    assert args == {"lora_name": "v-one.abc.3", "lora_int_id": 3, "lora_path": "/adapters/v-one"}
    assert load_lora_payload(V1, "v-one.abc.3") == {"lora_name": "v-one.abc.3", "lora_path": "/adapters/v-one"}
    assert completion_payload(greedy, "v-one.abc.3", stream=False)["model"] == "v-one.abc.3"
    assert completion_payload(sampled, "base-model", stream=True)["stream_options"] == {"include_usage": True}


# --------------------------------------------------------------------------- in-process engine
@pytest.mark.anyio
async def test_in_process_engine_never_reuses_a_name_or_int_id(fake_vllm, tiny_model_dir):
    backend = VllmBackend(_settings(tiny_model_dir))
    await backend.start()
    await backend.load_adapter(V1)
    await backend.load_adapter(V1_AGAIN)
    await backend.load_adapter(V1)  # already loaded: no second LoRARequest
    first, second = fake_vllm.added
    assert (first.lora_path, second.lora_path) == ("/adapters/v-one", "/adapters/v-one")
    assert first.lora_name.startswith("v-one.") and second.lora_name.startswith("v-one-b.")
    assert first.lora_int_id != second.lora_int_id
    result = await backend.generate(GenerationRequest(prompt="PROMPT", max_new_tokens=5, adapter=V1))
    assert result == GenerationResult(
        text=f"fake answer from {first.lora_name}",
        prompt_tokens=3,
        completion_tokens=4,
        finish_reason="length",
        adapter_version="v-one",
    )
    call = fake_vllm.calls[-1]
    assert call["prompt"] == "PROMPT" and call["lora"] == first
    assert call["params"] == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "skip_special_tokens": True}
    items = [x async for x in backend.stream(GenerationRequest(prompt="P", max_new_tokens=5))]
    assert fake_vllm.calls[-1]["lora"] is None  # base model: no LoRA
    assert "".join(items[:-1]) == items[-1].text == "fake answer from base"
    assert backend.loaded_adapters() == ["v-one", "v-one-b"]
    # unload and load the same version again: a fresh name AND a fresh int id (stale prefix cache)
    assert await backend.unload_adapter(V1) is True
    assert fake_vllm.removed == [first.lora_int_id]
    await backend.load_adapter(V1)
    again = fake_vllm.added[-1]
    assert again.lora_name != first.lora_name
    assert again.lora_int_id not in {first.lora_int_id, second.lora_int_id}


# --------------------------------------------------------------------------- remote replicas
async def _started(tiny_model_dir, replicas, **kw) -> VllmBackend:
    backend = VllmBackend(_settings(tiny_model_dir, vllm_urls=",".join(r.url for r in replicas), **kw))
    await backend.start()
    return backend


@pytest.mark.anyio
async def test_a_version_is_loaded_into_every_replica_and_requests_alternate(tiny_model_dir, replicas, tmp_path):
    a, b = replicas
    backend = await _started(tiny_model_dir, replicas)
    assert backend.base_model == "served-base" and backend.max_context == 2048
    v = _version(tmp_path, "r1", 1)
    await backend.load_adapter(v)
    name = backend.served_name_of(v)
    # load_adapter has returned (what hot swap waits for): both replicas hold it, same name, same path
    assert a.loras == b.loras == {name: {"path": v.path, "int_id": 1}}
    assert name.startswith("r1.") and backend.loaded_adapters() == ["r1"]
    texts = [
        (await backend.generate(GenerationRequest(prompt=f"q{i}", max_new_tokens=6, adapter=v))).text for i in range(4)
    ]
    # round-robin: a, b, a, b; each answered with the adapter's served name
    assert [t.split(" ")[:2] for t in texts] == [["replica-a", name], ["replica-b", name]] * 2
    assert len(a.bodies("/v1/completions")) == len(b.bodies("/v1/completions")) == 2
    assert a.bodies("/v1/completions")[0] == {
        "model": name,
        "prompt": "q0",
        "max_tokens": 6,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": False,
    }
    items = [x async for x in backend.stream(GenerationRequest(prompt="P", max_new_tokens=3))]
    assert "".join(items[:-1]) == items[-1].text == "replica-a served-base answer"
    assert items[-1].finish_reason == "length" and items[-1].completion_tokens == 3
    assert a.bodies("/v1/completions")[-1]["stream"] is True
    await backend.close()
    assert a.loras == b.loras == {}  # shutdown frees this process's names on every replica


@pytest.mark.anyio
async def test_one_replica_failing_rolls_the_load_back_everywhere(tiny_model_dir, replicas, tmp_path):
    a, b = replicas
    backend = await _started(tiny_model_dir, replicas)
    v = _version(tmp_path, "r1", 1)
    b.fail_loads = True
    with pytest.raises(AdapterLoadError, match=r"1 of 2 replicas.*replica-b.*traffic stays"):
        await backend.load_adapter(v)
    (tried,) = a.ever_loaded
    assert a.loras == b.loras == {}  # replica a had loaded it: unloaded again, so both serve the same set
    assert a.bodies("/v1/unload_lora_adapter") == [{"lora_name": tried}]
    assert backend.loaded_adapters() == [] and backend.acquire(v) is False
    # the retry (the watcher's, after retry_s) uses a fresh name: never the one that failed
    b.fail_loads = False
    await backend.load_adapter(v)
    assert backend.served_name_of(v) != tried
    assert set(a.loras) == set(b.loras) == {backend.served_name_of(v)}
    await backend.close()


@pytest.mark.anyio
async def test_retired_versions_are_unloaded_from_every_replica_once_released(tiny_model_dir, replicas, tmp_path):
    a, b = replicas
    backend = await _started(tiny_model_dir, replicas)
    v1, v2 = _version(tmp_path, "r1", 1), _version(tmp_path, "r2", 2)
    await backend.load_adapter(v1)
    backend.set_protected(v1)  # what hot swap does when it switches to r1
    first = backend.served_name_of(v1)
    assert backend.acquire(v1)  # a request still running on r1
    await backend.load_adapter(v2)
    backend.set_protected(v2)  # r2 is active now: r1 is retired, but pinned
    await backend.settle()
    assert set(a.loras) == set(b.loras) == {first, backend.served_name_of(v2)}
    backend.release(v1)  # the last request on r1 finished
    await backend.settle()
    assert set(a.loras) == set(b.loras) == {backend.served_name_of(v2)}
    assert a.bodies("/v1/unload_lora_adapter") == b.bodies("/v1/unload_lora_adapter") == [{"lora_name": first}]
    assert backend.loaded_adapters() == ["r2"]
    # a rollback to r1 loads it again under a new name (vLLM's caches never see the old one again)
    await backend.load_adapter(v1)
    backend.set_protected(v1)
    await backend.settle()
    assert backend.served_name_of(v1) != first and a.ever_loaded.count(first) == 1
    assert set(a.loras) == set(b.loras) == {backend.served_name_of(v1)}  # r2 retired in turn
    await backend.close()


@pytest.mark.anyio
async def test_the_fake_refuses_what_vllm_refuses(replicas, tmp_path):
    """The fake's own contract (so the tests above mean something): duplicate names, unknown
    names and models, folders without an adapter are refused with vLLM's codes."""
    import httpx

    a, _ = replicas
    v = _version(tmp_path, "r1", 1)
    async with httpx.AsyncClient(base_url=a.url) as c:
        ok = await c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": v.path})
        assert ok.status_code == 200 and ok.text == "Success: LoRA adapter 'x' added successfully."
        dup = await c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": v.path})
        assert dup.status_code == 400 and "has already been loaded" in dup.json()["message"]
        missing = await c.post("/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": str(tmp_path / "no")})
        assert missing.status_code == 404 and missing.json()["type"] == "NotFoundError"
        assert (await c.post("/v1/completions", json={"model": "nope", "prompt": "p"})).status_code == 404
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "x"})).status_code == 200
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "x"})).status_code == 404
        chat = await c.post("/v1/chat/completions", json={"model": "served-base", "messages": []})
        assert chat.json()["choices"][0]["message"]["content"].startswith("replica-a served-base")


def test_api_over_two_replicas_moves_traffic_only_when_every_replica_loaded(
    tiny_model_dir, kafka_bootstrap, redis_url, redis_prefix, tmp_path, replicas
):
    """The whole API (hot swap included) over two fake replicas: promote r1 -> both load it, then
    it serves; promote r2 while replica b refuses loads -> still r1, the error reported; once b
    accepts -> r2 serves, and the retired r1 is unloaded from both."""
    import redis
    from fastapi.testclient import TestClient

    from core.registry import Registry
    from service.api.app import create_app
    from tests.helpers.serving import wait_ready

    a, b = replicas
    settings = serving_settings(
        tmp_path,
        kafka_bootstrap,
        redis_url,
        redis_prefix,
        new_topics(kafka_bootstrap),
        tiny_model_dir,
        backend="vllm",
        vllm_urls=f"{a.url},{b.url}",
    )
    registry = Registry(settings.adapter_dir, redis.Redis.from_url(redis_url), redis_prefix)
    (v1,) = register_test_versions(registry, tiny_model_dir, ["r1"])
    backend = VllmBackend(settings)
    with TestClient(create_app(settings, backend=backend)) as c:
        wait_ready("", client=c)
        assert c.post("/admin/promote/r1", params={"wait": "true"}, headers=AUTH).json()["serving"] == "r1"
        r1_name = backend.served_name_of(v1)
        assert {x["path"] for x in a.loras.values()} >= {v1.path} and set(a.loras) == set(b.loras)
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "r1" and r1_name in r.json()["choices"][0]["message"]["content"]
        sent = (a.bodies("/v1/completions") + b.bodies("/v1/completions"))[-1]
        assert sent["model"] == r1_name and "<|im_start|>user\nhi" in sent["prompt"]  # rendered here, sent as text

        b.fail_loads = True  # before r2 exists, so the watcher's preload cannot load it early either
        (v2,) = register_test_versions(registry, tiny_model_dir, ["r2"])
        moved = c.post("/admin/promote/r2", params={"wait": "true"}, headers=AUTH).json()
        assert moved["serving"] == "r1" and "r2" in moved["last_error"] and "replica-b" in moved["last_error"]
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["model"] == "r1"  # traffic did not move
        assert not any(x["path"] == v2.path for x in a.loras.values())  # a's partial load was rolled back

        b.fail_loads = False
        c.app.state.rlhb.watcher._failed.clear()  # skip the retry delay (retry_s) instead of sleeping through it
        assert c.post("/admin/promote/r2", params={"wait": "true"}, headers=AUTH).json()["serving"] == "r2"
        r2_name = backend.served_name_of(v2)
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["model"] == "r2" and r2_name in r.json()["choices"][0]["message"]["content"]
        deadline = time.monotonic() + 10
        while r1_name in a.loras and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r1_name not in a.loras and r1_name not in b.loras  # r1 retired: unloaded everywhere
        assert set(a.loras) == set(b.loras)
