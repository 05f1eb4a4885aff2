"""Data-parallel training under ``torchrun`` (DDP semantics without wrapping the models).

Two entry points use it:

- ``rlhb trainer`` under torchrun (the service; ``trainer/loop_cli.py``)::

      torchrun --nproc_per_node N -m rlhb.cli trainer [--max-rounds R ...]

  Rank 0 is the trainer process of ``trainer/loop.py``: it alone consumes records, talks to
  Redis and the registry, writes checkpoints and runs the gate. At each round it broadcasts
  the round (``TrainRequest`` with its records, algorithm and config) with
  ``broadcast_object_list``; every other rank waits for it in ``follow_rounds`` and trains
  its replica alongside (``train_round``). Rounds of every algorithm are data-parallel: the
  PPO-core ones (rlhb, rlhbc, rlhf) sample their own prompts and rollouts on each rank, the
  supervised ones (sft, pro) split each batch over the ranks (``BatchShard``). While
  no round runs, rank 0 broadcasts a heartbeat every ``HEARTBEAT_SECONDS`` so the waiting
  ranks stay inside the process-group timeout (``LOOP_TIMEOUT_SECONDS``, which must also
  cover the gate after training, during which rank 0 sends nothing).
- a one-off run of any algorithm from a records file, ``-m trainer.distributed`` (see ``main``).

Devices: the backend is nccl only when the ranks train on CUDA (``RLHB_DEVICE`` resolves to
a GPU; each rank then takes ``cuda:LOCAL_RANK``), gloo otherwise.

Every rank holds a full replica (base LM + LoRA, value head, discriminator), samples its own
prompts and rollouts, and averages the gradients of the trainable tensors with the other
ranks before each optimizer step, as ``DistributedDataParallel`` does. Identical start +
identical averaged gradients + identical optimizers = replicas that stay identical.

sft and pro draw their batches from a shuffled pass over fixed examples (SFT pairs, PRO ranked
lists) rather than sampling: every rank draws the same batch (same seed) and trains on its
share, items rank, rank + N, ... (``BatchShard.take``). Their losses are means over the batch
(per token for sft, per list for pro), so each rank scales its share's mean by N x its share of
the batch's count (``BatchShard.weight``; shares differ when N does not divide the batch): the
averaged gradient is then the gradient of the whole batch's loss, and one step of N ranks is
the step of one process on the whole batch (up to float rounding). A rank whose share is empty
(a batch smaller than N) runs the batch's first item with weight 0, so its backward, and the
all-reduces in it, still match the other ranks'.

Strategies (``DistContext.strategy``; ``RLHB_TRAINER_DIST_STRATEGY``, ``--strategy``):

- ``replicate`` (default): the above; every rank holds the whole base model.
- ``fsdp``: the policy's frozen base weights are sharded over the ranks with PyTorch FSDP2
  (``fully_shard`` on each decoder layer, then on the causal LM), so each rank holds 1/N of
  them and a layer's full weights exist only while it runs (``shard_base_model``). The LoRA,
  value head and discriminator stay whole, replicated tensors (``ignored_params``) whose
  gradients ``GradientSync`` averages exactly as under ``replicate``; FSDP reduce-scatters
  nothing (the weights it manages are frozen), so each gradient is averaged once. Rollouts
  run through the sharded model (every decoding step all-gathers every layer: slow; vLLM
  rollouts are the production answer) without the LoRA merge, with ``synced_gpus``.

Why hooks instead of ``DistributedDataParallel(model)``: the policy is used through
``peft``'s ``disable_adapter()`` (the reference policy), ``generate()`` and several forward
passes per update, and the critic/discriminator are separate modules; wrapping each in DDP
would change how every algorithm calls them. A post-accumulate-grad hook on each trainable
tensor all-reduces it the moment backward has finished accumulating it, so the code that
computes losses, clips gradient norms and steps optimizers is the same with 1 or N ranks
(clipping sees the averaged gradient, exactly as under DDP).

Command line (one run from a records file; N processes on one machine, gloo on CPU, nccl on GPUs)::

    torchrun --nproc_per_node N -m trainer.distributed --algo rlhb --records R.jsonl --model-path M --output-root O
    (add --strategy fsdp to shard the policy's base weights over the N processes)

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

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import os
import random
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

STRATEGIES = ("replicate", "fsdp")
"""How ranks hold the policy's base model: a whole copy each, or FSDP2 shards (module doc)."""
# Distinct streams per rank for sampling; a large prime keeps rank seeds apart from seed + small offsets.
RANK_SEED_STRIDE = 1_000_003
DDP_ALGORITHMS = ("rlhb", "rlhbc", "rlhf", "sft", "pro")
"""Algorithms whose rounds run data-parallel: all of them (``trainer.algorithms.ALGORITHMS``)."""
HEARTBEAT_SECONDS = 30.0
"""``rlhb trainer`` under torchrun: rank 0 tells the waiting ranks it is alive this often between rounds."""
LOOP_TIMEOUT_SECONDS = 4 * 3600.0
"""Process-group timeout of ``rlhb trainer`` under torchrun: it bounds how long a rank waits in one
collective, which includes waiting for the next message while rank 0 gates and registers a version."""

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    strategy: str = "replicate"
    """"replicate" (a whole model per rank) or "fsdp" (the policy's base weights sharded); see the module doc."""

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


