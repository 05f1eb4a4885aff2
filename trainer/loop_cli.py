"""``rlhb trainer``: run the background trainer (registered in rlhb/cli.py FEATURE_COMMANDS).

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
        from trainer.loop import Trainer

        settings = TrainerSettings(**{k: v for k, v in overrides.items() if v is not None})
        infra = resolve_infra(settings)
        trainer = Trainer(settings, infra.bootstrap, infra.redis_url)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    trainer.start()
    try:
        trainer.run(stop, max_rounds=max_rounds)
    finally:
        mid_round = trainer.training
        trainer.close()
        typer.echo(
            json.dumps(
                {"rounds": trainer.rounds_done, "active": trainer.registry.active(), "last_round": trainer.last_round},
                default=str,
            )
        )
        if mid_round:
            # The round thread cannot be interrupted; leaving now is safe (the round is redone
            # after a restart: its records were not committed, temp folders are cleaned).
            logging.getLogger(__name__).warning("stopped in the middle of a round; it will be redone on restart")
            infra.stop()
            os._exit(0)
        infra.stop()
