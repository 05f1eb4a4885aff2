"""The single entry point: ``rlhb <command>``.

Heavy imports (torch, transformers, kafka) happen inside commands, so ``rlhb --help``
stays instant. Configuration errors print one line saying what to fix and exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer

from core.errors import clear_errors
from core.progress import PROGRESS_HELP
from rlhb.ablate import VARIANTS
from rlhb.config_cli import config_app
from rlhb.demo import demo
from rlhb.evaluation.cli import eval_app
from rlhb.records_cli import records_tail
from rlhb.schemas_cli import schemas_app
from rlhb.simulate.driver import simulate
from service.aggregator.cli import aggregator_app, records_app
from service.api.cli import run_api
from trainer.cli import train_app
from trainer.loop_cli import run_trainer

VARIANT_NAMES = tuple(VARIANTS)

app = typer.Typer(help="rlhb: online continual alignment of LLMs from user behavior.", no_args_is_help=True)
infra_app = typer.Typer(help="Embedded broker and Redis for one machine.", no_args_is_help=True)
model_app = typer.Typer(help="Base model preparation.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")


def common_settings():
    from core.settings import CommonSettings

    return CommonSettings()


# --------------------------------------------------------------------------- model
@model_app.command("prepare")
def model_prepare(
    force: bool = typer.Option(False, help="Rebuild even if the folder exists."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF to an HF folder (once)."""
    from core.model_prep import prepare_model

    with clear_errors():
        prepare_model(force=force, progress=progress)


# --------------------------------------------------------------------------- infra
@infra_app.command("up")
def infra_up() -> None:
    """Start the embedded broker and Redis (append-only file in RLHB_STATE_DIR/redis) and keep them running."""
    from core.infra.resolve import redis_data_dir, resolve_infra, write_infra_state

    with clear_errors():
        settings = common_settings()
        infra = resolve_infra(settings, redis_dir=redis_data_dir(settings))
    path = write_infra_state(settings, infra)
    typer.echo(json.dumps({"bootstrap": infra.bootstrap, "redis_url": infra.redis_url, "state": str(path)}))
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        infra.stop()
        path.unlink(missing_ok=True)


@infra_app.command("down")
def infra_down() -> None:
    """Stop infrastructure started by `rlhb infra up`."""
    from core.infra.resolve import read_running_infra

    running = read_running_infra(common_settings())
    if not running:
        typer.echo("no embedded infrastructure is running")
        return
    os.kill(running["owner_pid"], signal.SIGTERM)
    typer.echo(f"stopped (pid {running['owner_pid']})")


@infra_app.command("status")
def infra_status() -> None:
    """Show whether the broker and Redis this deployment would use are reachable."""
    from core.infra.broker import InfraError, check_kafka
    from core.infra.redis_server import redis_answers
    from core.infra.resolve import read_running_infra
    from core.settings import DEFAULT_REDIS_URL

    with clear_errors():
        settings = common_settings()
    running = read_running_infra(settings) or {}
    bootstrap = settings.kafka_bootstrap_servers or running.get("bootstrap", "")
    redis_url = settings.redis_url or running.get("redis_url", "") or DEFAULT_REDIS_URL
    broker_ok = False
    if bootstrap:
        try:
            check_kafka(bootstrap, timeout_s=3)
            broker_ok = True
        except InfraError:
            pass
    status = {
        "broker": {
            "bootstrap": bootstrap or "(none: embedded starts on demand)",
            "reachable": broker_ok,
            "embedded": not settings.kafka_bootstrap_servers,
        },
        "redis": {"url": redis_url, "reachable": redis_answers(redis_url)},
    }
    typer.echo(json.dumps(status, indent=2))
    if not (broker_ok and status["redis"]["reachable"]):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- up
