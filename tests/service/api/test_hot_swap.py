"""Hot-swap under load: promotes and rollbacks while 8 clients send requests continuously.

The expected greedy text of every version comes from an oracle that uses no API code (plain
transformers + peft), so a response labelled with the wrong version, or a text from a
half-swapped model, fails the test."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.prompts import render_prompt
from tests.helpers.serving import AUTH, GreedyOracle

QUESTION = "What is the capital of France?"
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def oracle(tiny_model_dir):
    return GreedyOracle(tiny_model_dir)


def expected_texts(serving, oracle) -> dict[str, str]:
    from service.api.app import default_behavior

    prompt = render_prompt(oracle.tok, QUESTION, default_behavior(serving.settings))
    texts = {"base": oracle.text(prompt, None, MAX_TOKENS)}
    texts.update({v.name: oracle.text(prompt, v, MAX_TOKENS) for v in serving.versions})
    return texts


def admin(c: httpx.Client, path: str) -> dict:
    r = c.post(path, params={"wait": "true"}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def test_registered_versions_are_preloaded_before_promotion(serving, tiny_model_dir):
    """The trainer registers a candidate before promoting it: the API loads it meanwhile (free slots
    only), so the later swap is only the switch."""
    from tests.helpers.serving import register_test_versions

    with httpx.Client(base_url=serving.url, timeout=60) as c:
        loaded = c.get("/readyz").json()["checks"]["adapter"]["loaded"]
        assert len(loaded) < serving.settings.max_loaded_adapters, loaded  # a free slot for the new one
        register_test_versions(serving.registry, tiny_model_dir, ["pre"])
        deadline = time.monotonic() + 30
        while "pre" not in c.get("/readyz").json()["checks"]["adapter"]["loaded"]:
            assert time.monotonic() < deadline, "the registered version was not preloaded"
            time.sleep(0.1)
        assert c.get("/readyz").json()["checks"]["adapter"]["serving"] != "pre"  # loaded, not switched to

        # The gate rejects it: the API frees its slot at the next preload tick.
        from schemas.adapters import AdapterStatus

        serving.registry.mark("pre", AdapterStatus.rejected, "test: gate said no")
        deadline = time.monotonic() + 30
        while "pre" in c.get("/readyz").json()["checks"]["adapter"]["loaded"]:
            assert time.monotonic() < deadline, "the rejected version was not unloaded"
            time.sleep(0.1)


def test_promotes_and_rollbacks_under_load_drop_nothing_and_label_every_answer(serving, oracle):
    expected = expected_texts(serving, oracle)
    assert len(set(expected.values())) == 4, expected  # the versions are distinguishable
    results: list[tuple[float, str, str, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=serving.url, timeout=60) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/query", json={"query": QUESTION, "max_tokens": MAX_TOKENS})
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                b = r.json()
                results.append((sent, b["adapter_version"], r.headers["x-adapter-version"], b["answer"]))

    with httpx.Client(base_url=serving.url, timeout=60) as c:
        while serving.registry.active() != "base":  # a known start, whatever ran before
            admin(c, "/admin/rollback")
        threads = [threading.Thread(target=client_loop) for _ in range(8)]
        for t in threads:
            t.start()
        ops = [
            "promote/v1",
            "promote/v2",
            "rollback",
            "promote/v3",
            "rollback",
            "promote/v2",
            "promote/v3",
            "rollback",
            "rollback",
            "rollback",
        ]
        timeline: list[tuple[float, float, str]] = []  # (op sent, this instance switched, version)
        try:
            time.sleep(0.5)
            for op in ops:
                started = time.monotonic()
                moved = admin(c, f"/admin/{op}")
                assert moved["serving"] == moved["active"], moved  # ?wait=true: this instance switched
                switched = time.monotonic()
                timeline.append((started, switched, moved["active"]))
                time.sleep(0.3)
                deadline = switched + 60  # let requests that started after the switch come back (slow machines)
                while not any(sent > switched for sent, *_ in list(results)) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(60)

    assert [v for _, _, v in timeline] == ["v1", "v2", "v1", "v3", "v1", "v2", "v3", "v2", "v1", "base"]
    assert failures == []
    assert len(results) >= 40, len(results)
    for _sent, version, header, answer in results:
        assert version == header
        assert answer == expected[version], (version, answer, expected)
    # requests sent after a switch completed use the new version (until the next switch starts)
    ends = [started for started, _, _ in timeline[1:]] + [float("inf")]
    for (_, switched, version), next_op in zip(timeline, ends, strict=True):
        window = [v for sent, v, _, _ in results if switched < sent < next_op]
        assert window and set(window) == {version}, (version, set(window))
    assert {v for _, v, _, _ in results} == {"base", "v1", "v2", "v3"}


def test_in_flight_request_finishes_on_the_version_it_started_with(serving, oracle):
    from service.api.app import default_behavior

    prompt = render_prompt(oracle.tok, QUESTION, default_behavior(serving.settings))
    with httpx.Client(base_url=serving.url, timeout=120) as c:
        while serving.registry.active() != "base":
            admin(c, "/admin/rollback")
        admin(c, "/admin/promote/v1")
        with c.stream("POST", "/v1/query", json={"query": QUESTION, "max_tokens": 60, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: meta"
            meta = json.loads(next(lines).removeprefix("data: "))
            moved = admin(c, "/admin/promote/v2")  # while the answer is being generated
            rest = list(lines)
        assert meta["adapter_version"] == "v1" and moved["serving"] == "v2"
        done = json.loads(rest[rest.index("event: done") + 1].removeprefix("data: "))
        after = c.post("/v1/query", json={"query": QUESTION, "max_tokens": 60}).json()
        admin(c, "/admin/rollback")
        again = c.post("/v1/query", json={"query": QUESTION, "max_tokens": 60}).json()
    assert done["adapter_version"] == "v1" and done["answer"] == oracle.text(prompt, serving.versions[0], 60)
    assert after["adapter_version"] == "v2" and after["answer"] == oracle.text(prompt, serving.versions[1], 60)
    # greedy + rollback: the old version's text again
    assert again["adapter_version"] == "v1" and again["answer"] == done["answer"]


def test_a_version_that_fails_to_load_leaves_the_old_one_serving_and_is_reported(serving, tiny_model_dir):
    from tests.helpers.adapter_factory import write_test_adapter

    folder = write_test_adapter(tiny_model_dir, serving.registry.root, "broken", seed=9)
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_module"]  # weights (and their sha256) intact: only loading fails
    (Path(folder) / "adapter_config.json").write_text(json.dumps(config))
    serving.registry.register(folder)

    def failures(c) -> float:
        return sum(
            float(x.rsplit(" ", 1)[1])
            for x in c.get("/metrics").text.splitlines()
            if x.startswith("rlhb_adapter_load_failures_total")
        )

    with httpx.Client(base_url=serving.url, timeout=60) as c:
        while serving.registry.active() != "base":
            admin(c, "/admin/rollback")
        admin(c, "/admin/promote/v3")
        before = failures(c)
        moved = admin(c, "/admin/promote/broken")
        assert moved["active"] == "broken" and moved["serving"] == "v3"
        assert "broken" in moved["last_error"] and "v3" in moved["last_error"]
        r = c.post("/v1/query", json={"query": QUESTION, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["adapter_version"] == "v3"
        ready = c.get("/readyz")
        assert ready.status_code == 200  # still serving: ready, with the failure in the details
        assert "broken" in ready.json()["checks"]["adapter"]["last_error"]
        assert failures(c) >= before + 1
        back = admin(c, "/admin/rollback")
        assert back["active"] == "v3" and back["serving"] == "v3" and back["last_error"] == ""
        assert c.get("/readyz").json()["checks"]["adapter"]["last_error"] == ""


def test_promote_refuses_a_version_whose_weights_changed(serving, tiny_model_dir):
    from tests.helpers.adapter_factory import write_test_adapter

    folder = Path(write_test_adapter(tiny_model_dir, serving.registry.root, "tampered", seed=11))
    serving.registry.register(folder)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    active = serving.registry.active()
    with httpx.Client(base_url=serving.url, timeout=60) as c:
        r = c.post("/admin/promote/tampered", headers=AUTH)
    assert r.status_code == 409 and "sha256" in r.json()["detail"]
    assert serving.registry.active() == active  # the pointer did not move


def test_a_pointer_move_reaches_the_watcher_by_pub_sub_before_its_poll(
    redis_client, redis_prefix, tiny_model_dir, tmp_path
):
    """The registry publishes every pointer move; the watcher wakes on it, so the swap does not wait
    for the next poll (here 60 s: only the message can explain a switch within seconds)."""
    import asyncio

    from core.registry import Registry
    from service.api.backends.embedded import EmbeddedBackend
    from service.api.hot_swap import AdapterWatcher
    from tests.helpers.serving import register_test_versions

    registry = Registry(tmp_path / "adapters", redis_client, redis_prefix)
    (version,) = register_test_versions(registry, tiny_model_dir, ["pubsub-v1"])

    async def run() -> tuple[str, str, float]:
        backend = EmbeddedBackend(tiny_model_dir)
        await backend.start()
        watcher = AdapterWatcher(backend, registry, poll_s=60.0, preload_s=0)
        await watcher.start()
        try:
            before = watcher.current_name
            await asyncio.sleep(0.3)  # the listener thread subscribes
            moved = time.monotonic()
            await asyncio.to_thread(registry.promote, version.name)
            while watcher.current_name != version.name and time.monotonic() - moved < 10:
                await asyncio.sleep(0.01)
            return before, watcher.current_name, time.monotonic() - moved
        finally:
            await watcher.close()
            await backend.close()

    before, after, took = asyncio.run(run())
    assert (before, after) == ("base", version.name)
    assert took < 5.0, took  # the poll would have taken 60 s
