"""`rlhb trainer` rounds under torch.distributed (gloo, CPU): the protocol of trainer/loop.py.

Two processes (torch.multiprocessing) play rank 0 (the loop's round thread: ``send_round`` then
``train_round``) and rank 1 (``follow_rounds``), with the same seed. Each rank samples its own
rollouts, so without the gradient all-reduce the replicas' LoRA would differ after the PPO
steps; the test checks the trainable tensors are bit-identical afterwards, that they moved,
that the ranks trained on different rollouts, and that rank 1 wrote no checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from core.infra.ports import free_port
from tests.trainer.test_distributed import TINY_RLHB

ALGORITHM_CONFIG = {**TINY_RLHB, "max_new_tokens": 6}


def _rank_main(rank: int, port: int, model_dir: str, out: str) -> None:
    """One rank of a 2-process job, as `torchrun ... -m rlhb.cli trainer` would run it."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from tests.helpers.behavior_toy import toy_records
    from trainer import distributed
    from trainer.algorithms import default_config
    from trainer.algorithms.base import TrainRequest
    from trainer.algorithms.ppo_core import PPOCore
    from trainer.config import apply_overrides

    ctx = distributed.init_from_env(device="cpu", timeout_seconds=120)  # CPU: gloo, never nccl
    seen: list[list[str]] = []  # this rank's rollouts
    original = PPOCore.rollout

    def recording_rollout(self, prompts):
        rollouts = original(self, prompts)
        seen.append(list(rollouts.batch.responses))
        return rollouts

    PPOCore.rollout = recording_rollout
    built = []
    original_prepare = distributed.prepare_trainer

    initial = []

    def keep_trainer(trainer, ctx, seed):
        built.append(trainer)
        sync = original_prepare(trainer, ctx, seed)
        initial.append(distributed.parameters_digest(trainer.policy.actor_parameters()))  # after the broadcast
        return sync

    distributed.prepare_trainer = keep_trainer
    result = None
    if ctx.is_main:
        request = TrainRequest(
            records=toy_records(n_queries=12), model_path=model_dir, output_root=Path(out) / "versions",
            version_name="round-1", seed=3, steps=2, progress=False, device="cpu", dtype="float32",
        )  # fmt: skip
        config = apply_overrides(default_config("rlhb"), ALGORITHM_CONFIG, variable="TEST")
        distributed.send_message(ctx, {"kind": "idle"})  # a heartbeat first, as between rounds
        distributed.send_round(ctx, "rlhb", request, config)
        result = distributed.train_round("rlhb", request, config, ctx)
        distributed.send_message(ctx, {"kind": "stop"})
        rounds = 1
    else:
        rounds = distributed.follow_rounds(ctx, "cpu", "float32")
    lora = [p for p in built[0].policy.actor_parameters()]
    record = {
        "rank": rank,
        "backend": ctx.backend,
        "rounds": rounds,
        "initial": initial[0],
        "lora": distributed.parameters_digest(lora),
        "all": distributed.parameters_digest(distributed.trainable_parameters(built[0])),
        "rollouts": seen,
        "checkpoint": str(result.checkpoint) if result is not None else None,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    distributed.shutdown(ctx)


def test_loop_rounds_stay_identical_across_two_gloo_ranks(tmp_path, tiny_model_dir):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mp.spawn(_rank_main, args=(free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"] and [r["rounds"] for r in ranks] == [1, 1]
    # different rollouts on each rank (per-rank sampling seeds), yet identical replicas afterwards
    assert len(ranks[0]["rollouts"]) == len(ranks[1]["rollouts"]) == 2
    assert ranks[0]["rollouts"] != ranks[1]["rollouts"]
    assert ranks[0]["initial"] == ranks[1]["initial"] != ranks[0]["lora"]  # same start, and training moved it
    assert ranks[0]["lora"] == ranks[1]["lora"]
    assert ranks[0]["all"] == ranks[1]["all"]
    # rank 0 alone wrote the round's version
    versions = tmp_path / "versions"
    assert ranks[0]["checkpoint"] == str(versions / "round-1") and ranks[1]["checkpoint"] is None
    assert sorted(p.name for p in versions.iterdir()) == ["round-1"]
    assert (versions / "round-1" / "adapter_model.safetensors").is_file()


def _loop_rank_main(rank: int, port: int, env: dict, out: str) -> None:
    """One rank of `torchrun --nproc_per_node 2 -m rlhb.cli trainer --max-rounds 1`, in-process: rank 0 is
    the real Trainer (broker, Redis, registry, gate), rank 1 runs ``follow_rounds``."""
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from trainer import distributed

    distributed.HEARTBEAT_SECONDS = 0.0  # a heartbeat at every idle step: they interleave with the round
    digests = []
    original_run = distributed.run_iterations

    def run_and_digest(trainer, algorithm, ctx, local_metrics=None):
        result = original_run(trainer, algorithm, ctx, local_metrics)
        digests.append(distributed.parameters_digest(distributed.trainable_parameters(trainer)))
        return result

    distributed.run_iterations = run_and_digest
    ctx = distributed.init_from_env(device=env["RLHB_DEVICE"], timeout_seconds=120)
    record: dict = {"rank": rank}
    if ctx.is_main:
        import time

        from trainer.loop import LoopSettings, Trainer

        trainer = Trainer(LoopSettings(), env["RLHB_KAFKA_BOOTSTRAP_SERVERS"], env["RLHB_REDIS_URL"], dist_ctx=ctx)
        trainer.start()
        deadline = time.monotonic() + 150
        try:
            while trainer.rounds_done < 1 and time.monotonic() < deadline:
                trainer.step()
            for _ in range(3):  # idle steps after the round: heartbeats again
                trainer.step()
        finally:
            trainer.close()  # tells rank 1 to stop
        record.update(last_round=trainer.last_round, device=trainer.device)
    else:
        record["rounds"] = distributed.follow_rounds(ctx, "cpu", "float32")
    record["digests"] = digests
    Path(out, f"loop-rank{rank}.json").write_text(json.dumps(record, default=str))
    distributed.shutdown(ctx)


def test_the_trainer_loop_under_two_ranks_publishes_one_round_trained_by_both(
    tmp_path, kafka_bootstrap, redis_url, redis_prefix, unique_topics, tiny_model_dir
):
    from tests.helpers.toy_task import toy_records
    from tests.helpers.trainer_loop import produce_records, trainer_env

    env = trainer_env(
        bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
        adapter_dir=tmp_path / "adapters", state_dir=tmp_path / "state", model_dir=tiny_model_dir,
        records_per_round=40, RLHB_DEVICE="cpu", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    produce_records(kafka_bootstrap, unique_topics["records"], toy_records(40))
    mp.spawn(_loop_rank_main, args=(free_port(), env, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"loop-rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["device"] == "cpu"
    assert rank0["last_round"]["outcome"] == "published", rank0["last_round"]
    assert rank1["rounds"] == 1  # joined the round, then left on rank 0's "stop"
    assert len(rank0["digests"]) == len(rank1["digests"]) == 1 and rank0["digests"] == rank1["digests"]
    versions = [p.name for p in (tmp_path / "adapters").iterdir() if p.is_dir()]
    assert versions == [rank0["last_round"]["version"]]
