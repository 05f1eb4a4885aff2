"""``rlhb trainer``: run the background trainer (registered in rlhb/cli.py FEATURE_COMMANDS).

Data-parallel on N processes (CPU: gloo; GPUs: nccl, one GPU per process)::

    torchrun --nproc_per_node N -m rlhb.cli trainer [--max-rounds R ...]

(``torchrun`` runs a module with ``-m``; the ``rlhb`` console script itself is not a module,
hence ``-m rlhb.cli``.) Rank 0 is the ordinary trainer; the other ranks only train replicas of
each round (``trainer/distributed.py``). ``RLHB_TRAINER_DIST_STRATEGY=fsdp`` shards the policy's
base weights over the ranks instead of replicating them (a model that does not fit one GPU).
Under torchrun a Kafka broker and Redis must be reachable by rank 0 as usual (embedded ones
are started by rank 0 alone).

Imports only typer at module level, so ``rlhb --help`` stays instant.
"""

from __future__ import annotations

import typer


def run_trainer(
    algorithm: str = typer.Option(None, help="rlhb | rlhbc | rlhf | sft | pro (default: RLHB_TRAINER_ALGORITHM)."),
    records_per_round: int = typer.Option(None, help="M: new records that start a round."),
    steps: int = typer.Option(None, help="Training iterations per round."),
    guardrail: bool = typer.Option(None, "--guardrail/--no-guardrail", help="Automatic rollback on a like-rate drop."),
    max_rounds: int = typer.Option(0, help="Stop after this many rounds (0: run until SIGTERM/Ctrl-C)."),
) -> None:
    """Consume behavior records, train rounds in the background, gate and publish adapter versions."""
    import json
    import logging
    import os
    import signal
    import threading

    from core.errors import clear_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)  # "task blocked" notes while a round runs

    overrides = {
        "algorithm": algorithm,
        "records_per_round": records_per_round,
        "steps_per_round": steps,
        "guardrail": guardrail,
    }
    with clear_errors():
        from core.infra.resolve import resolve_infra
        from core.settings import TrainerSettings
        from trainer.distributed import SINGLE_PROCESS, env_world_size

        settings = TrainerSettings(**{k: v for k, v in overrides.items() if v is not None})
        ctx = SINGLE_PROCESS
        if env_world_size() > 1:  # under torchrun
            from trainer.distributed import LOOP_TIMEOUT_SECONDS, init_from_env, quiet_non_main

            ctx = init_from_env(
                device=settings.device, timeout_seconds=LOOP_TIMEOUT_SECONDS, strategy=settings.dist_strategy
            )
            quiet_non_main(ctx)
            if not ctx.is_main:
                _follow(ctx, settings)
                return
        from trainer.loop import Trainer

        infra = resolve_infra(settings)
        trainer = Trainer(settings, infra.bootstrap, infra.redis_url, dist_ctx=ctx)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    trainer.start()
    try:
        trainer.run(stop, max_rounds=max_rounds)
    finally:
        mid_round = trainer.training
        # The summary's active version is read before close(): a closed Redis Cluster client
        # refuses every command (RedisClusterException), where a closed Redis one reconnects.
        try:
            active = trainer.registry.active()
        finally:
            trainer.close()
        typer.echo(
            json.dumps({"rounds": trainer.rounds_done, "active": active, "last_round": trainer.last_round}, default=str)
        )
        if mid_round:
            # The round thread cannot be interrupted; leaving now is safe (the round is redone
            # after a restart: its records were not committed, temp folders are cleaned).
            logging.getLogger(__name__).warning("stopped in the middle of a round; it will be redone on restart")
            infra.stop()
            os._exit(0)
        infra.stop()
        from trainer.distributed import shutdown

        shutdown(ctx)


def _follow(ctx, settings) -> None:
    """Ranks > 0: train each round rank 0 broadcasts until it says stop (no Kafka, Redis or registry)."""
    import json

    from core.device import dtype_name
    from trainer.distributed import follow_rounds, rank_device, shutdown

    device, dtype = rank_device(settings.device, settings.dtype, ctx)
    try:
        rounds = follow_rounds(ctx, str(device), dtype_name(dtype))
    finally:
        shutdown(ctx)
    typer.echo(json.dumps({"rank": ctx.rank, "rounds": rounds}))
