"""CLI: ``rlhb aggregator`` (run a member), ``rlhb aggregator replay``, ``rlhb records export``.

Registered in rlhb/cli.py FEATURE_COMMANDS; imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from core.errors import clear_errors
from core.progress import PROGRESS_HELP

aggregator_app = typer.Typer(help="Kafka consumer: feedback + impressions -> counts in Redis -> behavior records.")
records_app = typer.Typer(help="Behavior records.", no_args_is_help=True)


def _settings():
    from core.settings import AggregatorSettings

    return AggregatorSettings()


def _logging() -> None:
    from service.aggregator.redact import RedactingFilter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # every line, whichever library logs it
        handler.addFilter(RedactingFilter())


@aggregator_app.callback(invoke_without_command=True)
def aggregator(ctx: typer.Context) -> None:
    """Run one aggregator member (several share the partitions). Stops on SIGTERM/Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from service.aggregator.consumer import run

    _logging()
    with clear_errors():
        stats = run(_settings())
    typer.echo(json.dumps(stats.__dict__))


@aggregator_app.command("replay")
def replay_cmd() -> None:
    """Rebuild the Redis state from offset 0 of the topics (stop the aggregators first)."""
    from service.aggregator.consumer import replay

    _logging()
    with clear_errors():
        summary = replay(_settings())
    typer.echo(json.dumps(summary))


@records_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="JSONL file: the latest record of each impression."),
    dpo: Path | None = typer.Option(None, "--dpo", help="Also write prompt/chosen/rejected pairs (JSONL)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Write behavior records to JSONL (and an offline-DPO view)."""
    from core.infra.resolve import resolve_infra
    from service.aggregator.export import export

    with clear_errors():
        settings = _settings()
        infra = resolve_infra(settings, create_topics=False)
        try:
            summary = export(
                infra.bootstrap, settings.topic_records, out, dpo, options=infra.kafka_options, progress=progress
            )
        finally:
            infra.stop()
    typer.echo(json.dumps(summary))
