"""sft and pro rounds data-parallel under torch.distributed (gloo, CPU), as `rlhb trainer` runs them.

Two processes (torch.multiprocessing) play rank 0 (``send_round`` then ``train_round``) and
rank 1 (``follow_rounds``). Every rank draws the same batch and trains on its share of it
(``BatchShard``); batch sizes are odd, so the shares differ in size and the loss weighting
matters. The test checks that the ranks trained on different, complementary shares, that the
replicas' LoRA is bit-identical afterwards, and that it equals (within float tolerance) the LoRA
of one process trained on the whole batches with the same seed. The optimizer is swapped for
plain SGD: AdamW's first steps are close to sign(gradient), which float rounding can flip for
near-zero entries, so it would blur the comparison without testing more of the averaging.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core.infra.ports import free_port

SGD_LR = 0.2
PRO_METRICS = ["pro_loss", "sft_loss", "rank_accuracy", "list_len"]  # means over lists: weighted by each share
SHARED = {"lora_r": 4, "lora_alpha": 8, "max_response_tokens": 12, "threads": 1}
ROUNDS = [  # (version name, algorithm, config, steps)
    ("sft-1", "sft", {**SHARED, "top_fraction": 0.5, "batch_size": 5}, 2),  # shares of 3 and 2 pairs
    ("pro-1", "pro", {**SHARED, "batch_size": 3, "max_list_len": 3}, 2),  # shares of 2 and 1 lists
    ("sft-empty", "sft", {**SHARED, "top_fraction": 0.5, "batch_size": 1}, 2),  # rank 1: an empty share
]


def round_records() -> list:
    """toy_task records; each query's 4 answers get distinct rewards, so PRO has 12 ranked lists."""
    from tests.helpers.toy_task import toy_records

    return [r.model_copy(update={"reward": r.reward + 0.05 * (i // 12)}) for i, r in enumerate(toy_records(48))]


def round_request(version: str, algorithm: str, steps: int, model_dir: str, out: str):
    from trainer.algorithms.base import TrainRequest

    return TrainRequest(
        records=round_records(), model_path=model_dir, output_root=Path(out) / "versions", version_name=version,
        seed=5, steps=steps, progress=False, device="cpu", dtype="float32",
    )  # fmt: skip


def round_config(algorithm: str, overrides: dict):
    from trainer.algorithms import default_config
    from trainer.config import apply_overrides

    return apply_overrides(default_config(algorithm), overrides, variable="TEST")


def use_sgd(trainer) -> None:
    trainer.optimizer.optimizer = torch.optim.SGD(trainer.optimizer.params, lr=SGD_LR)


def lora_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}


def _rank_main(rank: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from trainer import distributed

    ctx = distributed.init_from_env(device="cpu", timeout_seconds=120)
    built, shares = [], []
    original_prepare, original_take = distributed.prepare_trainer, distributed.BatchShard.take

    def prepare_with_sgd(trainer, ctx, seed):
        built.append(trainer)
        sync = original_prepare(trainer, ctx, seed)
        use_sgd(trainer)
        return sync

    def recording_take(self, batch):
        share, real = original_take(self, batch)
        shares[-1].append([repr(item) for item in share] if real else [])
        return share, real

    distributed.prepare_trainer = prepare_with_sgd
    distributed.BatchShard.take = recording_take
    record: dict = {"rank": rank, "rounds": {}}
    if ctx.is_main:
        for version, algorithm, overrides, steps in ROUNDS:
            shares.append([])
            request = round_request(version, algorithm, steps, model_dir, out)
            config = round_config(algorithm, overrides)
            distributed.send_round(ctx, algorithm, request, config)
            result = distributed.train_round(algorithm, request, config, ctx)
            record["rounds"][version] = {"checkpoint": str(result.checkpoint), "metrics": result.metrics}
        distributed.send_message(ctx, {"kind": "stop"})
    else:
        original_train = distributed.train_round

        def train_and_count(algorithm, request, config, ctx):
            shares.append([])
            return original_train(algorithm, request, config, ctx)

        distributed.train_round = train_and_count
        assert distributed.follow_rounds(ctx, "cpu", "float32") == len(ROUNDS)
    for (version, *_), trainer, seen in zip(ROUNDS, built, shares, strict=True):
        torch.save(lora_state(trainer), Path(out, f"{version}-rank{rank}.pt"))
        record["rounds"].setdefault(version, {})["shares"] = seen
    Path(out, f"rank{rank}.json").write_text(json.dumps(record, default=str))
    distributed.shutdown(ctx)


def one_process(version: str, algorithm: str, overrides: dict, steps: int, model_dir: str, out: str):
    """The same round in this process alone, on the whole batches."""
    from trainer import distributed

    ctx = distributed.SINGLE_PROCESS
    request = round_request(version, algorithm, steps, model_dir, out)
    trainer = distributed.build_trainer(algorithm, request, round_config(algorithm, overrides), ctx)
    distributed.prepare_trainer(trainer, ctx, request.seed)
    use_sgd(trainer)
    result = distributed.run_iterations(trainer, algorithm, ctx)
    return lora_state(trainer), result.metrics


def test_sft_and_pro_rounds_split_each_batch_over_two_gloo_ranks(tmp_path, tiny_model_dir):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mp.spawn(_rank_main, args=(free_port(), str(tiny_model_dir), str(tmp_path / "ddp")), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    for version, algorithm, overrides, steps in ROUNDS:
        round0, round1 = rank0["rounds"][version], rank1["rounds"][version]
        # each step: rank 0 took items 0, 2, 4 of the batch, rank 1 items 1, 3 (none of a batch of 1)
        sizes = {"sft-1": ([3] * steps, [2] * steps), "pro-1": ([2] * steps, [1] * steps)}
        expected = sizes.get(version, ([1] * steps, [0] * steps))
        assert ([len(s) for s in round0["shares"]], [len(s) for s in round1["shares"]]) == expected, version
        for step0, step1 in zip(round0["shares"], round1["shares"], strict=True):
            assert not set(step0) & set(step1), f"{version}: the ranks trained on the same items"

        lora0 = torch.load(tmp_path / "ddp" / f"{version}-rank0.pt")
        lora1 = torch.load(tmp_path / "ddp" / f"{version}-rank1.pt")
        assert lora0.keys() == lora1.keys() and lora0
        assert all(torch.equal(lora0[k], lora1[k]) for k in lora0), f"{version}: the replicas drifted apart"

        alone, metrics = one_process(version, algorithm, overrides, steps, str(tiny_model_dir), str(tmp_path / "one"))
        assert alone.keys() == lora0.keys()
        moved = max(float(alone[k].abs().max()) for k in alone if "lora_B" in k)  # B starts at zero
        assert moved > 1e-3, f"{version}: training did not move the LoRA"
        for k in alone:
            torch.testing.assert_close(lora0[k], alone[k], rtol=1e-4, atol=1e-6, msg=f"{version}: {k}")
        # rank-averaged metrics: the whole batch's (the loss is before the step, so it compares exactly)
        ddp_rows = round0["metrics"]
        assert [r["world_size"] for r in ddp_rows] == [2] * steps
        for key in ["loss", "grad_norm"] + (PRO_METRICS if algorithm == "pro" else []):
            assert [r[key] for r in ddp_rows] == pytest.approx([r[key] for r in metrics], rel=1e-4, abs=1e-6), key

    versions = tmp_path / "ddp" / "versions"  # rank 0 alone wrote each round's version
    assert sorted(p.name for p in versions.iterdir()) == sorted(v for v, *_ in ROUNDS)
    assert all((versions / v / "adapter_model.safetensors").is_file() for v, *_ in ROUNDS)


def test_batch_shards_are_strided_and_an_empty_share_gets_a_stand_in():
    from trainer.distributed import BatchShard, DistContext

    assert BatchShard().take([1, 2, 3]) == ([1, 2, 3], True) and BatchShard().weight(7.0) == 1.0
    shares = [BatchShard(DistContext(rank=r, world_size=3, backend="gloo")).take([1, 2, 3, 4]) for r in range(3)]
    assert shares == [([1, 4], True), ([2], True), ([3], True)]
    assert BatchShard(DistContext(rank=2, world_size=3, backend="gloo")).take([1, 2]) == ([1], False)