def init_from_env(
    backend: str | None = None, timeout_seconds: float = 600.0, device: str = "auto", strategy: str = "replicate"
) -> DistContext:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT.

    Without torchrun (WORLD_SIZE unset or 1) returns the single-process context and starts
    nothing (one process has nothing to shard with: ``strategy`` is moot). ``backend`` defaults
    to nccl when ``device`` (``RLHB_DEVICE``, ``core.device`` rules) resolves to CUDA, gloo
    otherwise: nccl cannot move CPU tensors, so a CPU run on a machine that has GPUs must still
    use gloo. ``strategy`` must be the same on every rank (checked here: ranks that disagree
    would issue different collectives and hang).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
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
        from core.device import resolve_device

        backend = "nccl" if resolve_device(device)[0].type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (GPU); got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA and this machine has none; use gloo (or RLHB_DEVICE=cpu)")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, strategy=strategy)
    box: list[Any] = [strategy]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    if box[0] != strategy:
        raise ValueError(f"rank {rank} has strategy {strategy!r} but rank 0 has {box[0]!r}: set it alike on every rank")
    return ctx


def rank_device(device: str = "auto", dtype: str = "auto", ctx: DistContext = SINGLE_PROCESS) -> tuple:
    """``core.device.resolve_device`` for this rank: under torchrun a CUDA device is ``cuda:LOCAL_RANK``
    (one GPU per rank; an explicit ``cuda:N`` is overridden), a CPU stays the CPU."""
    from core.device import resolve_device

    resolved, resolved_dtype = resolve_device(device, dtype)
    if resolved.type == "cuda" and ctx.distributed:
        resolved, resolved_dtype = resolve_device(f"cuda:{ctx.local_rank}", dtype)
    return resolved, resolved_dtype


def shutdown(ctx: DistContext) -> None:
    """Leave the process group; on a clean exit, all ranks together.

    The barrier first: without it rank 0 (which also hosts the rendezvous store) could tear
    down its gloo pairs while another rank was still finishing the last collective, and the
    C++ side aborts the process ("terminate called without an active exception", SIGABRT;
    seen once in ~20 CI runs of test_distributed_rounds). When an exception is propagating
    (``shutdown`` in a ``finally`` after a failed round) there is no barrier: the other ranks
    may never reach it, and torchrun stops the job anyway."""
    if ctx.distributed and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
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


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s floating parameters and buffers of ``module`` (frozen ones included) to every rank."""
    if not ctx.distributed:
        return
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            dist.broadcast(t.data, src=src)


# --------------------------------------------------------------------------- sharding (strategy fsdp)
def shard_base_model(model: torch.nn.Module, device: torch.device, ctx: DistContext) -> None:
    """Shard ``model``'s (a peft model on the CPU) frozen weights over the ranks of ``ctx`` onto ``device``.

    FSDP2 ``fully_shard`` on every decoder layer (the classes the model lists in
    ``_no_split_modules``, as transformers' own FSDP wrapping does), then on the causal LM,
    which holds the embeddings, final norm and LM head. Each layer is moved to ``device`` and
    sharded in turn, so the GPU never holds more than the shards plus one whole layer.

    The trainable tensors (the LoRA) are left out (``ignored_params``) and moved whole:
    - FSDP2 needs one dtype per sharded group, and the LoRA is float32 beside a bfloat16 base;
    - peft's adapter saving, gradient clipping and the optimizer then see ordinary tensors, so
      rank 0 alone writes a normal, whole PEFT checkpoint with no gathering collective;
    - the LoRA is small (a few MB even for large models): sharding it would save next to nothing.
    Its gradients are averaged by ``GradientSync`` (``prepare_trainer``), as under replicate.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"strategy fsdp runs on cpu (gloo) or cuda (nccl); the device is {device}")
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(lm, "_no_split_modules", None) or ())
    blocks = [m for m in lm.modules() if type(m).__name__ in block_names]
    if not blocks:
        # sharding only the root would all-gather the whole model at every forward: no memory saved
        raise ValueError(
            f"strategy fsdp: {type(lm).__name__} names no decoder layer class (_no_split_modules); "
            "use strategy replicate for this model"
        )
    trainable = {p for p in model.parameters() if p.requires_grad}
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=trainable)
    fully_shard(lm, mesh=mesh, ignored_params=trainable)
    with torch.no_grad():
        for p in trainable:  # FSDP does not move what it ignores
            p.data = p.data.to(device)
        for b in lm.buffers():  # e.g. rotary frequencies, when FSDP left them behind
            b.data = b.data.to(device)


