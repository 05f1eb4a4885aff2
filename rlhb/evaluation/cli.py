"""CLI: ``rlhb eval compare A B`` (rlhb/evaluation/compare.py), ``rlhb eval ratings [load FILE]``
(rlhb/evaluation/ratings.py). Imports only typer at module
level, so ``rlhb --help`` stays instant; bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.errors import clear_errors

eval_app = typer.Typer(help="Offline evaluation of adapter versions.", no_args_is_help=True)


@eval_app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Version A: 'base', a version name in --adapter-dir, or an adapter folder."),
    b: str = typer.Argument(..., help="Version B, the same forms."),
    judge: str = typer.Option(
        "users:concise",
        help="users:PRESET (simulated user's p_like), openai:URL, or classifier:PATH (a saved RLHBC behavior "
        "classifier's reward).",
    ),
    prompt_file: Path | None = typer.Option(
        None, help="openai judge prompt with {question}, {answer_a}, {answer_b}; it must answer A or B."
    ),
    judge_model: str = typer.Option("gpt-4-turbo", help="Model name sent to the openai:URL endpoint."),
    out: Path = typer.Option(Path("rlhb-compare"), help="Output folder (report.md, report.json, wtl.png)."),
    questions: int = typer.Option(100, min=0, help="Held-out questions (0: all)."),
    max_new_tokens: int = typer.Option(96, min=1, help="Answer length cap in tokens."),
    temperature: float = typer.Option(0.0, min=0.0, help="0: greedy (reproducible); >0: paired sampling."),
    seed: int = typer.Option(0, help="Question sample, sampling and bootstrap seed."),
    threads: int = typer.Option(2, min=1, help="Torch threads."),
    adapter_dir: Path | None = typer.Option(None, help="Where version folders live (default: RLHB_ADAPTER_DIR)."),
    model_path: str = typer.Option("", help="Base model folder (default: RLHB_MODEL_PATH or the prepared SmolLM2)."),
) -> None:
    """Win-Tie-Loss of A against B on held-out questions, each pair judged in both orders."""
    from core.settings import CommonSettings
    from rlhb.evaluation.compare import CompareConfig, run_compare

    with clear_errors():
        settings = CommonSettings()
        model = model_path or settings.resolved_model_path()
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"no model at {model}; run `rlhb model prepare` or set --model-path / RLHB_MODEL_PATH")
        cfg = CompareConfig(
            a=a, b=b, judge=judge, out=out, model_path=model, adapter_dir=adapter_dir or settings.adapter_dir,
            questions=questions, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            threads=threads, prompt_file=prompt_file, judge_model=judge_model,
        )  # fmt: skip
        result = run_compare(cfg)
    typer.echo((out / "report.md").read_text())
    summary = {k: result.as_dict()[k] for k in ("wins", "ties", "losses", "p_value", "win_rate_diff", "ci95")}
    typer.echo(json.dumps({"out": str(out), **summary}))


# ------------------------------------------------------------------ human ratings (rlhb/evaluation/ratings.py)
ratings_app = typer.Typer(
    help="Human ratings of answer pairs (the /rate page): with no command, report them as the paper's figure 3 "
    "(--out); `load FILE` adds rating tasks."
)
eval_app.add_typer(ratings_app, name="ratings")
STORE_HELP = (
    "postgresql:// URL or SQLite file (default: RLHB_API_RATINGS_STORE, else ratings.sqlite3 in RLHB_STATE_DIR)."
)


def _open_ratings_store(store: str):
    from core.ratings_store import open_store
    from core.settings import CommonSettings

    return open_store(store, CommonSettings().state_dir)


@ratings_app.callback(invoke_without_command=True)
def ratings(
    ctx: typer.Context,
    out: Path = typer.Option(Path("rlhb-ratings"), help="Output folder (ratings.md, ratings.json, ratings.png)."),
    store: str = typer.Option("", envvar="RLHB_API_RATINGS_STORE", show_envvar=False, help=STORE_HELP),
) -> None:
    """Report the ratings: Quality and Satisfaction per version, Win-Tie-Loss per pair (paper, figure 3)."""
    if ctx.invoked_subcommand is not None:
        return
    import sqlite3

    from core.ratings_store import RatingsError, describe
    from rlhb.evaluation.ratings import summarize, write_report

    with clear_errors(RatingsError, sqlite3.Error):
        db = _open_ratings_store(store)
        if not db.postgres and not db.path.is_file():  # a report must not create an empty store
            raise ValueError(f"no ratings store at {db.path}; load tasks with `rlhb eval ratings load FILE`")
        summary = summarize(db.ratings())
        write_report(summary, out, describe(db.url))
    typer.echo((out / "ratings.md").read_text())
    typer.echo(json.dumps({"out": str(out), "ratings": summary["ratings"], "versions": list(summary["versions"])}))


@ratings_app.command("load")
def ratings_load(
    file: Path = typer.Argument(..., help="`rlhb eval compare`'s report.json, or JSON/JSONL pairs "
                                          "{question, version_a, answer_a, version_b, answer_b}."),
    store: str = typer.Option("", envvar="RLHB_API_RATINGS_STORE", show_envvar=False, help=STORE_HELP),
) -> None:  # fmt: skip
    """Add rating tasks (pairs already loaded are skipped); each gets a random display order."""
    import sqlite3

    from core.ratings_store import RatingsError, describe
    from rlhb.evaluation.ratings import read_pairs

    with clear_errors(RatingsError, sqlite3.Error):
        pairs = read_pairs(file)
        db = _open_ratings_store(store)
        added = db.add_tasks(pairs)
        total = db.task_count()
    typer.echo(json.dumps({"store": describe(db.url), "read": len(pairs), "added": added, "tasks": total}))
