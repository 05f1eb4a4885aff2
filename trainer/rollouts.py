"""Token batches of (prompt, response) pairs and the rollouts PPO learns from.

Layout: prompts are LEFT-padded (so every prompt ends at the same column and generation
continues from there), responses RIGHT-padded (so per-token tensors line up with the
(B, T) masks that ``trainer.losses`` expects). A response's mask runs up to and including
its first EOS; nothing after it counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported where used: ``Prompt`` must stay cheap to import
    import torch


class Prompt(NamedTuple):
    """One (query s, behavior sentence b) pair to answer."""

    query: str
    behavior: str


@dataclass
class SequenceBatch:
    """B (prompt, response) pairs as tokens, plus their texts."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 1 = real token
    response_ids: torch.Tensor  # (B, T) long, right-padded with the pad id
    response_mask: torch.Tensor  # (B, T) long, 1 = real token (through the first EOS)
    queries: list[str]
    behaviors: list[str]
    responses: list[str]  # decoded answers, EOS and padding removed
    prompt_index: torch.Tensor | None = field(default=None)  # (B,) which distinct prompt each row answers

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> SequenceBatch:
        """The sub-batch of ``rows`` (keeps padding columns; masks make them harmless)."""
        import torch

        idx = torch.as_tensor(rows, dtype=torch.long)
        pick = [int(i) for i in idx]
        return SequenceBatch(
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx],
            queries=[self.queries[i] for i in pick],
            behaviors=[self.behaviors[i] for i in pick],
            responses=[self.responses[i] for i in pick],
            prompt_index=None if self.prompt_index is None else self.prompt_index[idx],
        )


@dataclass
class Rollouts:
    """Generated answers with everything PPO needs, all recorded under the rollout-time policy."""

    batch: SequenceBatch
    logprobs: torch.Tensor  # (B, T) log pi_old(a_t | s, b, a_<t)
    ref_logprobs: torch.Tensor  # (B, T) the same with the adapter disabled (reference policy)
    values: torch.Tensor  # (B, T) V(s_t; b) from the critic
    features: torch.Tensor  # (B, T, H) detached last hidden states the critic reads
    scores: torch.Tensor | None = None  # (B,) sequence scores from the reward function
    live_forward: object | None = None  # policy ForwardOutput with its autograd graph (fused first update)


def response_mask_from_eos(response_ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it.

    response_ids: (B, T) -> (B, T) long.
    """
    import torch

    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= response_ids == eos
    # number of EOS strictly before position t; the mask keeps positions with none before them
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # (B, T)
    return (eos_before == 0).long()


def missing_eos(batch: SequenceBatch, eos_ids: set[int]) -> torch.Tensor:
    """Rows whose last real token is not an end-of-sequence token: the answer ran to the token budget.

    batch.response_ids, batch.response_mask: (B, T) -> (B,) bool.
    """
    import torch

    last = (batch.response_mask.sum(1) - 1).clamp(min=0)  # (B,) index of each row's last real token
    last_token = batch.response_ids.gather(1, last.unsqueeze(1)).squeeze(1)  # (B,)
    eos = torch.tensor(sorted(eos_ids), dtype=last_token.dtype, device=last_token.device)
    return ~torch.isin(last_token, eos)
