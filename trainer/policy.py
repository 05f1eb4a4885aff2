"""The generator pi(a | s, b) and its critic V(s; b) on one copy of the base weights.

- Actor: base causal LM + a trainable LoRA adapter (peft). The base weights stay frozen.
- Reference policy (KL term): the same model inside ``disable_adapter()`` (the base), or, after
  ``freeze_reference()``, a frozen second LoRA on the same base weights (``kl_reference="start"``).
- Critic: a small MLP value head over the actor's last hidden states, one value per
  response token. Its input is detached, so the critic loss never moves the actor.

Device and dtype: ``Policy.load(..., device, dtype)`` (``core.device.resolve_device``; the
trainer passes ``RLHB_DEVICE``/``RLHB_DTYPE``). The base weights take the dtype (bfloat16 on a
GPU by default), the LoRA stays float32 (peft's ``autocast_adapter_dtype``) and so does the
value head, which reads the features cast to float32. Every tensor this module makes goes
to ``policy.device``.

Departures from the paper: the paper's critic is a separate network; here it reads the
policy trunk's features (as TRL's value head does) but does not train them, which keeps the
update order "actor, then critic" meaningful and lets the critic train on the features
recorded at rollout time without another forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.prompts import render_prompt
from trainer.config import PPOConfig
from trainer.rollouts import Prompt, SequenceBatch, response_mask_from_eos

VALUE_HEAD_FILE = "value_head.safetensors"
REFERENCE_ADAPTER = "frozen_reference"
"""peft adapter name of the frozen copy ``freeze_reference`` makes; never saved with the policy."""

BaseSharder = Callable[[nn.Module, torch.device], None]
"""Shards a freshly built peft model's frozen base weights onto a device and moves its trainable
tensors there whole (``trainer.distributed.shard_base_model``)."""
_BASE_SHARDER: ContextVar[BaseSharder | None] = ContextVar("rlhb_base_sharder", default=None)


@contextlib.contextmanager
def sharded_base(shard: BaseSharder) -> Iterator[None]:
    """Every ``Policy.load`` inside this block loads the base on the CPU and hands it to ``shard``.

    A context variable rather than a ``Policy.load`` argument: the algorithms build their policy
    themselves (RLHBTrainer, RewardModelPPO, ...), and the distributed runner is the only one
    that knows the job shards; this way no algorithm changes.
    """
    token = _BASE_SHARDER.set(shard)
    try:
        yield
    finally:
        _BASE_SHARDER.reset(token)


def is_sharded(model: nn.Module) -> bool:
    """True when some of ``model``'s parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class ValueHead(nn.Module):
    """Token-level values from hidden states: (B, T, H) -> (B, T)."""

    def __init__(self, hidden_size: int, width: int) -> None:
        super().__init__()
        if width:
            self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, 1))
        # small last layer: initial values near 0, but not exactly 0 (a zero layer would
        # also zero the gradient of the layer before it on the first step)
        nn.init.normal_(self.net[-1].weight, std=0.01)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor  # (B, T) log-prob of each response token
    features: torch.Tensor  # (B, T, H) float32 last hidden states at the positions predicting them
    logits: torch.Tensor | None = None  # (B, T, V) response logits, when asked for


