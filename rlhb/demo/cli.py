"""The typer ``rlhb demo`` command: options to a ``DemoConfig``, then ``run_demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from rlhb.demo.config import DemoConfig, quick_config
from rlhb.demo.run import run_demo


def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny model, a few answers, one short round (about a minute)."),
    out: Path = typer.Option(Path("rlhb-demo"), help="Output folder (report.md, report.json, demo.png, logs)."),
    algorithms: str = typer.Option("rlhb,rlhbc,rlhf", help="Comma-separated lanes: rlhb, rlhbc, rlhf, sft, pro."),
    rounds: int = typer.Option(None, min=1, help="Training rounds per algorithm."),
    steps: int = typer.Option(None, min=1, help="Training iterations per round."),
    base_traffic: int = typer.Option(None, min=1, help="Answers served by base before round 1."),
    traffic_per_round: int = typer.Option(None, min=0, help="Answers served by each new version."),
    eval_samples: int = typer.Option(None, min=1, help="Answers per held-out question per version."),
    users: str = typer.Option("concise", help="Simulated users: concise | example | warm | package.module:Class."),
    seed: int = typer.Option(0, help="Seed."),
    judge_rejected: bool = typer.Option(
        True, "--judge-rejected/--no-judge-rejected", help="Measure a rejected candidate offline (never served)."
    ),
) -> None:
    """The closed loop with simulated users: serve, react, aggregate, train, gate, hot-swap, report."""
    overrides = {
        k: v
        for k, v in dict(
            rounds=rounds,
            steps=steps,
            base_traffic=base_traffic,
            traffic_per_round=traffic_per_round,
            eval_samples=eval_samples,
            judge_rejected=judge_rejected,
        ).items()
        if v is not None
    }
    try:
        names = tuple(a.strip() for a in algorithms.split(",") if a.strip())
        if quick:
            cfg = quick_config(out, algorithms=names, users=users, seed=seed, **overrides)
        else:
            cfg = DemoConfig(out_dir=out, algorithms=names, users=users, seed=seed, **overrides)
        from rlhb.simulate.users import load_user_model

        load_user_model(users)
    except ValueError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        run_demo(cfg)
    except (RuntimeError, TimeoutError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
