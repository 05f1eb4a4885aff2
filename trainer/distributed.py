"""Data-parallel training under ``torchrun`` (DDP semantics without wrapping the models).

Every rank holds a full replica (base LM + LoRA, value head, discriminator), samples its own
prompts and rollouts, and averages the gradients of the trainable tensors with the other
ranks before each optimizer step, as ``DistributedDataParallel`` does. Identical start +
identical averaged gradients + identical optimizers = replicas that stay identical.

Why hooks instead of ``DistributedDataParallel(model)``: the policy is used through
``peft``'s ``disable_adapter()`` (the reference policy), ``generate()`` and several forward
passes per update, and the critic/discriminator are separate modules; wrapping each in DDP
would change how every algorithm calls them. A post-accumulate-grad hook on each trainable
tensor all-reduces it the moment backward has finished accumulating it, so the code that
computes losses, clips gradient norms and steps optimizers is the same with 1 or N ranks
(clipping sees the averaged gradient, exactly as under DDP).

Command line (RLHB; N processes on one machine, gloo on CPU, nccl on GPUs)::

    torchrun --nproc_per_node N -m trainer.distributed --records R.jsonl --model-path M --output-root O

In code, with any trainer object that has ``policy`` (and optionally ``discriminator``,
``rng``, ``warmup``), e.g. ``RLHBTrainer``::

    ctx = init_from_env()                       # single process when not under torchrun
    quiet_non_main(ctx)                         # warnings and progress from rank 0 only
    trainer = RLHBTrainer(request, config)      # same seed on every rank: identical initialisation
    sync = prepare_trainer(trainer, ctx, seed)  # broadcast from rank 0, gradient hooks, per-rank sampling seed
    result = run_iterations(trainer, "rlhb", ctx)   # metrics averaged; rank 0 writes metrics + checkpoint
    sync.remove(); shutdown(ctx)

Contract for callers: every rank must run the same number of backward passes on the same
set of trainable tensors (same batch sizes, epochs, minibatch counts), or the all-reduces
pair up wrongly and the ranks wait for each other until ``timeout_seconds``. A rank that
raises (e.g. ``TrainingDiverged`` on a NaN loss) before its backward leaves the others
waiting until that timeout; ``all_ranks_ok`` lets a caller agree on such a stop first.
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Distinct streams per rank for sampling; a large prime keeps rank seeds apart from seed + small offsets.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank (0 = the main process: the only one that writes checkpoints and logs)."""
    world_size: int = 1
    """Number of processes (replicas)."""
    local_rank: int = 0
    """Rank on this machine (picks the GPU when there are GPUs)."""
    backend: str | None = None
    """"gloo" (CPU) or "nccl" (GPU); None when not distributed."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE_PROCESS = DistContext()


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(backend: str | None = None, timeout_seconds: float = 600.0) -> DistContext:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT.

    Without torchrun (WORLD_SIZE unset or 1) returns the single-process context and starts
    nothing. ``backend`` defaults to nccl when CUDA is available, gloo otherwise.
    """
    world_size = env_world_size()
    if world_size <= 1:
        return SINGLE_PROCESS
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with `torchrun --nproc_per_node N ...`"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (GPU); got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def quiet_non_main(ctx: DistContext, loggers: Iterable[str] = ("trainer", "transformers", "peft")) -> None:
    """Rank-0-only logging: other ranks keep errors only (their warnings would repeat rank 0's)."""
    import logging

    if not ctx.is_main:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# --------------------------------------------------------------------------- seeds
def seed_replicas(seed: int) -> None:
    """The same seed on every rank: models, adapters and heads initialise identically."""
    random.seed(seed)
    torch.manual_seed(seed)


def seed_sampling(seed: int, ctx: DistContext) -> int:
    """A different seed per rank for what each replica samples (prompts, rollouts, fake batches);
    rank 0 keeps ``seed`` itself, so a 1-process run samples as an undistributed one. Returns it."""
    rank_seed = seed + RANK_SEED_STRIDE * ctx.rank
    random.seed(rank_seed)
    torch.manual_seed(rank_seed)
    return rank_seed