class Policy:
    """Actor (LoRA) + critic (value head) + tokenizer, with generation and scoring."""

    def __init__(self, model, tokenizer, value_head: ValueHead, config: PPOConfig) -> None:
        self.model = model  # peft.PeftModel around the causal LM
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.value_head = value_head.to(self.device)  # float32 whatever the trunk's dtype
        self.config = config
        self.eos_ids = _eos_ids(model, tokenizer)
        # FSDP2-sharded base (trainer.distributed, strategy fsdp): every forward all-gathers
        # the weights, a collective that every rank must enter the same number of times
        self.sharded = is_sharded(model)
        self.reference_frozen = False
        """True once ``freeze_reference`` made a frozen adapter copy the KL reference (else: the base)."""
        self.model.eval()  # no dropout anywhere: rollout-time and update-time log-probs agree

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(
        cls,
        model_path: str,
        config: PPOConfig,
        adapter_path: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
    ) -> Policy:
        """Base model from ``model_path`` with a fresh LoRA, or the adapter at ``adapter_path`` (trainable),
        on ``device`` with base weights in ``dtype`` (``core.device.resolve_device`` rules)."""
        from peft import LoraConfig, PeftModel, get_peft_model

        from core.device import resolve_device
        from core.model_loading import load_causal_lm

        device, dtype = resolve_device(device, dtype)
        shard = _BASE_SHARDER.get()
        # a base to shard is loaded on the CPU: the whole model need never fit on one GPU;
        # the sharder moves each rank's shard (and the LoRA) to ``device``
        load_device = torch.device("cpu") if shard is not None else device
        base, tokenizer = load_causal_lm(model_path, dtype=dtype, device=load_device, padding_side="left")
        for p in base.parameters():
            p.requires_grad_(False)
        if adapter_path is not None:
            model = PeftModel.from_pretrained(base, str(adapter_path), is_trainable=True)
        else:
            targets = config.lora_target_modules
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=linear_module_names(base) if targets == "all-linear" else list(targets),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(base, lora)
        if shard is not None:
            shard(model, device)
        value_head = ValueHead(base.config.hidden_size, config.value_head_hidden)
        if adapter_path is not None:
            state = Path(adapter_path) / "trainer_state" / VALUE_HEAD_FILE
            if state.exists():
                _load_matching(value_head, state)
        return cls(model, tokenizer, value_head, config)

    def freeze_reference(self) -> None:
        """Make the adapter's current weights the reference policy: a frozen copy as a second peft adapter.

        Costs the adapter's size in memory (a few MB), not a second model: both adapters share the
        base weights, and ``forward(reference=True)`` routes every row through the copy (peft's
        per-row ``adapter_names``, an inference-only path, which is all the reference needs). Once per
        policy: PPOCore calls it at the round's first rollout.
        """
        import copy

        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if self.sharded:
            raise ValueError(
                "kl_reference='start' needs the adapter copied whole; with an FSDP-sharded base use "
                "kl_reference='base' (or the replicate strategy)."
            )
        active = self.model.active_adapter
        self.model.add_adapter(REFERENCE_ADAPTER, copy.deepcopy(self.model.peft_config[active]))
        state = get_peft_model_state_dict(self.model, adapter_name=active)
        set_peft_model_state_dict(self.model, state, adapter_name=REFERENCE_ADAPTER)
        self.model.set_adapter(active)  # peft marks only the active adapter trainable
        for name, p in self.model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in name:
                p.requires_grad_(False)
        self.reference_frozen = True

    def save_adapter(self, folder: str | Path) -> None:
        """The trained adapter alone (peft would also write the frozen reference copy, in a subfolder)."""
        self.model.save_pretrained(str(folder), selected_adapters=[self.model.active_adapter])

    def actor_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.value_head.parameters())

    def save_value_head(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}, str(path))

    # ------------------------------------------------------------------ tokens
    def encode_prompts(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat-template prompts, left-padded: (B, P) ids and mask, on ``self.device``."""
        texts = [self.render(p) for p in prompts]
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,  # the chat template already has them
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def render(self, prompt: Prompt) -> str:
        """The chat prompt; an over-long query keeps its last tokens, the behavior sentence is never cut."""
        text = render_prompt(self.tokenizer, prompt.query, prompt.behavior)
        limit = self.config.max_prompt_tokens
        if len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit:
            return text
        empty = render_prompt(self.tokenizer, "", prompt.behavior)
        overhead = len(self.tokenizer(empty, add_special_tokens=False)["input_ids"])
        room = limit - overhead
        if room < 4:
            raise ValueError(
                f"max_prompt_tokens={limit} leaves no room for the query after the behavior prompt ({overhead} "
                "tokens); raise max_prompt_tokens"
            )
        query_ids = self.tokenizer(prompt.query, add_special_tokens=False)["input_ids"]
        # the re-rendered text can tokenize a few tokens longer at the seam: shrink until it fits
        while room > 0:
            text = render_prompt(self.tokenizer, self.tokenizer.decode(query_ids[-room:]), prompt.behavior)
            if len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit:
                return text
            room -= 2
        raise ValueError(f"cannot fit the prompt into max_prompt_tokens={limit}; raise it")

    def encode_pairs(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> SequenceBatch:
        """Given answers (e.g. logged ones, for SFT/PRO) as a batch; each answer ends with EOS."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        eos = self.tokenizer.eos_token_id
        rows = [
            self.tokenizer(r, add_special_tokens=False)["input_ids"][: self.config.max_new_tokens - 1] + [eos]
            for r in responses
        ]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        # filled row by row on the CPU (one small copy per row), then moved once
        response_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        response_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            response_ids[i, : len(r)] = torch.tensor(r)
            response_mask[i, : len(r)] = 1
        response_ids, response_mask = response_ids.to(self.device), response_mask.to(self.device)
        return SequenceBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            queries=[p.query for p in prompts],
            behaviors=[p.behavior for p in prompts],
            responses=[self.decode(r) for r in rows],
            prompt_index=torch.arange(len(rows), device=self.device),
        )

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(t) for t in ids if int(t) not in self.eos_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], rollouts_per_prompt: int) -> SequenceBatch:
        """k sampled answers per prompt (KV cache on), rows grouped by prompt."""
        cfg = self.config
        repeated = [p for p in prompts for _ in range(rollouts_per_prompt)]
        unique_ids, unique_mask = self.encode_prompts(prompts)  # (P, L): left-padded as the repeated batch would be
        prompt_ids = unique_ids.repeat_interleave(rollouts_per_prompt, 0)  # (B, L), rows grouped by prompt
        prompt_mask = unique_mask.repeat_interleave(rollouts_per_prompt, 0)  # (B, L)
        # sharded: keep decoding until every rank is done (the ranks' answers end at different
        # steps, and each step's forward all-gathers the weights with all of them)
        sync = {"synced_gpus": True} if self.sharded else {}
        with merged_lora(self.model):
            shared = {} if self.sharded else self._shared_prefill(unique_ids, unique_mask, rollouts_per_prompt)
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                **shared,
                do_sample=True,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                **sync,
            )
        response_ids = out[:, prompt_ids.shape[1] :]  # (B, T)
        response_mask = response_mask_from_eos(response_ids, self.eos_ids)  # (B, T)
        response_ids = torch.where(response_mask.bool(), response_ids, self.tokenizer.pad_token_id)
        width = int(response_mask.sum(1).max())  # drop columns no row uses
        response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
        return SequenceBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            queries=[p.query for p in repeated],
            behaviors=[p.behavior for p in repeated],
            responses=[self.decode(r[m.bool()].tolist()) for r, m in zip(response_ids, response_mask, strict=True)],
            prompt_index=torch.arange(len(prompts), device=self.device).repeat_interleave(rollouts_per_prompt),
        )

    def _shared_prefill(self, ids: torch.Tensor, mask: torch.Tensor, k: int) -> dict:
        """``{"past_key_values": cache}`` of every distinct prompt but its last token, computed once and repeated
        for its ``k`` rollouts (``{}`` when k = 1): the rollouts of one prompt share it, so the prefill costs a
        k-th of prefilling the repeated batch. generate() then feeds only the last prompt token and decodes
        as before. Positions count real tokens only, as generate() does for left-padded prompts (padding
        is masked, so what it holds does not matter). ids, mask: (P, L)."""
        if k == 1 or ids.shape[1] < 2:
            return {}
        positions = (mask.cumsum(1) - 1).clamp_min(0)  # (P, L)
        out = self.model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)  # (P, ...) -> (P * k, ...), row i * k + j = prompt i
        return {"past_key_values": cache}

    # ------------------------------------------------------------------ scoring
    def forward(self, batch: SequenceBatch, *, reference: bool = False, keep_logits: bool = False) -> ForwardOutput:
        """Log-probs of the response tokens (with gradient unless under no_grad) and the features.

        reference=True runs the reference policy: the base model (adapter disabled), or the frozen
        adapter copy once ``freeze_reference`` made one.
        """
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)  # (B, P+T)
        attention = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)  # (B, P+T)
        # positions count real tokens only, as generate() does for left-padded prompts
        position_ids = (attention.cumsum(dim=1) - 1).clamp_min(0)  # (B, P+T)
        num_response = batch.response_ids.shape[1]
        routing = {}
        if reference and self.reference_frozen:
            routing = {"adapter_names": [REFERENCE_ADAPTER] * input_ids.shape[0]}
        ctx = self.model.disable_adapter() if reference and not routing else contextlib.nullcontext()
        with ctx:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=num_response + 1,  # LM head only where response tokens are predicted
                use_cache=False,
                **routing,
            )
        logits = out.logits[:, :-1].float()  # (B, T, V): position P-1+t predicts response token t
        if self.config.temperature != 1.0:
            logits = logits / self.config.temperature
        logprobs = torch.gather(logits, 2, batch.response_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
            logits, dim=-1
        )  # (B, T)
        # (B, T, H); float32 for the value head whatever the trunk's dtype (a no-op in float32)
        features = out.hidden_states[-1][:, -num_response - 1 : -1].float()
        return ForwardOutput(
            logprobs=logprobs,
            features=features.detach(),
            logits=logits if keep_logits else None,
        )

    def values(self, features: torch.Tensor) -> torch.Tensor:
        """Critic V(s_t; b): (B, T, H) -> (B, T)."""
        return self.value_head(features)


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names ("q_proj", "down_proj", ...) of every linear layer except the LM head.

    peft's own "all-linear" writes full module paths into adapter_config.json; short names are
    what vLLM's LoRA loader and most tools expect, and they select the same layers.
    """
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and module is not head
    }
    head_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    return sorted(names - head_names)


@contextlib.contextmanager
def merged_lora(model):
    """Sample with the LoRA update folded into the base weights (W + s B A).

    Unmerged, every adapted layer runs two extra small matmuls per decoded token; at the
    benchmark's sizes that was about 45% of the CPU time of sampling. Afterwards the base
    weights are restored bit-exactly from a copy (unmerging by subtraction alone would leave
    rounding drift in the frozen weights and hence in the reference policy). Log-probs for PPO
    are recomputed unmerged (``forward``), so only the sampling sees the merged rounding.

    A sharded base (FSDP2) samples unmerged: its weights are shards outside each forward, and
    adding the whole LoRA update to a shard is not defined (torch refuses Tensor + DTensor).
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
    if not layers or not hasattr(model, "merge_adapter") or is_sharded(model):
        yield
        return
    saved = []
    for layer in layers:
        base = layer.get_base_layer()
        bias = getattr(base, "bias", None)
        saved.append((base, base.weight.detach().clone(), None if bias is None else bias.detach().clone()))
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for base, weight, bias in saved:
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return {int(i) for i in ids if i is not None}


def _load_matching(module: nn.Module, path: Path) -> None:
    """Load a saved state if every tensor's shape matches (a resized head starts fresh)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = module.state_dict()
    if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
        module.load_state_dict(state)
