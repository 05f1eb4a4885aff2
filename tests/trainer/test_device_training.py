"""RLHB_DEVICE / RLHB_DTYPE reach every model the trainer builds (core/device.py).

The machine running the tests has no GPU, so the device is "cpu" given explicitly, and the
dtype threading is shown with bfloat16 base weights on the CPU (torch runs them there): the
LoRA, the value head and D's heads stay float32 and read float32 features.
"""

from __future__ import annotations

import math

import torch

from tests.helpers.toy_task import toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.ppo_core import PPOCore
from trainer.algorithms.rlhb import Config, RLHBTrainer
from trainer.config import PPOConfig
from trainer.policy import Policy
from trainer.rollouts import Prompt

PROMPTS = [Prompt(f"Tell me about item {i}.", "The answer was liked by most users.") for i in range(2)]
TINY = dict(batch_size=4, rollouts_per_prompt=2, max_new_tokens=4, lora_r=4, value_head_hidden=16, threads=1)


def score(queries, responses, behaviors) -> torch.Tensor:
    return torch.tensor([len(r) / 20.0 for r in responses])


def dtypes(module: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.requires_grad == trainable}


def test_a_ppo_iteration_on_an_explicit_cpu_keeps_everything_there(tiny_model_dir):
    torch.manual_seed(0)
    config = PPOConfig(**TINY)
    policy = Policy.load(str(tiny_model_dir), config, device="cpu", dtype="float32")
    result = PPOCore(policy, config).iteration(PROMPTS, score)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert policy.device == torch.device("cpu")
    for module in (policy.model, policy.value_head):
        assert {p.device for p in module.parameters()} == {torch.device("cpu")}
    r = result.rollouts
    for t in (r.batch.prompt_ids, r.batch.response_ids, r.batch.prompt_index, r.logprobs, r.values, r.scores):
        assert t.device == torch.device("cpu")


def test_bfloat16_base_weights_train_with_float32_adapter_and_heads(tiny_model_dir):
    torch.manual_seed(0)
    config = PPOConfig(**TINY)
    policy = Policy.load(str(tiny_model_dir), config, device="cpu", dtype="bfloat16")
    assert dtypes(policy.model, trainable=False) == {torch.bfloat16}  # the frozen base took the dtype
    assert dtypes(policy.model, trainable=True) == {torch.float32}  # the LoRA did not
    assert dtypes(policy.value_head, trainable=True) == {torch.float32}
    lora_before = [p.detach().clone() for p in policy.actor_parameters()]
    result = PPOCore(policy, config).iteration(PROMPTS, score)
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert result.rollouts.features.dtype == torch.float32 and result.rollouts.logprobs.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, policy.actor_parameters(), strict=True))


def test_rlhb_puts_policy_critic_and_lm_discriminator_on_the_request_device_and_dtype(tiny_model_dir, tmp_path):
    request = TrainRequest(
        records=toy_records(40), model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v",
        steps=1, progress=False, device="cpu", dtype="bfloat16",
    )  # fmt: skip
    trainer = RLHBTrainer(request, Config(**TINY, discriminator="lm", d_lora_r=4, d_batch_size=4, heldout_max=4))
    d = trainer.discriminator
    assert dtypes(d.trunk, trainable=False) == {torch.bfloat16}
    assert dtypes(d, trainable=True) == {torch.float32}
    metrics = trainer.iteration(0)
    assert math.isfinite(metrics["d_loss"]) and math.isfinite(metrics["policy_loss"])
    for module in (trainer.policy.model, trainer.policy.value_head, d):
        assert {p.device for p in module.parameters()} == {torch.device("cpu")}
