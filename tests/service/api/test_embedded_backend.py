"""The embedded backend on the tiny model: iteration-level batching (requests prefilled together,
joining and leaving a running batch, per-row limits, mixed adapters) gives the same greedy text
as one request at a time; streaming; adapter pinning and eviction; a failed load changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from core.prompts import render_prompt
from schemas.adapters import AdapterVersion
from service.api.backends.base import AdapterLoadError, Cancellation, GenerationRequest
from service.api.backends.embedded import EmbeddedBackend

BEHAVIOR = "Users liked this answer at a high rate and disliked it at a low rate."
QUESTIONS = ["What is the capital of France?", "hi", "Explain in detail how a rainbow forms after the rain."]


@pytest.fixture(scope="module")
def versions(tiny_model_dir, tmp_path_factory):
    from tests.helpers.adapter_factory import write_test_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [
        AdapterVersion(name=f"e{i}", id=100 + i, path=str(write_test_adapter(tiny_model_dir, root, f"e{i}", seed=i)))
        for i in range(1, 5)
    ]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    sizes: list[int] = []
    b = EmbeddedBackend(
        tiny_model_dir, batch_window_ms=60, max_batch_size=8, max_loaded_adapters=2, on_batch=sizes.append
    )
    asyncio.run(b.start())
    b.batch_sizes = sizes
    yield b
    asyncio.run(b.close())


def prompts(backend) -> list[str]:
    return [render_prompt(backend.tokenizer, q, BEHAVIOR) for q in QUESTIONS]


def test_concurrent_requests_share_one_generate_and_match_single_runs(backend, versions):
    async def run():
        await backend.load_adapter(versions[0])
        backend.acquire(versions[0])  # keep it loaded during the test
        reqs = [
            GenerationRequest(p, 6, adapter=a) for p, a in zip(prompts(backend), [None, versions[0], None], strict=True)
        ]
        reqs.append(GenerationRequest(prompts(backend)[0], 2))  # a shorter limit in the same batch
        singles = [await backend.generate(r) for r in reqs]
        backend.batch_sizes.clear()
        batched = await asyncio.gather(*[backend.generate(r) for r in reqs])
        backend.release(versions[0])
        return singles, batched

    singles, batched = asyncio.run(run())
    assert backend.batch_sizes == [4]  # one generate for all four
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [r.adapter_version for r in batched] == ["base", "e1", "base", "base"]
    assert batched[3].completion_tokens <= 2 and batched[0].text.startswith(batched[3].text)
    assert all(r.finish_reason in ("stop", "length") for r in batched)


def test_a_request_joins_the_running_batch_and_answers_before_a_long_one(backend, versions, tiny_model_dir):
    """Iteration-level batching: a request that arrives while a long answer is being generated is
    prefilled and joins at the next decode step (here on another version: a mixed-adapter step),
    and answers as soon as its own limit is reached, not when the long one ends. Both texts equal
    plain generate (an oracle with no API code), so joining and leaving change nothing."""
    from tests.helpers.serving import GreedyOracle

    oracle = GreedyOracle(tiny_model_dir)
    long_prompt, short_prompt = prompts(backend)[2], prompts(backend)[1]

    async def run():
        await backend.load_adapter(versions[0])
        backend.acquire(versions[0])
        order, started = [], asyncio.Event()

        async def long_answer():
            items = []
            async for item in backend.stream(GenerationRequest(long_prompt, 48)):
                items.append(item)
                started.set()
            order.append("long")
            return items[-1]

        async def short_answer():
            await started.wait()  # the long answer is being decoded
            result = await backend.generate(GenerationRequest(short_prompt, 4, adapter=versions[0]))
            order.append("short")
            return result

        backend.batch_sizes.clear()
        results = await asyncio.gather(long_answer(), short_answer())
        backend.release(versions[0])
        return (*results, order, list(backend.batch_sizes))

    long_result, short_result, order, sizes = asyncio.run(run())
    assert long_result.text == oracle.text(long_prompt, None, 48)
    assert short_result.text == oracle.text(short_prompt, versions[0], 4)
    assert short_result.adapter_version == "e1" and long_result.adapter_version == "base"
    assert long_result.completion_tokens == 48  # the tiny model does not stop early on this prompt
    assert sizes == [1, 2]  # the short request joined the running batch
    assert order == ["short", "long"]


def test_stream_deltas_add_up_to_the_text_and_cancel_stops_early(backend):
    async def run():
        request = GenerationRequest(prompts(backend)[2], 12)
        items = [x async for x in backend.stream(request)]
        cancel = Cancellation()
        got = []
        async for x in backend.stream(GenerationRequest(prompts(backend)[2], 200), cancel):
            got.append(x)
            cancel.cancelled = True  # the client left after the first delta
        return items, got

    items, got = asyncio.run(run())
    assert "".join(items[:-1]) == items[-1].text and len(items) > 2
    assert got[-1].finish_reason == "cancelled" and got[-1].completion_tokens < 20


def test_sampling_rows_batch_with_their_own_temperature(backend):
    async def run():
        reqs = [GenerationRequest(prompts(backend)[0], 8, temperature=t, top_p=p) for t, p in ((0.7, 1), (1.3, 0.9))]
        backend.batch_sizes.clear()
        return await asyncio.gather(*[backend.generate(r) for r in reqs])

    results = asyncio.run(run())
    assert backend.batch_sizes == [2]
    assert all(0 < r.completion_tokens <= 8 for r in results)


def test_pinned_and_active_adapters_are_never_evicted(backend, versions):
    e1, e2, e3, e4 = versions

    async def run():
        await backend.load_adapter(e1)
        await backend.load_adapter(e2)
        backend.set_protected(e2)  # the active version
        assert backend.acquire(e1)  # a request in flight on e1
        await backend.load_adapter(e3)
        over_limit = sorted(backend.loaded_adapters())  # limit 2, but nothing may go
        still_e1 = await backend.generate(GenerationRequest(prompts(backend)[0], 3, adapter=e1))
        backend.release(e1)
        await backend.load_adapter(e4)
        after = sorted(backend.loaded_adapters())
        backend.set_protected(None)
        return over_limit, still_e1, after

    over_limit, still_e1, after = asyncio.run(run())
    assert over_limit == ["e1", "e2", "e3"]
    assert still_e1.adapter_version == "e1"
    assert after == ["e2", "e4"]  # LRU unpinned e1 and e3 went; active e2 and new e4 stay
    assert backend.acquire(e1) is False  # evicted: callers load it again


def test_failed_load_changes_nothing(backend, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "target_modules": ["nope"], "r": 4}')

    async def run():
        before = sorted(backend.loaded_adapters())
        with pytest.raises(AdapterLoadError, match="bad"):
            await backend.load_adapter(AdapterVersion(name="bad", id=999, path=str(bad)))
        result = await backend.generate(GenerationRequest(prompts(backend)[1], 3))
        return before, sorted(backend.loaded_adapters()), result

    before, after, result = asyncio.run(run())
    assert before == after and result.completion_tokens > 0


def test_worker_survives_callers_whose_event_loop_is_gone(backend):
    async def leave_early():
        # Started, then abandoned: asyncio.run cancels it and closes the loop while the job runs.
        asyncio.get_running_loop().create_task(backend.generate(GenerationRequest(prompts(backend)[2], 30)))
        await asyncio.sleep(0.05)

    asyncio.run(leave_early())
    asyncio.run(leave_early())
    result = asyncio.run(asyncio.wait_for(backend.generate(GenerationRequest(prompts(backend)[1], 3)), 120))
    assert backend.ready and result.completion_tokens > 0


def test_shared_prefix_cache_gives_the_plain_greedy_texts(backend, versions, tiny_model_dir):
    """Batches whose prompts share the system prompt reuse its keys/values (per version): the
    texts must equal plain, uncached generate (an oracle with no API code)."""
    from service.api.answer import shared_prefix
    from tests.helpers.serving import GreedyOracle

    oracle = GreedyOracle(tiny_model_dir)
    prefix = shared_prefix(backend.tokenizer, BEHAVIOR)
    assert prefix and all(p.startswith(prefix) for p in prompts(backend))
    other = render_prompt(backend.tokenizer, QUESTIONS[0], "Users disliked this answer at a high rate.")

    async def run():
        await backend.load_adapter(versions[1])
        backend.acquire(versions[1])
        rows = [(p, a) for p in prompts(backend) for a in (None, versions[1])]
        hits = backend.prefix_hits
        cached = await asyncio.gather(
            *[backend.generate(GenerationRequest(p, 6, adapter=a, prefix=prefix)) for p, a in rows]
        )
        cached_hits = backend.prefix_hits - hits
        # no prefix given, or a prompt that does not start with its prefix: plain left padding
        mixed = await asyncio.gather(
            backend.generate(GenerationRequest(prompts(backend)[0], 6, prefix="")),
            backend.generate(GenerationRequest(other, 6, prefix=prefix)),
        )
        backend.release(versions[1])
        return rows, cached, cached_hits, mixed, backend.prefix_hits - hits

    rows, cached, cached_hits, mixed, all_hits = asyncio.run(run())
    assert cached_hits >= 1 and all_hits == cached_hits  # the fallback rows did not use the cache
    for (p, a), r in zip(rows, cached, strict=True):
        assert r.text == oracle.text(p, a, 6), (a, r.text)
        assert r.prompt_tokens == len(backend.tokenizer(p, add_special_tokens=False)["input_ids"])
    assert mixed[0].text == oracle.text(prompts(backend)[0], None, 6)
    assert mixed[1].text == oracle.text(other, None, 6)

    # a version loaded later (before a hot-swap) gets the recent prefix precomputed at load time
    fresh = next(v for v in versions if v.name not in backend.loaded_adapters())
    asyncio.run(backend.load_adapter(fresh))
    assert (f"v{fresh.id}", prefix) in backend.cached_prefixes()


def test_tokenized_prefix_cache_is_a_bounded_lru(backend):
    """One tokenized prefix per distinct behavior sentence, and clients choose the sentence: the
    cache keeps the most recently used PREFIX_TOKEN_ENTRIES, not one per sentence ever seen."""
    from service.api.backends.embedded import PREFIX_TOKEN_ENTRIES

    kept = backend._prefix_ids("kept prefix")
    for i in range(PREFIX_TOKEN_ENTRIES + 50):
        backend._prefix_ids(f"behavior sentence number {i}")
        if i % 100 == 0:
            backend._prefix_ids("kept prefix")  # recently used: survives
    assert len(backend._prefix_tokens) <= PREFIX_TOKEN_ENTRIES
    assert "behavior sentence number 0" not in backend._prefix_tokens
    assert backend._prefix_tokens["kept prefix"] == kept


def test_the_device_and_dtype_settings_reach_the_served_model(tiny_model_dir, versions):
    """RLHB_DEVICE / RLHB_DTYPE (core/device.py) are the backend's too: with dtype bfloat16 the
    base weights are bfloat16 on the named device, batched answers (base and an adapter in one
    step, a mixed-adapter step) come out, and the adapter changes the answer to the same prompt
    (it is applied on that device, batched and alone). Not compared token for token with the
    one-at-a-time answers: bfloat16 sums depend on the batch's shape, and the tiny random model's
    near-flat logits turn that rounding into other argmaxes (float32 equality is tested above).
    On the CPU this is the code path a GPU takes (every tensor made on the model's device); a
    device the machine lacks is a clear error naming the setting."""
    import torch

    b = EmbeddedBackend(tiny_model_dir, batch_window_ms=60, device="cpu", dtype="bfloat16")
    asyncio.run(b.start())
    try:
        assert b.device == torch.device("cpu")
        assert {p.dtype for p in b._model.parameters()} == {torch.bfloat16}

        async def run():
            await b.load_adapter(versions[1])
            b.acquire(versions[1])
            p0, p1 = prompts(b)[:2]
            reqs = [GenerationRequest(p0, 5), GenerationRequest(p0, 5, adapter=versions[1]), GenerationRequest(p1, 5)]
            singles = [await b.generate(r) for r in reqs]
            batched = await asyncio.gather(*[b.generate(r) for r in reqs])
            b.release(versions[1])
            return singles, batched

        singles, batched = asyncio.run(run())
        assert [r.adapter_version for r in batched] == ["base", "e2", "base"]
        assert all(r.completion_tokens > 0 for r in batched)
        assert batched[1].text != batched[0].text and singles[1].text != singles[0].text
    finally:
        asyncio.run(b.close())

    if not torch.cuda.is_available():
        missing = EmbeddedBackend(tiny_model_dir, device="cuda")
        with pytest.raises(Exception, match="RLHB_DEVICE=cuda"):
            asyncio.run(missing.start())


def test_base_still_answers_after_its_only_adapter_is_unloaded(tiny_model_dir, versions):
    """An A/B trial of the first candidate against base, rejected: the API unloads the candidate and
    base is all that is left. peft keeps the deleted adapter as its active one, so running base rows
    through the PeftModel raised KeyError on every request (found in a full `rlhb demo --poison-round 1`
    run). Base answers must go on, with and without the shared prefix, and equal plain greedy text."""
    from service.api.answer import shared_prefix
    from tests.helpers.serving import GreedyOracle

    oracle = GreedyOracle(tiny_model_dir)
    b = EmbeddedBackend(tiny_model_dir, batch_window_ms=20, max_batch_size=8)
    asyncio.run(b.start())
    try:
        prefix = shared_prefix(b.tokenizer, BEHAVIOR)
        candidate = versions[0]

        async def run():
            await b.load_adapter(candidate)
            served = await asyncio.gather(
                b.generate(GenerationRequest(prompts(b)[0], 6, adapter=candidate, prefix=prefix)),
                b.generate(GenerationRequest(prompts(b)[1], 6, prefix=prefix)),
            )
            assert await b.unload_adapter(candidate)
            after = await asyncio.gather(
                b.generate(GenerationRequest(prompts(b)[0], 6, prefix=prefix)),
                b.generate(GenerationRequest(prompts(b)[2], 6)),
            )
            empty = list(b.loaded_adapters())
            await b.load_adapter(versions[1])  # the next round's candidate loads into the emptied model
            nxt = await b.generate(GenerationRequest(prompts(b)[1], 6, adapter=versions[1], prefix=prefix))
            return served, after, empty, nxt

        served, after, empty, nxt = asyncio.run(run())
        assert empty == []
        assert nxt.adapter_version == versions[1].name and nxt.text == oracle.text(prompts(b)[1], versions[1], 6)
        assert served[0].adapter_version == candidate.name
        assert after[0].text == oracle.text(prompts(b)[0], None, 6)
        assert after[1].text == oracle.text(prompts(b)[2], None, 6)
    finally:
        asyncio.run(b.close())