@contextlib.contextmanager
def policy_loading(ctx: DistContext) -> Iterator[None]:
    """Inside this block ``Policy.load`` shards the base when ``ctx`` runs strategy fsdp; else nothing changes."""
    if not (ctx.distributed and ctx.strategy == "fsdp"):
        yield
        return
    from trainer.policy import sharded_base

    with sharded_base(functools.partial(shard_base_model, ctx=ctx)):
        yield


class GradientSync:
    """Average the gradients of ``params`` over all ranks as soon as backward has accumulated each.

    Registers ``Tensor.register_post_accumulate_grad_hook`` on every trainable tensor; no-op
    when not distributed. ``remove()`` detaches the hooks.

    Why this and not ``DistributedDataParallel(peft_model)``: with LoRA only a few small
    tensors train, so bucketing (DDP's main speed-up) buys little, while DDP would have to
    wrap the policy, the value head and the discriminator separately, would see every
    ``disable_adapter()`` reference forward and every ``generate()`` as a forward whose
    gradients it expects (``find_unused_parameters`` and its extra pass), and would change
    how each algorithm calls its models. All-reducing the trainable gradients right after
    backward is the same arithmetic (a mean over ranks before clipping and the step) with
    no change to the algorithms. Cost: one all-reduce per trainable tensor per backward.

    Under strategy fsdp too: FSDP shards only frozen weights there, so it reduces no gradient
    and these hooks are the one averaging (a tensor FSDP managed would be averaged twice).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
        from torch.distributed.tensor import DTensor

        self.ctx = ctx
        self.params = _trainable(params)
        managed = [p for p in self.params if isinstance(p, DTensor)]
        if managed:
            raise ValueError(f"{len(managed)} trainable tensors are FSDP shards: FSDP already averages their gradients")
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
    # on the collective's device: nccl reduces CUDA tensors only
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=ctx.device)  # (K,)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values = values.cpu() / ctx.world_size
    reduced = dict(metrics)
    reduced.update({k: float(v) for k, v in zip(keys, values.tolist(), strict=True)})
    return reduced


def all_ranks_ok(ok: bool, ctx: DistContext) -> bool:
    """True only if every rank passes ``ok=True`` (e.g. "my loss is finite"): lets all ranks stop together."""
    if not ctx.distributed:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=ctx.device)  # (1,)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0


@dataclass(frozen=True)
class BatchShard:
    """This rank's share of each batch of a supervised algorithm (sft, pro; module doc).

    The trainers hold ``BatchShard()`` (one process: the whole batch, weight 1); ``prepare_trainer``
    gives them this rank's. Per iteration, on every rank and in this order: ``take`` the share,
    compute its loss, scale it by ``weight``, agree it is finite (``check_finite``), backward."""

    ctx: DistContext = SINGLE_PROCESS

    def take(self, batch: Sequence[T]) -> tuple[list[T], bool]:
        """(this rank's items, True); (the batch's first item as a stand-in, False) when the share
        is empty: the caller then passes a count of 0 to ``weight``, which zeroes its loss."""
        share = list(batch[self.ctx.rank :: self.ctx.world_size])
        if share:
            return share, True
        return list(batch[:1]), False

    def weight(self, count: float) -> float:
        """N x ``count`` / (sum of ``count`` over the ranks): the factor on this rank's mean loss
        (``count``: the examples or tokens that mean is over) that makes the ranks' averaged
        gradient the gradient of the whole batch's mean. 1 alone. One collective."""
        if not self.ctx.distributed:
            return 1.0
        total = torch.tensor([float(count)], dtype=torch.float64, device=self.ctx.device)  # (1,)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return self.ctx.world_size * float(count) / float(total.item())

    def check_finite(self, name: str, loss: torch.Tensor) -> None:
        """Raise ``TrainingDiverged`` on every rank when ``loss`` is NaN/inf on any (before the
        backward: a rank stopping alone would leave the others waiting in its all-reduces)."""
        if not self.ctx.distributed:
            return  # the optimizer's own check
        from trainer.algorithms.base import TrainingDiverged
        from trainer.algorithms.ppo_core import check_finite

        value = float(loss.detach())
        if not all_ranks_ok(math.isfinite(value), self.ctx):
            check_finite(name, value)  # this rank's own NaN/inf
            raise TrainingDiverged(f"{name} became NaN/inf on another rank: training stopped, no checkpoint written")


