"""Rollouts sampled through vLLM servers (rollout_backend="vllm", TRL's server mode), against two
FAKE vLLM servers (tests/helpers/fake_vllm.py: real HTTP, vLLM's documented LoRA and completion
endpoints; vLLM itself needs a GPU). The policy, tokenizer, LoRA folders and the PPO update are
real. The fakes return text only (as vLLM before return_token_ids), so these tests also prove the
trainer tokenizes what it gets into the batch PPO scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.fake_vllm import FakeVllmServer
from trainer.algorithms.ppo_core import PPOCore
from trainer.config import ConfigError, PPOConfig
from trainer.policy import Policy
from trainer.rollouts import Prompt
from trainer.vllm_rollouts import VllmRolloutError, response_ids

PROMPTS = [Prompt("what is rain?", "likes: high"), Prompt("name a colour", "likes: low")]


@pytest.fixture
def servers():
    with FakeVllmServer("vllm-a") as a, FakeVllmServer("vllm-b") as b:
        yield a, b


def _core(model_dir, servers, lora_dir: Path, **kw) -> PPOCore:
    config = PPOConfig(
        batch_size=4,
        rollouts_per_prompt=2,
        num_minibatches=1,
        ppo_epochs=1,
        max_new_tokens=kw.pop("max_new_tokens", 24),
        lora_r=4,
        lora_alpha=8,
        value_head_hidden=0,
        rollout_backend="vllm",
        vllm_urls=",".join(s.url for s in servers),
        vllm_lora_dir=str(lora_dir),
        **kw,
    )
    return PPOCore(Policy.load(str(model_dir), config), config)


def test_config_requires_urls_and_a_shared_folder():
    with pytest.raises(ConfigError, match="vllm_urls"):
        PPOConfig(rollout_backend="vllm", vllm_lora_dir="/shared")
    with pytest.raises(ConfigError, match="vllm_lora_dir"):
        PPOConfig(rollout_backend="vllm", vllm_urls="http://vllm:8000")
    with pytest.raises(ConfigError, match="rollout_backend"):
        PPOConfig(rollout_backend="sglang")
    assert PPOConfig().rollout_backend == "hf"


def test_response_ids_follow_policy_generate_layout():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    eos = {0}
    assert response_ids({"text": "ab abc", "finish_reason": "stop"}, Tok(), eos, 0, 8) == [2, 3, 0]  # stopped: EOS
    assert response_ids({"text": "ab abc", "finish_reason": "length"}, Tok(), eos, 0, 8) == [2, 3]  # cut: no EOS
    assert response_ids({"text": "a b c d", "finish_reason": "stop"}, Tok(), eos, 0, 3) == [1, 1, 0]  # fits max_new
    # sampled ids from the server win over the text, and nothing after the first EOS counts
    assert response_ids({"text": "x", "token_ids": [5, 0, 7], "finish_reason": "stop"}, Tok(), eos, 0, 8) == [5, 0]


def test_rollouts_through_two_vllm_servers_load_sample_and_swap_the_adapter(tiny_model_dir, servers, tmp_path):
    a, b = servers
    core = _core(tiny_model_dir, servers, tmp_path / "shared")
    rollouts = core.rollout(PROMPTS)
    first = core.sampler.current[0]
    # the LoRA was saved where the servers read it, then loaded into BOTH under a fresh name
    (load_a,) = a.bodies("/v1/load_lora_adapter")
    assert load_a == b.bodies("/v1/load_lora_adapter")[0] == {"lora_name": first, "lora_path": load_a["lora_path"]}
    assert (Path(load_a["lora_path"]) / "adapter_config.json").is_file()
    # sampling used that adapter; the 4 rows were split 2 + 2 over the servers, prompts rendered here
    sent = a.bodies("/v1/completions") + b.bodies("/v1/completions")
    assert [s["model"] for s in sent] == [first, first] and [len(s["prompt"]) for s in sent] == [2, 2]
    assert sent[0]["prompt"][0] == core.policy.render(PROMPTS[0]) and sent[0]["max_tokens"] == 24
    batch = rollouts.batch
    assert batch.responses == [f"vllm-a {first} answer 0", f"vllm-a {first} answer 1"] + [
        f"vllm-b {first} answer 0",
        f"vllm-b {first} answer 1",
    ]
    assert (
        batch.prompt_index.tolist() == [0, 0, 1, 1] and batch.queries == [PROMPTS[0].query] * 2 + [PROMPTS[1].query] * 2
    )
    # the fake said "stop": each row is the tokenized text + EOS, and the mask covers exactly that
    tok = core.policy.tokenizer
    for row, mask, text in zip(batch.response_ids, batch.response_mask, batch.responses, strict=True):
        ids = row[mask.bool()].tolist()
        assert ids == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # PPO's pi_old is the policy's own log-prob of those ids (recomputed, not vLLM's)
    with torch.no_grad():
        own = core.policy.forward(batch).logprobs
    assert torch.allclose(rollouts.logprobs, own, atol=1e-5)
    metrics = core.update(rollouts, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert all(v == v for v in metrics.values())  # finite (no NaN) after an update on vLLM's samples

    # next iteration: the updated LoRA under a NEW name; the previous one unloaded from both, folder gone
    core.rollout(PROMPTS)
    second = core.sampler.current[0]
    assert second != first
    assert set(a.loras) == set(b.loras) == {second}
    assert a.bodies("/v1/unload_lora_adapter") == b.bodies("/v1/unload_lora_adapter") == [{"lora_name": first}]
    assert not Path(load_a["lora_path"]).exists()
    core.close()
    assert a.loras == b.loras == {} and not any((tmp_path / "shared").iterdir())


def test_answers_cut_at_max_new_tokens_have_no_eos(tiny_model_dir, servers, tmp_path):
    core = _core(tiny_model_dir, servers, tmp_path / "shared", max_new_tokens=3)
    batch = core.rollout(PROMPTS).batch
    assert batch.response_ids.shape[1] <= 3
    assert batch.response_mask.all()  # "length": every kept token counts, none is EOS
    assert bool((batch.response_ids != core.policy.tokenizer.eos_token_id).all())
    core.close()


def test_a_server_refusing_the_adapter_fails_the_rollout_and_leaves_nothing_loaded(tiny_model_dir, servers, tmp_path):
    a, b = servers
    core = _core(tiny_model_dir, servers, tmp_path / "shared")
    b.fail_loads = True
    with pytest.raises(VllmRolloutError, match="vllm-b"):
        core.rollout(PROMPTS)
    assert a.loras == {} and len(a.bodies("/v1/unload_lora_adapter")) == 1  # a's load rolled back
    assert a.bodies("/v1/completions") == [] and not any((tmp_path / "shared").iterdir())
    core.close()
