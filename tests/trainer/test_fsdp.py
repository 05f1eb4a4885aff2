"""Strategy fsdp: the policy's frozen base weights sharded over two real gloo processes (FSDP2, CPU).

- Same data, same update: two ranks, each with half of a fixed batch, take the same two SGD
  steps on the LoRA as one unsharded process on the whole batch. SGD makes the update linear
  in the gradient, so a LoRA gradient averaged twice (FSDP and the hooks) or not at all would
  show as a different update; the sharded forward must also give the unsharded log-probs.
- Each rank holds about half of the base weights, and sampling through the sharded model
  works while the ranks' answers end at different steps (``synced_gpus``).
- The adapter rank 0 saves is a normal, whole PEFT folder that loads into an unsharded model.
- End to end: ``torchrun -m trainer.distributed --strategy fsdp`` trains RLHB iterations with
  the replicas staying identical, and rank 0's checkpoint loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core.infra.ports import free_port
from tests.helpers.behavior_toy import toy_records
from tests.trainer.test_distributed import TINY_RLHB

PAIRS = [
    ("What is the capital of France?", "Paris is the capital."),
    ("Name a colour.", "Blue."),
    ("How many legs does a spider have?", "Eight legs, always eight."),
    ("Say hello.", "Hello there, friend."),
]
BEHAVIOR = "The answer was liked."
LR = 0.5  # large enough that two steps visibly move the LoRA
STEPS = 2  # LoRA B starts at zero, so A first gets a gradient at step 2
SAMPLE_LIMITS = (3, 9)  # max_new_tokens of rank 0 and rank 1 when they sample


def _config():
    from trainer.config import PPOConfig

    return PPOConfig(lora_r=4, lora_alpha=8, value_head_hidden=8, max_new_tokens=12, temperature=1.0)


def _train(policy, pairs, steps: int = STEPS) -> list[float]:
    """``steps`` SGD steps on the mean over ``pairs`` of each answer's mean token log-likelihood.

    A mean of per-answer means: two ranks with two answers each average to exactly the loss of
    one process with all four, so their averaged gradient is the one process's gradient."""
    from trainer.rollouts import Prompt

    params = policy.actor_parameters()
    optimizer = torch.optim.SGD(params, lr=LR)
    batch = policy.encode_pairs([Prompt(query=q, behavior=BEHAVIOR) for q, _ in pairs], [a for _, a in pairs])
    losses = []
    for _ in range(steps):
        out = policy.forward(batch)
        mask = batch.response_mask.float()  # (B, T)
        loss = -((out.logprobs * mask).sum(1) / mask.sum(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _lora(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}


def _rank_main(rank: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from torch.distributed.tensor import DTensor

    from trainer import distributed
    from trainer.policy import Policy
    from trainer.rollouts import Prompt

    ctx = distributed.init_from_env(device="cpu", timeout_seconds=120, strategy="fsdp")
    distributed.seed_replicas(0)
    with distributed.policy_loading(ctx):
        policy = Policy.load(model_dir, _config(), device="cpu", dtype="float32")
    frozen = [p for p in policy.model.parameters() if not p.requires_grad]
    full = sum(p.numel() for p in frozen)  # a DTensor's numel is its whole (global) size
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in frozen)
    initial = _lora(policy)
    sync = distributed.GradientSync(policy.actor_parameters(), ctx)
    losses = _train(policy, PAIRS[2 * rank : 2 * rank + 2])  # this rank's half of the batch
    sync.remove()
    with torch.no_grad():  # the whole batch through the sharded model, after training
        batch = policy.encode_pairs([Prompt(q, BEHAVIOR) for q, _ in PAIRS], [a for _, a in PAIRS])
        logprobs = policy.forward(batch).logprobs

    # sampling, with answers that end at different steps on the two ranks (the tiny random model
    # seldom samples EOS, so the ranks get different length limits): the rank that finishes first
    # must keep joining the other's all-gathers, or both wait forever
    distributed.seed_sampling(0, ctx)
    policy.config = dataclasses.replace(policy.config, max_new_tokens=SAMPLE_LIMITS[rank])
    sampled = policy.generate([Prompt(query=PAIRS[rank][0], behavior=BEHAVIOR)], 3)
    if ctx.is_main:
        policy.model.save_pretrained(Path(out, "adapter"))
    distributed.barrier(ctx)
    torch.save(
        {
            "sharded": policy.sharded,
            "full": full,
            "local": local,
            "dtensors": sum(isinstance(p, DTensor) for p in frozen),
            "lora_dtensors": sum(isinstance(p, DTensor) for p in policy.actor_parameters()),
            "initial": initial,
            "lora": _lora(policy),
            "losses": losses,
            "answer_lengths": sampled.response_mask.sum(1).tolist(),
            "logprobs": logprobs,
        },
        Path(out, f"rank{rank}.pt"),
    )
    distributed.shutdown(ctx)


def test_two_fsdp_ranks_make_the_update_of_one_process_and_save_a_whole_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from core.model_loading import load_causal_lm
    from trainer import distributed
    from trainer.policy import Policy
    from trainer.rollouts import Prompt

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mp.spawn(_rank_main, args=(free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # one unsharded process on the whole batch
    distributed.seed_replicas(0)
    reference = Policy.load(str(tiny_model_dir), _config(), device="cpu", dtype="float32")
    assert not reference.sharded
    initial = _lora(reference)
    batch = reference.encode_pairs([Prompt(q, BEHAVIOR) for q, _ in PAIRS], [a for _, a in PAIRS])
    with torch.no_grad():
        start_logprobs = reference.forward(batch).logprobs
    losses = _train(reference, PAIRS)
    expected = _lora(reference)
    with torch.no_grad():
        final_logprobs = reference.forward(batch).logprobs

    for r in ranks:
        # the base is sharded: about half of the frozen weights live on each rank, the LoRA is whole
        assert r["sharded"] and r["dtensors"] > 0 and r["lora_dtensors"] == 0
        assert r["local"] <= 0.55 * r["full"], (r["local"], r["full"])
        assert r["initial"].keys() == expected.keys()
        assert all(torch.equal(r["initial"][n], initial[n]) for n in initial)  # same seed, same LoRA start
        # the same update as one process: each gradient averaged exactly once
        for name, tensor in expected.items():
            torch.testing.assert_close(r["lora"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
        # the sharded forward computes what the whole model computes
        torch.testing.assert_close(r["logprobs"], final_logprobs, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(expected[n], initial[n]) for n in initial)  # training moved the LoRA
    assert not torch.allclose(final_logprobs, start_logprobs)
    # each rank's loss is that of its half; their mean is the one process's loss
    assert (ranks[0]["losses"][0] + ranks[1]["losses"][0]) / 2 == pytest.approx(losses[0], rel=1e-5)
    # the ranks decoded different numbers of steps through the sharded model, and both returned
    lengths = [r["answer_lengths"] for r in ranks]
    assert len(lengths[0]) == len(lengths[1]) == 3
    assert max(lengths[0]) <= SAMPLE_LIMITS[0] < max(lengths[1]) <= SAMPLE_LIMITS[1], lengths

    # rank 0's adapter: a normal PEFT folder with whole tensors that loads into an unsharded model
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    base, _ = load_causal_lm(str(tiny_model_dir), dtype=torch.float32, device="cpu")
    loaded = PeftModel.from_pretrained(base, str(adapter))
    loaded_lora = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert len(loaded_lora) == len(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded_lora[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_torchrun_fsdp_rlhb_iterations_keep_replicas_identical(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from core.model_loading import load_causal_lm

    records = tmp_path / "records.jsonl"
    records.write_text("".join(r.model_dump_json() + "\n" for r in toy_records(n_queries=12)))
    out, digests = tmp_path / "versions", tmp_path / "digests"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "trainer.distributed", "--strategy", "fsdp",
        "--records", str(records), "--model-path", str(tiny_model_dir), "--output-root", str(out),
        "--version-name", "fsdp-v1", "--steps", "2", "--seed", "3", "--device", "cpu", "--dtype", "float32",
        "--digest-dir", str(digests), "--backend", "gloo", "--config", json.dumps(TINY_RLHB),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["strategy"], r["sharded"]) for r in ranks] == [("fsdp", True)] * 2
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] == ranks[1]["final"] != ranks[0]["initial"]
    local0, local1 = (r["local_metrics"] for r in ranks)
    assert any(local0[i][k] != local1[i][k] for i in range(2) for k in ("mean_score", "mean_return", "kl"))
    assert ranks[0]["checkpoint"] == str(out / "fsdp-v1") and ranks[1]["checkpoint"] is None
    base, _ = load_causal_lm(str(tiny_model_dir), dtype=torch.float32, device="cpu")
    loaded = PeftModel.from_pretrained(base, str(out / "fsdp-v1"))
    assert any(n for n, _ in loaded.named_parameters() if "lora_B" in n)
    assert any(float(p.abs().sum()) > 0 for n, p in loaded.named_parameters() if "lora_B" in n)  # trained, not fresh


def test_strategy_is_checked(monkeypatch):
    from trainer import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="strategy must be one of replicate, fsdp"):
        distributed.init_from_env(strategy="zero3")
    assert distributed.init_from_env(strategy="fsdp") == distributed.SINGLE_PROCESS  # one process: nothing to shard


def test_the_trainer_setting_selects_the_strategy(monkeypatch):
    from pydantic import ValidationError

    from core.settings import TrainerSettings

    monkeypatch.delenv("RLHB_TRAINER_DIST_STRATEGY", raising=False)
    assert TrainerSettings().dist_strategy == "replicate"
    monkeypatch.setenv("RLHB_TRAINER_DIST_STRATEGY", "fsdp")
    assert TrainerSettings().dist_strategy == "fsdp"
    monkeypatch.setenv("RLHB_TRAINER_DIST_STRATEGY", "zero3")
    with pytest.raises(ValidationError, match="dist_strategy"):
        TrainerSettings()
