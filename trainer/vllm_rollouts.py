"""Rollouts sampled by vLLM servers with the current policy's LoRA loaded (TRL's vLLM server mode).

With ``rollout_backend="vllm"`` (trainer/config.py) each PPO rollout:

1. saves the policy's current LoRA (peft ``save_pretrained``) into a fresh folder under
   ``vllm_lora_dir``, a folder the vLLM servers read at the same path (a shared volume);
2. loads it into every server with ``POST /v1/load_lora_adapter {lora_name, lora_path}`` under a
   fresh name (``rollout.<nonce>.<n>``): a name is never reused, so vLLM's prefix cache cannot
   answer from an older adapter's entries (vllm#42125, vllm#30931). If one server refuses, the
   others unload it again and the rollout fails with the servers' answers;
3. samples the k answers per prompt with ``POST /v1/completions`` (the prompts rendered here with
   the chat template, the rows split across the servers), asking for the sampled token ids
   (``return_token_ids``, vLLM >= 0.10.2). A server that returns only text (older vLLM) has its
   text tokenized here with the policy's tokenizer: the ids PPO trains on then decode to the
   sampled text but may split it differently from the sampled ids; the update stays consistent
   because it scores whatever ids the batch holds;
4. unloads the previous iteration's adapter from every server and deletes its folder.

The PPO update then recomputes pi_old, pi_ref and the values with the policy itself
(``PPOCore.evaluate``), exactly as after in-process sampling: vLLM's own log-probs are not used
(its kernels and sampling differ slightly from the training forward). An answer that stopped
(``finish_reason == "stop"``) ends with EOS, one cut at ``max_new_tokens`` does not, as in
``Policy.generate``.

Configure the servers for the trainer's LoRA: ``--enable-lora --max-lora-rank`` >= ``lora_r``,
and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (docker-compose.yml's ``vllm`` profile does).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer.config import PPOConfig
from trainer.rollouts import Prompt, SequenceBatch

log = logging.getLogger(__name__)


class VllmRolloutError(RuntimeError):
    """A vLLM server refused the adapter or a completion request."""


def completion_request(config: PPOConfig, model: str, prompts: list[str]) -> dict[str, Any]:
    """Body of ``POST /v1/completions`` for a list of rendered prompts, one answer each."""
    return {
        "model": model,
        "prompt": prompts,
        "n": 1,
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        **({"top_k": config.top_k} if config.top_k else {}),
        "return_token_ids": True,
        "stream": False,
    }


def response_ids(choice: dict[str, Any], tokenizer: Any, eos_ids: set[int], eos_id: int, max_new: int) -> list[int]:
    """The answer's token ids as ``Policy.generate`` would hold them: the sampled ids when the server
    returns them, else the text tokenized; ending with EOS when it stopped, at most ``max_new``."""
    ids = choice.get("token_ids")
    ids = list(ids) if ids is not None else tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"]
    for i, t in enumerate(ids):  # nothing after a first EOS counts (response_mask_from_eos)
        if t in eos_ids:
            return ids[: i + 1][:max_new]
    if choice.get("finish_reason") == "stop":
        return ids[: max_new - 1] + [eos_id]
    return ids[:max_new]


class VllmRolloutSampler:
    """One trainer's view of the vLLM servers: the adapter loaded now, and the sampling."""

    def __init__(self, config: PPOConfig, *, transport: Any = None) -> None:
        import httpx

        self.config = config
        self.urls = [u.strip().rstrip("/") for u in config.vllm_urls.split(",") if u.strip()]
        self.lora_dir = Path(config.vllm_lora_dir)
        self._clients = [
            httpx.Client(base_url=u, timeout=httpx.Timeout(config.vllm_timeout_s, connect=10), transport=transport)
            for u in self.urls
        ]
        self._nonce = uuid.uuid4().hex[:8]  # several trainers (ranks, restarts) never share a name
        self._loads = itertools.count(1)
        self.current: tuple[str, Path] | None = None
        """(served name, folder) of the adapter the servers sample with now."""

    # ------------------------------------------------------------------ adapter
    def sync(self, policy: Any) -> str:
        """Publish the policy's current LoRA to every server under a fresh name; unload the previous one."""
        n = next(self._loads)
        name = f"rollout.{self._nonce}.{n}"
        folder = self.lora_dir / f"rollout-{self._nonce}-{n}"
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        policy.save_adapter(folder)
        body = {"lora_name": name, "lora_path": str(folder)}
        answers = self._on_every_server("/v1/load_lora_adapter", body)
        failed = [(u, a) for u, a in zip(self.urls, answers, strict=True) if not _ok(a)]
        if failed:
            loaded = [i for i, a in enumerate(answers) if _ok(a)]
            for i in loaded:
                self._post(i, "/v1/unload_lora_adapter", {"lora_name": name})
            shutil.rmtree(folder, ignore_errors=True)
            raise VllmRolloutError(
                f"vLLM could not load the rollout adapter {name!r} from {folder} on "
                + "; ".join(f"{u}: {_why(a)}" for u, a in failed)
                + " (is the folder shared with the servers at the same path, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                "--enable-lora and --max-lora-rank >= lora_r set?)"
            )
        previous, self.current = self.current, (name, folder)
        if previous is not None:
            self._drop(previous)
        return name

    def close(self) -> None:
        """Unload the current adapter everywhere and delete its folder."""
        if self.current is not None:
            self._drop(self.current)
            self.current = None
        for client in self._clients:
            client.close()

    def _drop(self, load: tuple[str, Path]) -> None:
        name, folder = load
        for url, answer in zip(
            self.urls, self._on_every_server("/v1/unload_lora_adapter", {"lora_name": name}), strict=True
        ):
            if not _ok(answer):  # a leftover costs the server memory only: the name is never used again
                log.warning("vLLM %s did not unload rollout adapter %s: %s", url, name, _why(answer))
        shutil.rmtree(folder, ignore_errors=True)

    def _post(self, i: int, path: str, body: dict) -> Any:
        try:
            return self._clients[i].post(path, json=body)
        except Exception as e:  # noqa: BLE001 - a server away is an answer like a refusal
            return e

    def _on_every_server(self, path: str, body: dict) -> list[Any]:
        with ThreadPoolExecutor(len(self._clients)) as pool:
            return list(pool.map(lambda i: self._post(i, path, body), range(len(self._clients))))

    # ------------------------------------------------------------------ sampling
    def generate(self, policy: Any, prompts: Sequence[Prompt], rollouts_per_prompt: int) -> SequenceBatch:
        """k answers per prompt sampled by vLLM with the policy's current LoRA, rows grouped by prompt
        (the same layout as ``Policy.generate``)."""
        import torch

        cfg = self.config
        name = self.sync(policy)
        repeated = [p for p in prompts for _ in range(rollouts_per_prompt)]
        texts = [policy.render(p) for p in repeated]
        # contiguous shares of the rows, one per server, sampled concurrently
        share = -(-len(texts) // len(self._clients))
        chunks = [(i, texts[i * share : (i + 1) * share]) for i in range(len(self._clients)) if texts[i * share :]]

        def sample(job: tuple[int, list[str]]) -> list[dict]:
            i, chunk = job
            answer = self._post(i, "/v1/completions", completion_request(cfg, name, chunk))
            if not _ok(answer):
                raise VllmRolloutError(f"vLLM {self.urls[i]} did not sample the rollouts: {_why(answer)}")
            choices = sorted(answer.json()["choices"], key=lambda c: c["index"])
            if len(choices) != len(chunk):
                raise VllmRolloutError(f"vLLM {self.urls[i]} returned {len(choices)} answers for {len(chunk)} prompts")
            return choices

        with ThreadPoolExecutor(len(chunks)) as pool:
            choices = [c for part in pool.map(sample, chunks) for c in part]
        tok = policy.tokenizer
        rows = [
            response_ids(c, tok, policy.eos_ids, tok.eos_token_id, cfg.max_new_tokens) or [tok.eos_token_id]
            for c in choices
        ]
        prompt_ids, prompt_mask = policy.encode_prompts(repeated)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return SequenceBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=ids.to(policy.device),
            response_mask=mask.to(policy.device),
            queries=[p.query for p in repeated],
            behaviors=[p.behavior for p in repeated],
            responses=[policy.decode(r) for r in rows],
            prompt_index=torch.arange(len(prompts), device=policy.device).repeat_interleave(rollouts_per_prompt),
        )


def _ok(answer: Any) -> bool:
    return not isinstance(answer, Exception) and answer.status_code < 400


def _why(answer: Any) -> str:
    if isinstance(answer, Exception):
        return f"{type(answer).__name__}: {answer}"
    return f"{answer.status_code} {answer.text[:300]}"
