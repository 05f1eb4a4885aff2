"""Shared pieces for the serving tests: settings, a real uvicorn server in a thread, registered
test adapters, and an independent greedy-generation oracle (plain transformers + peft, no API
code) to check which version produced a text."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx

from core.infra.ports import free_port
from core.settings import ApiSettings

ADMIN = "test-admin-token-0123456789abcdef"
SECRET = "test-impression-secret-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def serving_settings(
    root: Path, bootstrap: str, redis_url: str, prefix: str, topics: dict, model_dir: Path, **overrides
) -> ApiSettings:
    fields = dict(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        redis_prefix=prefix,
        dev_mode=False,
        admin_token=ADMIN,
        impression_secret=SECRET,
        model_path=str(model_dir),
        adapter_dir=root / "adapters",
        state_dir=root / "state",
        max_new_tokens=8,
        max_tokens_cap=64,
        adapter_poll_s=0.1,
        outbox_flush_s=0.3,
        batch_window_ms=10,
        topic_impressions=topics["impressions"],
        topic_feedback=topics["feedback"],
        topic_records=topics["records"],
        topic_dead_letter=topics["dead_letter"],
    )
    fields.update(overrides)
    return ApiSettings(**fields)


def new_topics(bootstrap: str) -> dict[str, str]:
    from core.infra.broker import ensure_topics

    tag = uuid.uuid4().hex[:8]
    names = {k: f"t-{tag}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    ensure_topics(bootstrap, list(names.values()), partitions=2)
    return names


class LiveServer:
    """The app under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on", timeout_graceful_shutdown=5
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 180.0) -> LiveServer:
        self.thread.start()
        wait_ready(self.url, ready_timeout_s)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_ready(url: str, timeout_s: float = 180.0, client=None) -> dict:
    """Poll /readyz until 200 (the model loads in the background)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = client.get("/readyz") if client is not None else httpx.get(f"{url}/readyz", timeout=5)
            last = r
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"API not ready after {timeout_s}s: {last.text if last is not None else 'no answer'}")


def register_test_versions(registry, model_dir: Path, names: list[str]) -> list:
    from tests.helpers.adapter_factory import write_test_adapter

    return [
        registry.register(write_test_adapter(model_dir, registry.root, name, seed=i + 1))
        for i, name in enumerate(names)
    ]


class GreedyOracle:
    """Greedy answers computed without any API code: one plain generate per (prompt, version)."""

    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.cache: dict = {}

    def text(self, prompt: str, version, max_new_tokens: int) -> str:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        key = (prompt, version.name if version else "base", max_new_tokens)
        if key not in self.cache:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            if version is not None:
                model = PeftModel.from_pretrained(model, version.path)
            model.eval()
            ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
                )
            new = out[0, ids["input_ids"].shape[1] :].tolist()
            eos = {
                self.tok.eos_token_id,
                *(
                    [model.generation_config.eos_token_id]
                    if isinstance(model.generation_config.eos_token_id, int)
                    else model.generation_config.eos_token_id or []
                ),
            }
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            self.cache[key] = self.tok.decode(new[:cut], skip_special_tokens=True)
        return self.cache[key]