def parameters_digest(params: Iterable[torch.Tensor]) -> str:
    """sha256 over the bytes of ``params`` in order: equal digests = identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- trainers (every algorithm)
def trainable_parameters(trainer) -> list[torch.nn.Parameter]:
    """Actor LoRA + critic value head + discriminator (when the trainer has one), in a fixed order.

    ``trainer`` is any algorithm object with ``policy`` (``trainer.policy.Policy``) and optionally
    ``discriminator``: ``RLHBTrainer``, ``RewardModelPPO``, ``SFTTrainer``, ``PROTrainer``."""
    params = list(trainer.policy.actor_parameters()) + list(trainer.policy.critic_parameters())
    discriminator = getattr(trainer, "discriminator", None)
    if discriminator is not None:
        params += [p for p in discriminator.parameters() if p.requires_grad]
    return _trainable(params)


def prepare_trainer(trainer, ctx: DistContext, seed: int) -> GradientSync:
    """Make a freshly built trainer a replica: rank 0's parameters everywhere, gradients averaged
    from now on, and a per-rank sampling seed (its ``rng`` and torch's) so replicas see different
    prompts and rollouts. A supervised trainer (sft, pro: it has ``batch_shard``) keeps its ``rng``,
    so every rank draws the same batches, and gets this rank's ``BatchShard`` of them (torch's
    seed still differs per rank: pro's self-bootstrapping samples). Call after construction and
    before any update (including D warm-up)."""
    params = trainable_parameters(trainer)
    broadcast_parameters(params, ctx)
    reward_model = getattr(trainer, "reward_model", None)
    if isinstance(reward_model, torch.nn.Module):  # frozen, trained per rank: make it one function
        broadcast_module_state(reward_model, ctx)
    sync = GradientSync(params, ctx)
    rank_seed = seed_sampling(seed, ctx)
    if hasattr(trainer, "batch_shard"):
        trainer.batch_shard = BatchShard(ctx)
    elif hasattr(trainer, "rng"):
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


def build_trainer(algorithm: str, request, config: Any = None, ctx: DistContext = SINGLE_PROCESS):
    """The algorithm's trainer object, built identically on every rank (same seed in ``request``).

    ``config``: the algorithm's ``Config``, or a mapping of overrides to its defaults. rlhbc, rlhf
    (and pro with self-bootstrapping) train their reward model here, on every rank (same records
    and seed: the same model; ``prepare_trainer`` then copies rank 0's to be sure). Under strategy fsdp (``ctx``) the
    policy's base is sharded as it loads (``policy_loading``); the LM discriminator's trunk and
    the reward models stay whole."""
    if algorithm not in DDP_ALGORITHMS:
        raise ValueError(f"data-parallel training supports {', '.join(DDP_ALGORITHMS)}; got {algorithm!r}")
    from trainer.algorithms import default_config

    if config is None or isinstance(config, Mapping):
        config = dataclasses.replace(default_config(algorithm), **dict(config or {}))
    with policy_loading(ctx):
        if algorithm == "rlhb":
            from trainer.algorithms.rlhb import RLHBTrainer

            return RLHBTrainer(request, config)
        from importlib import import_module

        return import_module(f"trainer.algorithms.{algorithm}").build(request, config)


def train_round(algorithm: str, request, config, ctx: DistContext):
    """One training run on every rank of ``ctx`` (each rank calls it with the same arguments).

    Every algorithm: replicas built with the same seed, rank 0's weights broadcast, gradients
    averaged; per-rank sampling (PPO core) or per-rank shares of each batch (sft, pro). Rank 0
    writes the checkpoint and returns the ``RunResult``, the others return None. Single process:
    the algorithm's own ``run``."""
    from trainer.algorithms import get_algorithm
    from trainer.algorithms.runner import check_request

    if not ctx.distributed:
        return get_algorithm(algorithm)(request, config)
    if ctx.is_main:
        check_request(request)
    seed_replicas(request.seed)
    trainer = build_trainer(algorithm, request, config, ctx)
    sync = prepare_trainer(trainer, ctx, request.seed)
    try:
        return run_iterations(trainer, algorithm, ctx)
    finally:
        sync.remove()


# --------------------------------------------------------------------------- rank 0 <-> the other ranks (rlhb trainer)
def send_message(ctx: DistContext, message: dict) -> None:
    """Rank 0: broadcast ``message`` (``{"kind": "round" | "idle" | "stop", ...}``) to the waiting ranks."""
    if ctx.distributed:
        dist.broadcast_object_list([message], src=0, device=ctx.device)


def receive_message(ctx: DistContext) -> dict:
    """Ranks > 0: block until rank 0 sends the next message."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    return box[0]


def send_round(ctx: DistContext, algorithm: str, request, config) -> None:
    """Rank 0: the round's records, request and algorithm config to every rank (pickled)."""
    send_message(ctx, {"kind": "round", "algorithm": algorithm, "request": request, "config": config})


def follow_rounds(ctx: DistContext, device: str = "auto", dtype: str = "auto") -> int:
    """Ranks > 0 of ``rlhb trainer``: train each round rank 0 sends, until it sends "stop".

    This rank never touches Kafka, Redis, the registry or the gate; it trains on ``device``
    (its own ``cuda:LOCAL_RANK`` on GPUs) without writing metrics or checkpoints. Returns the
    number of rounds joined. A round that fails here is re-raised: the process exits and
    torchrun stops the job (a rank that left the collectives would hang the others)."""
    rounds = 0
    while True:
        message = receive_message(ctx)
        kind = message.get("kind")
        if kind == "stop":
            return rounds
        if kind != "round":
            continue  # "idle": rank 0's heartbeat between rounds
        request = dataclasses.replace(
            message["request"],
            device=str(device),
            dtype=str(dtype),
            metrics_path=None,
            progress=False,
            heldout_pairs_path=None,
        )
        log.info("rank %d joins a %s round (%s)", ctx.rank, message["algorithm"], request.version_name)
        try:
            train_round(message["algorithm"], request, message["config"], ctx)
        except Exception as e:  # noqa: BLE001 - rank 0 raises the same (reduced metrics) and reports it
            from trainer.algorithms.base import TrainingDiverged

            if not isinstance(e, TrainingDiverged):
                raise
            log.warning("rank %d: round %s diverged: %s", ctx.rank, request.version_name, e)
        rounds += 1


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc_per_node N -m trainer.distributed --records FILE --model-path DIR --output-root DIR``"""
    import argparse
    import json
    from pathlib import Path

    from trainer.algorithms.base import TrainRequest
    from trainer.algorithms.runner import check_request
    from trainer.records import load_records

    parser = argparse.ArgumentParser(prog="torchrun -m trainer.distributed", description=main.__doc__)
    parser.add_argument("--algo", default="rlhb", choices=DDP_ALGORITHMS, help="the algorithm")
    parser.add_argument("--records", required=True, help="JSONL of behavior records")
    parser.add_argument("--model-path", required=True, help="HF causal LM folder")
    parser.add_argument("--output-root", required=True, help="checkpoint versions are written under this folder")
    parser.add_argument("--version-name", default="ddp", help="name of the version folder to create")
    parser.add_argument("--steps", type=int, default=20, help="iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", default=None, help="append averaged metrics here (JSONL, rank 0)")
    parser.add_argument("--config", default="{}", help="JSON object of config overrides, e.g. '{\"batch_size\": 8}'")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (each rank: cuda:LOCAL_RANK)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (base weights)")
    parser.add_argument("--backend", default=None, choices=["gloo", "nccl"], help="default: nccl on CUDA, else gloo")
    parser.add_argument(
        "--strategy",
        default="replicate",
        choices=STRATEGIES,
        help="replicate: a whole model per rank; fsdp: the policy's base weights sharded over the ranks",
    )
    parser.add_argument(
        "--digest-dir",
        default=None,
        help="each rank writes rank<N>.json here: sha256 of its trainable tensors before/after, its own metrics, "
        "whether its base is sharded",
    )
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as e:
        parser.error(f"--config is not valid JSON: {e.msg}")
    if not isinstance(overrides, dict):
        parser.error("--config must be a JSON object")

    ctx = init_from_env(args.backend, device=args.device, strategy=args.strategy)
    quiet_non_main(ctx)
    try:
        from core.device import dtype_name

        device, dtype = rank_device(args.device, args.dtype, ctx)
        request = TrainRequest(
            device=str(device),
            dtype=dtype_name(dtype),
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
        trainer = build_trainer(args.algo, request, overrides, ctx)
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
                "strategy": ctx.strategy,
                "sharded": trainer.policy.sharded,  # the base really is FSDP shards (strategy fsdp)
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
