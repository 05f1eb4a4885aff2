"""The typer ``rlhb demo`` command: options to a ``DemoConfig``, then ``run_demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from core.progress import PROGRESS_HELP
from rlhb.demo.config import DemoConfig, parse_sets, quick_config
from rlhb.demo.run import run_demo


def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny model, a few answers, one short round (about a minute)."),
    out: Path = typer.Option(Path("rlhb-demo"), help="Output folder (report.md, report.json, demo.png, logs)."),
    algorithms: str = typer.Option(
        "rlhb,rlhbc,rlhf",
        help="Comma-separated lanes: rlhb (rlhb-penalized's configuration, E54), rlhbc, rlhf, sft, pro, or a variant "
        "ALGO-NAME (rlhb-adversarial: D trained against the policy during PPO; rlhb-frozen: D frozen after warm-up, "
        "every PPO prompt on the served sentence, the rlhb lane until E23; "
        "rlhb-real: the rlhb-frozen lane with truncated answers among D's fakes and log D added to its reward, E18; "
        "rlhb-midcut: rlhb-real with the fakes stopped mid-sentence at any length and rollouts cut at the "
        "token budget penalized, E19; rlhb-midsteer: rlhb-midcut after the steering stage of rlhb-steer, E21, "
        "the rlhb lane until E42; "
        "rlhb-advsteer: rlhb-midsteer with D trained against the policy during PPO, E24; "
        "rlhb-klloss: rlhb-midsteer with the KL in the actor's loss, not the reward, E40, E42; "
        "rlhb-penalized: rlhb-klloss with near-empty and repeated-3-gram penalties in the reward, E53; "
        "rlhb-guarded: rlhb-klloss with near-empty and repeated-3-gram penalties in the reward and rollouts at "
        "the serving temperature, E47).",
    ),
    rounds: int = typer.Option(None, min=1, help="Training rounds per algorithm."),
    steps: int = typer.Option(None, min=1, help="Training iterations per round."),
    base_traffic: int = typer.Option(None, min=1, help="Answers served by base before round 1."),
    traffic_per_round: int = typer.Option(None, min=0, help="Answers served by each new version."),
    eval_samples: int = typer.Option(None, min=1, help="Answers per held-out question per version."),
    max_tokens: int = typer.Option(
        None,
        min=8,
        help="Answer length cap in tokens: serving, the trainer's rollouts and evaluation (default 48; users who "
        "like thorough answers need 96-128, or every answer is cut).",
    ),
    users: str = typer.Option(
        "concise", help="Simulated users: concise | example | warm | thorough | package.module:Class."
    ),
    seed: int = typer.Option(0, help="Seed."),
    drift: str = typer.Option(
        "", help="PRESET_A:PRESET_B@ROUND: the users switch taste at that round (its traffic and evaluation use B)."
    ),
    poison_round: int = typer.Option(
        0, min=0, help="This round trains on inverted feedback (likes and dislikes swapped in the traffic before it)."
    ),
    ab_share: float = typer.Option(
        0.0,
        min=0.0,
        max=0.99,
        help="RLHB_TRAINER_AB_SHARE: a gated candidate serves this share of live traffic "
        "until the live guardrail promotes or rejects it (0: promote at once).",
    ),
    sets: list[str] = typer.Option(
        [],
        "--set",
        help="Trainer override FIELD=VALUE for every lane, or LANE.FIELD=VALUE for one (repeatable), "
        "e.g. --set rlhb.kappa=0.5; a lane ALGO-NAME (rlhb-x) is a variant of ALGO with its own --set.",
    ),
    judge_rejected: bool = typer.Option(
        True, "--judge-rejected/--no-judge-rejected", help="Measure a rejected candidate offline (never served)."
    ),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
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
            max_tokens=max_tokens,
            judge_rejected=judge_rejected,
            drift=drift or None,
            poison_round=poison_round or None,
            ab_share=ab_share or None,
            progress=progress,
        ).items()
        if v is not None
    }
    try:
        names = tuple(a.strip() for a in algorithms.split(",") if a.strip())
        if quick:
            cfg = quick_config(out, algorithms=names, users=users, seed=seed, **overrides)
        else:
            cfg = DemoConfig(out_dir=out, algorithms=names, users=users, seed=seed, **overrides)
        for lane, fields in parse_sets(sets, cfg.algorithms).items():
            cfg.algorithm_config[lane] = {**cfg.lane_overrides(lane), **fields}
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
