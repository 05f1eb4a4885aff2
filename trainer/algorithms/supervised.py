"""What the supervised baselines (SFT, PRO) share: their config fields, the LoRA policy
(fresh or a parent adapter), log-probs of given answers, and the optimizer step.

They reuse ``trainer.policy.Policy`` (the same prompt template, LoRA layout and tokenization
as the PPO algorithms), so any of their checkpoints can seed a PPO run and vice versa.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.algorithms.conditioning import check_prompt_behavior
from trainer.algorithms.ppo_core import check_finite
from trainer.config import PPOConfig
from trainer.policy import Policy
from trainer.rollouts import Prompt


@dataclass
class SupervisedConfig:
    """LoRA policy and optimizer settings of a supervised run."""

    lora_r: int = 16
    """LoRA rank of the policy adapter (ignored when starting from a parent adapter)."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """Modules to adapt: "all-linear" or a tuple of module names."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the adapter."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this are cut from the left."""
    max_response_tokens: int = 128
    """Answers are cut to this many tokens (EOS included)."""
    prompt_behavior: str = "preferred"
    """Behavior sentence in the prompts: 'preferred' (the serving default), 'record', or 'none'."""
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""

    def __post_init__(self) -> None:
        check_prompt_behavior(self.prompt_behavior)
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(f"lora_r and lora_alpha must be >= 1; got {self.lora_r}, {self.lora_alpha}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1); got {self.learning_rate}. LoRA wants 1e-5 to 1e-3")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        if self.max_response_tokens < 2 or self.max_prompt_tokens < 8:
            raise ValueError("max_response_tokens must be >= 2 and max_prompt_tokens >= 8")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0; got {self.threads}")

    def policy_config(self, **sampling) -> PPOConfig:
        """The ``PPOConfig`` ``Policy`` reads (LoRA layout, token limits, sampling)."""
        return PPOConfig(
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_target_modules=self.lora_target_modules,
            max_new_tokens=self.max_response_tokens,
            max_prompt_tokens=self.max_prompt_tokens,
            threads=self.threads,
            **sampling,
        )


def answer_logprobs(
    policy: Policy, prompts: Sequence[Prompt], answers: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each answer (its tokens and EOS) given its prompt, with gradient,
    and the number of those tokens: (B,), (B,)."""
    batch = policy.encode_pairs(prompts, answers)
    out = policy.forward(batch)  # logprobs (B, T)
    mask = batch.response_mask.to(out.logprobs.dtype)  # (B, T)
    return (out.logprobs * mask).sum(1), mask.sum(1)


class AdapterOptimizer:
    """AdamW on the policy's LoRA parameters, with gradient clipping and a NaN guard."""

    def __init__(self, policy: Policy, config: SupervisedConfig) -> None:
        self.params = policy.actor_parameters()
        self.max_grad_norm = config.max_grad_norm
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)

    def step(self, loss: torch.Tensor, name: str) -> float:
        """Backward + step; raises TrainingDiverged before stepping on a NaN/inf loss. Returns the grad norm."""
        check_finite(name, loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or math.inf)
        self.optimizer.step()
        return float(norm)