# --------------------------------------------------------------------------- parameters and gradients
def _trainable(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:  # tied weights appear once
            seen.add(id(p))
            out.append(p)
    return out


@torch.no_grad()
def broadcast_parameters(params: Iterable[torch.nn.Parameter], ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` to every rank (call before the first step)."""
    if not ctx.distributed:
        return
    for p in _trainable(params):
        dist.broadcast(p.data, src=src)


class GradientSync:
    """Average the gradients of ``params`` over all ranks as soon as backward has accumulated each.

    Registers ``Tensor.register_post_accumulate_grad_hook`` on every trainable tensor; no-op
    when not distributed. ``remove()`` detaches the hooks.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
        self.ctx = ctx
        self.params = _trainable(params)
        self._handles = []
        if ctx.distributed:
            self._handles = [p.register_post_accumulate_grad_hook(self._average) for p in self.params]

    def _average(self, param: torch.Tensor) -> None:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(self.ctx.world_size)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# --------------------------------------------------------------------------- metrics and agreement
def reduce_metrics(metrics: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean of each numeric metric over ranks (every rank must pass the same keys)."""
    if not ctx.distributed:
        return dict(metrics)
    keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= ctx.world_size
    reduced = dict(metrics)
    reduced.update({k: float(v) for k, v in zip(keys, values.tolist(), strict=True)})
    return reduced


def all_ranks_ok(ok: bool, ctx: DistContext) -> bool:
    """True only if every rank passes ``ok=True`` (e.g. "my loss is finite"): lets all ranks stop together."""
    if not ctx.distributed:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0


def parameters_digest(params: Iterable[torch.Tensor]) -> str:
    """sha256 over the bytes of ``params`` in order: equal digests = identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- trainers (RLHB and the PPO family)
def trainable_parameters(trainer) -> list[torch.nn.Parameter]:
    """Actor LoRA + critic value head + discriminator (when the trainer has one), in a fixed order.

    ``trainer`` is any algorithm object with ``policy`` (``trainer.policy.Policy``) and optionally
    ``discriminator``: ``RLHBTrainer``, ``RewardModelPPO``."""
    params = list(trainer.policy.actor_parameters()) + list(trainer.policy.critic_parameters())
    discriminator = getattr(trainer, "discriminator", None)
    if discriminator is not None:
        params += [p for p in discriminator.parameters() if p.requires_grad]
    return _trainable(params)


def prepare_trainer(trainer, ctx: DistContext, seed: int) -> GradientSync:
    """Make a freshly built trainer a replica: rank 0's parameters everywhere, gradients averaged
    from now on, and a per-rank sampling seed (its ``rng`` and torch's) so replicas see different
    prompts and rollouts. Call after construction and before any update (including D warm-up)."""
    params = trainable_parameters(trainer)
    broadcast_parameters(params, ctx)
    sync = GradientSync(params, ctx)
    rank_seed = seed_sampling(seed, ctx)
    if hasattr(trainer, "rng"):
        trainer.rng = random.Random(rank_seed)
    return sync


def run_iterations(trainer, algorithm: str, ctx: DistContext, local_metrics: list | None = None):
    """``trainer.algorithms.runner.run_iterations`` for N replicas: every rank trains, the metrics
    are averaged over ranks, and only rank 0 shows progress, appends the metrics JSONL and writes
    the checkpoint. Returns the ``RunResult`` on rank 0, None elsewhere. ``local_metrics``, when
    given, collects each iteration's metrics of this rank before averaging."""
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from trainer.algorithms.base import RunResult
    from trainer.algorithms.runner import check_losses
    from trainer.checkpoints import write_checkpoint
    from trainer.metrics import MetricsWriter, summary

    request = trainer.request
    writer = MetricsWriter(request.metrics_path if ctx.is_main else None)
    if hasattr(trainer, "warmup"):
        trainer.warmup()
    bar = tqdm(range(request.steps), desc=algorithm, disable=not (request.progress and ctx.is_main))
    for i in bar:
        start = time.perf_counter()
        metrics = dict(trainer.iteration(i))
        metrics.setdefault("iteration", i)
        metrics["seconds"] = time.perf_counter() - start
        if local_metrics is not None:
            local_metrics.append(dict(metrics))
        metrics = reduce_metrics(metrics, ctx)  # a NaN on any rank makes the mean NaN: all ranks stop below
        metrics["world_size"] = ctx.world_size
        check_losses(metrics, i)
        writer.write(metrics)
    bar.close()
    result = None
    if ctx.is_main:
        version = write_checkpoint(
            Path(request.output_root),
            request.version_name,
            save_adapter=trainer.save_adapter,
            save_state=getattr(trainer, "save_state", None),
            algorithm=algorithm,
            step=request.steps,
            metrics=summary(writer.rows[-1]) if writer.rows else {},
            parent=request.parent,
        )
        result = RunResult(checkpoint=Path(version.path), version=version, metrics=writer.rows)
    barrier(ctx)  # nobody exits (and tears down the group) while rank 0 is still writing
    return result


def build_trainer(algorithm: str, request, config_overrides: Mapping[str, object]):
    """The algorithm's trainer object, built identically on every rank (same seed in ``request``)."""
    if algorithm != "rlhb":
        raise ValueError(
            f"distributed training supports algorithm 'rlhb' here; got {algorithm!r}. The PPO-family trainers "
            "(rlhbc, rlhf) need their reward model trained before the replicas are prepared."
        )
    from trainer.algorithms.rlhb import RLHBTrainer
    from trainer.config import RLHBConfig

    return RLHBTrainer(request, RLHBConfig(**dict(config_overrides)))


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc_per_node N -m trainer.distributed --records FILE --model-path DIR --output-root DIR``"""
    import argparse
    import json
    from pathlib import Path

    from trainer.algorithms.base import TrainRequest
    from trainer.algorithms.runner import check_request
    from trainer.records import load_records

    parser = argparse.ArgumentParser(prog="torchrun -m trainer.distributed", description=main.__doc__)
    parser.add_argument("--algo", default="rlhb", help="algorithm (rlhb)")
    parser.add_argument("--records", required=True, help="JSONL of behavior records")
    parser.add_argument("--model-path", required=True, help="HF causal LM folder")
    parser.add_argument("--output-root", required=True, help="checkpoint versions are written under this folder")
    parser.add_argument("--version-name", default="ddp", help="name of the version folder to create")
    parser.add_argument("--steps", type=int, default=20, help="iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", default=None, help="append averaged metrics here (JSONL, rank 0)")
    parser.add_argument("--config", default="{}", help="JSON object of config overrides, e.g. '{\"batch_size\": 8}'")
    parser.add_argument("--backend", default=None, choices=["gloo", "nccl"], help="default: nccl with CUDA, else gloo")
    parser.add_argument(
        "--digest-dir",
        default=None,
        help="each rank writes rank<N>.json here: sha256 of its trainable tensors before/after and its own metrics",
    )
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as e:
        parser.error(f"--config is not valid JSON: {e.msg}")
    if not isinstance(overrides, dict):
        parser.error("--config must be a JSON object")

    ctx = init_from_env(args.backend)
    quiet_non_main(ctx)
    try:
        request = TrainRequest(
            records=load_records(args.records),
            model_path=args.model_path,
            output_root=Path(args.output_root),
            version_name=args.version_name,
            metrics_path=Path(args.metrics) if args.metrics else None,
            seed=args.seed,
            steps=args.steps,
        )
        if ctx.is_main:
            check_request(request)
        seed_replicas(args.seed)
        trainer = build_trainer(args.algo, request, overrides)
        sync = prepare_trainer(trainer, ctx, args.seed)
        initial = parameters_digest(trainable_parameters(trainer))
        local: list[dict] = []
        result = run_iterations(trainer, args.algo, ctx, local_metrics=local)
        sync.remove()
        if args.digest_dir:
            out = Path(args.digest_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {
                "rank": ctx.rank,
                "world_size": ctx.world_size,
                "initial": initial,
                "final": parameters_digest(trainable_parameters(trainer)),
                "local_metrics": local,
                "checkpoint": str(result.checkpoint) if result is not None else None,
            }
            (out / f"rank{ctx.rank}.json").write_text(json.dumps(record))
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