@app.command("up")
def up(
    trainer: bool = typer.Option(True, help="Also run the background trainer."),
    port: int = typer.Option(8000, help="API port."),
    max_restarts: int = typer.Option(5, min=0, help="Restarts per process per minute before giving up on it."),
    backoff: float = typer.Option(1.0, min=0.0, help="First restart delay in seconds (doubles per quick failure)."),
    max_backoff: float = typer.Option(30.0, min=0.0, help="Longest restart delay in seconds."),
    grace: float = typer.Option(15.0, min=0.0, help="Seconds between SIGTERM and SIGKILL when stopping."),
) -> None:
    """Everything on the embedded defaults: broker, Redis, API, aggregator, trainer, supervised.

    A process that exits is restarted (rlhb/supervisor.py); Ctrl-C or SIGTERM stops them all.
    """
    import logging

    from core.dev_secrets import fill_deployment_secrets
    from core.infra.resolve import redis_data_dir, resolve_infra, write_infra_state
    from rlhb.supervisor import RestartPolicy, Supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with clear_errors():
        settings = common_settings()
        settings.resolved_model_path() if settings.model_path else _ensure_model()
        infra = resolve_infra(settings, redis_dir=redis_data_dir(settings))  # Redis with an append-only file
    write_infra_state(settings, infra)
    env = {**os.environ, **infra.env(), "RLHB_API_PORT": str(port)}
    # No dev mode: a per-install admin token and impression key instead (core/dev_secrets.py).
    for line in fill_deployment_secrets(env, settings.state_dir):
        typer.echo(line)
    names = ["api", "aggregator"] + (["trainer"] if trainer else [])
    commands = {name: [sys.executable, "-m", "rlhb.cli", name] for name in names}
    policy = RestartPolicy(initial_backoff_s=backoff, max_backoff_s=max_backoff, max_restarts=max_restarts)
    supervisor = Supervisor(commands, env=env, policy=policy, grace_s=grace)
    typer.echo(f"rlhb up: API on http://127.0.0.1:{port} (broker {infra.bootstrap}, redis {infra.redis_url})")
    try:
        code = supervisor.run()
    finally:
        infra.stop()
    if code:
        typer.echo("rlhb up: every process gave up (see the errors above)", err=True)
        raise typer.Exit(code)


def _ensure_model() -> None:
    from core.model_prep import default_model_dir, prepare_model

    if not (default_model_dir() / "config.json").exists():
        prepare_model()


@app.command("ablate")
def ablate(
    out: Path = typer.Option(Path("rlhb-ablate"), help="Output folder (results.json, table.md, curves.png)."),
    users: str = typer.Option("concise", help="Simulated user model (preset or package.module:Class)."),
    steps: int = typer.Option(24, min=1, help="RLHB iterations per variant."),
    base_answers: int = typer.Option(640, min=8, help="Logged base answers the records are made of."),
    eval_questions: int = typer.Option(0, min=0, help="Held-out questions (0: all)."),
    max_tokens: int = typer.Option(48, min=8, help="Answer cap (logged, rollouts, judged); thorough users: 96-128."),
    variants: str = typer.Option("", help="Comma-separated subset of: " + ", ".join(VARIANT_NAMES)),
    quick: bool = typer.Option(False, help="Tiny random model and tiny sizes (about a minute)."),
) -> None:
    """The RLHB paper's ablations (kappa, frozen D, rollouts, batch) in process: table, claims, figure-6 curves."""
    from rlhb.ablate import AblateConfig, quick_config, run_ablation

    chosen = tuple(v.strip() for v in variants.split(",") if v.strip()) or VARIANT_NAMES
    with clear_errors():
        if quick:
            from core.model_prep import build_tiny_model, default_model_dir, prepare_model

            prepare_model(log=lambda *_: None)
            tiny = build_tiny_model(out / "tiny-model", default_model_dir())
            cfg = quick_config(out, str(tiny), users=users, variants=chosen)
        else:
            _ensure_model()
            cfg = AblateConfig(
                out_dir=out, users=users, steps=steps, base_answers=base_answers, eval_questions=eval_questions,
                max_new_tokens=max_tokens, variants=chosen,
            )  # fmt: skip
        report = run_ablation(cfg)
    typer.echo((out / "table.md").read_text())
    typer.echo(json.dumps({"out": str(out), "variants": [r["variant"] for r in report["rows"]]}))


# Commands owned by the processes live next to them; the top imports them (never the reverse).
# Each of these modules imports only typer at module level, so `rlhb --help` stays instant.
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(records_app, name="records")
records_app.command("tail")(records_tail)  # reads the topic the aggregator writes; lives at the top
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
app.add_typer(schemas_app, name="schemas")
app.command("api")(run_api)
app.command("trainer")(run_trainer)
app.command("simulate")(simulate)
app.command("demo")(demo)

if __name__ == "__main__":
    app()
