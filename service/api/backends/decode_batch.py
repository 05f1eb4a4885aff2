"""The running batch of iteration-level scheduling: rows join and leave between decode steps.

Static batching runs one ``generate`` to completion: a request that arrives a moment later
waits for the whole batch, and a row that finished early holds its slot until the longest
row is done. Here the batch is re-formed at every decode step (Orca's iteration-level
scheduling, the idea behind vLLM's continuous batching):

- a new group of requests is prefilled on its own (``DecodeBatch.from_prefill``) and then
  concatenated to the running batch (``concat``), its keys/values left-padded in time so
  every row's cache ends at the same column;
- one decode step feeds every row its last sampled token (``step_inputs``); position ids
  come from each row's own count of real tokens, so rows of different lengths and padding
  layouts (the prefix-cache layout ``[prefix][padding][rest]`` included) see exactly the
  positions they would see alone;
- finished rows are dropped (``select``), and time columns no row attends to any more are
  trimmed off the front, so the cache does not grow with the history of the batch.

Holds tensors only (per-layer keys/values, the attention mask, each row's next token); the
rows' requests live with the caller. Shapes: B rows, T cached time steps, H key/value
heads, D head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeBatch:
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer (keys, values), each (B, H, T, D); RoPE already applied."""
    mask: torch.Tensor
    """(B, T) long: 1 where the cache column holds one of the row's real tokens."""
    last: torch.Tensor
    """(B,) long: the token each row feeds at the next step (sampled, not yet in the cache)."""

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def from_prefill(cls, cache, mask: torch.Tensor, first_tokens: torch.Tensor) -> DecodeBatch:
        """After a prefill forward: ``cache`` its past_key_values (prefix + prompt), ``mask`` (B, T)
        the attention mask it ran with, ``first_tokens`` (B,) the tokens sampled from its logits."""
        return cls(_layers(cache), mask, first_tokens)

    def step_inputs(self) -> dict:
        """Keyword arguments of the model forward for one decode step of every row."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k, v, i)
        ones = torch.ones_like(self.mask[:, :1])
        return {
            "input_ids": self.last[:, None],  # (B, 1)
            "attention_mask": torch.cat([self.mask, ones], dim=1),  # (B, T + 1)
            # the new token's position = how many real tokens the row has before it; the same
            # value generate derives from the mask (cumsum - 1 at the last column)
            "position_ids": self.mask.sum(dim=1, keepdim=True),  # (B, 1)
            "past_key_values": cache,
            "use_cache": True,
        }

    def advanced(self, cache, next_tokens: torch.Tensor) -> DecodeBatch:
        """The batch after a step: ``cache`` holds the fed tokens, ``next_tokens`` (B,) were sampled."""
        ones = torch.ones_like(self.mask[:, :1])
        return DecodeBatch(_layers(cache), torch.cat([self.mask, ones], dim=1), next_tokens)

    def select(self, keep: list[int]) -> DecodeBatch | None:
        """Only rows ``keep`` (in that order); None when no row is left."""
        if not keep:
            return None
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        # Columns no remaining row attends to (left padding, finished rows' history) only cost time.
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        kv = [(k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:]) for k, v in self.kv]
        return DecodeBatch(kv, mask[:, start:], self.last.index_select(0, idx))

    @staticmethod
    def concat(a: DecodeBatch | None, b: DecodeBatch) -> DecodeBatch:
        """Rows of ``a`` then rows of ``b``; the shorter cache is left-padded (masked) in time."""
        if a is None:
            return b
        width = max(a.mask.shape[1], b.mask.shape[1])
        a_kv, a_mask = _left_pad(a, width)
        b_kv, b_mask = _left_pad(b, width)
        kv = [(torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(a_kv, b_kv, strict=True)]
        return DecodeBatch(kv, torch.cat([a_mask, b_mask]), torch.cat([a.last, b.last]))


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(batch: DecodeBatch, width: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    extra = width - batch.mask.shape[1]
    if extra == 0:
        return batch.kv, batch.mask
    kv = []
    for k, v in batch.kv:
        pad = k.new_zeros(k.shape[0], k.shape[1], extra, k.shape[3])  # (B, H, extra, D)
        kv.append((torch.cat([pad, k], dim=2), torch.cat([pad, v], dim=2)))
    return kv, torch.cat([batch.mask.new_zeros(batch.mask.shape[0], extra), batch.mask], dim=1)


def sample_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, greedy: torch.Tensor
) -> torch.Tensor:
    """Next token per row (B,) from last-position ``logits`` (B, V): argmax for greedy rows,
    else temperature then nucleus (top_p) sampling with each row's own settings (B,)."""
    best = logits.argmax(dim=-1)  # (B,)
    if bool(greedy.all()):
        return best
    t = torch.where(greedy, torch.ones_like(temperature), temperature).clamp_min(1e-5)
    scores = logits / t[:, None]  # (B, V)
    p = top_p[:, None]
    if bool((p < 1.0).any()):
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = sorted_scores.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    sampled = torch.multinomial(scores.softmax(-1), 1)[:, 0]
    return torch.where(greedy, best, sampled)
