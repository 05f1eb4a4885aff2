"""``rlhb train``: offline training from exported behavior records, and ``rlhb train plot``.

    rlhb train --algo rlhb --records records.jsonl [--out DIR] [--steps N] [--from-adapter DIR]
               [--model PATH] [--name NAME] [--set key=value ...]
    rlhb train plot METRICS.jsonl --out curves.png

Imports stay cheap (no torch at import time): ``rlhb --help`` must be instant.
Bad input (records, config values, an existing version name) prints one line and exits 2.
"""

from __future__ import annotations

import json
import time
import typing
from dataclasses import fields
from pathlib import Path

import typer

from core.errors import fail, validation_message
from core.progress import PROGRESS_HELP, progress_enabled

train_app = typer.Typer(
    help="Train a LoRA adapter from behavior records (rlhb, rlhbc, rlhf, sft, pro); `plot` draws curves.",
    invoke_without_command=True,
)


def _convert(raw: str, annotation: object, key: str) -> object:
    """A --set value parsed by the config field's type."""
    from trainer.config import parse_value

    return parse_value(raw, annotation, f"--set {key}={raw}")


def build_config(algo: str, assignments: list[str]):
    """The algorithm's Config with ``key=value`` overrides (validated by its __post_init__)."""
    from trainer.algorithms import ALGORITHMS, default_config

    if algo not in ALGORITHMS:
        raise ValueError(f"unknown --algo {algo!r}; choose one of: {', '.join(ALGORITHMS)}")
    config = default_config(algo)
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    overrides = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key not in names:
            raise ValueError(f"--set {key}: {algo} has no such option; options: {', '.join(names)}")
        overrides[key] = _convert(value, hints[key], key)
    return cls(**{**{n: getattr(config, n) for n in names}, **overrides})


def _parent_version(folder: Path):
    from core.checkpoint_format import METADATA
    from schemas.adapters import AdapterVersion

    folder = folder.expanduser().resolve()
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--from-adapter {folder}: not a PEFT adapter folder (no adapter_config.json)")
    if (folder / METADATA).is_file():
        meta = AdapterVersion.model_validate_json((folder / METADATA).read_text())
        return meta.model_copy(update={"path": str(folder)})
    return AdapterVersion(name=folder.name, id=1, path=str(folder))


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    algo: str = typer.Option("rlhb", help="Algorithm: rlhb, rlhbc, rlhf, sft or pro."),
    records: Path | None = typer.Option(None, help="JSONL of BehaviorRecord (one per line), e.g. an export."),
    out: Path | None = typer.Option(None, help="Folder for version directories (default: RLHB_ADAPTER_DIR)."),
    steps: int = typer.Option(20, min=1, help="Training iterations."),
    from_adapter: Path | None = typer.Option(None, help="Start from this adapter folder (e.g. RLHF, then RLHB)."),
    model: str | None = typer.Option(None, help="Base HF causal LM folder (default: RLHB_MODEL_PATH or SmolLM2)."),
    name: str | None = typer.Option(None, help="Version name (default: <algo>-<UTC time>)."),
    metrics: Path | None = typer.Option(None, help="Metrics JSONL (default: OUT/<name>.metrics.jsonl)."),
    seed: int = typer.Option(0, help="Random seed."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable): --set kl_coef=0.02."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Train from exported records and write one immutable adapter version."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from trainer.algorithms.base import TrainingDiverged, TrainRequest
    from trainer.config import ConfigError
    from trainer.records import RecordsError, load_records

    if records is None:
        fail("--records FILE.jsonl is required (export behavior records first)")
    try:
        config = build_config(algo, set_)
        loaded = load_records(records)
        from core.settings import CommonSettings

        settings = CommonSettings()
        from core.device import resolve_device

        resolve_device(settings.device, settings.dtype)  # RLHB_DEVICE / RLHB_DTYPE: a clear error now, not mid-round
        model_path = model or settings.resolved_model_path()
        if not (Path(model_path) / "config.json").is_file():
            raise FileNotFoundError(f"--model {model_path}: no config.json there; pass an HF causal LM folder")
        output_root = (out or settings.adapter_dir).expanduser()
        version_name = name or f"{algo}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        parent = _parent_version(from_adapter) if from_adapter is not None else None
        request = TrainRequest(
            records=loaded,
            model_path=str(model_path),
            output_root=output_root,
            version_name=version_name,
            parent=parent,
            metrics_path=metrics or output_root / f"{version_name}.metrics.jsonl",
            seed=seed,
            steps=steps,
            progress=progress_enabled(progress),
            device=settings.device,
            dtype=settings.dtype,
        )
    except (RecordsError, ConfigError, ValueError, FileNotFoundError, ValidationError) as e:
        fail(validation_message(e) if isinstance(e, ValidationError) else str(e))
        return
    from trainer.algorithms import get_algorithm

    try:
        result = get_algorithm(algo)(request, config)
    except (RecordsError, ConfigError, FileExistsError) as e:
        fail(str(e))
        return
    except TrainingDiverged as e:
        fail(str(e), code=1)
        return
    last = result.metrics[-1] if result.metrics else {}
    typer.echo(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "version": result.version.name,
                "algorithm": algo,
                "steps": steps,
                "metrics_path": str(request.metrics_path),
                "last": {k: v for k, v in last.items() if isinstance(v, int | float)},
            }
        )
    )


@train_app.command("plot")
def plot(
    metrics_file: Path = typer.Argument(..., help="Metrics JSONL written by a training run."),
    out: Path = typer.Option(Path("curves.png"), help="PNG to write."),
) -> None:
    """Draw discriminator loss, discriminator reward, mean return and KL (the paper's figures 4-6)."""
    from trainer.plot import plot_file

    if not metrics_file.is_file():
        fail(f"{metrics_file}: no such metrics file")
    try:
        path = plot_file(metrics_file, out)
    except ValueError as e:
        fail(str(e))
        return
    typer.echo(str(path))
