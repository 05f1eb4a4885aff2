"""``rlhb schemas``: the JSON Schemas of the wire contracts (topics and HTTP bodies).

    rlhb schemas export [--out DIR]     write them (default: schemas/json/ of this checkout)
    rlhb schemas export --check         exit 1 if the files under --out are not current

The schemas come from the pydantic models (schemas/export.py lists them); the checked-in
copies under schemas/json/ are compared with the models by tests/schemas/test_json_schemas.py.

Imports only typer at module level, so ``rlhb --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

schemas_app = typer.Typer(help="JSON Schemas of the Kafka topics and HTTP bodies.", no_args_is_help=True)

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "schemas" / "json"


def stale_files(directory: Path) -> list[str]:
    """Files under ``directory`` that are missing, differ from the models, or are left over
    from a contract that no longer exists. Empty: the folder is current."""
    from schemas.export import rendered_schemas

    expected = rendered_schemas()
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
    ]
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*.json")} if directory.is_dir() else set()
    return sorted(stale + [name for name in present if name not in expected])


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema file under ``directory`` and delete ``*.json`` files of contracts that
    no longer exist, so the folder mirrors the models exactly. Returns the written paths."""
    from schemas.export import rendered_schemas

    expected = rendered_schemas()
    written = []
    for name, text in expected.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if directory.is_dir():
        for path in directory.rglob("*.json"):
            if path.relative_to(directory).as_posix() not in expected:
                path.unlink()
    return written


@schemas_app.command("export")
def export(
    out: Path = typer.Option(DEFAULT_DIR, "--out", help="Folder to write (topics/*.json, api/*.json)."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if the folder is not current."),
) -> None:
    """Write the JSON Schema of every topic message and HTTP body, generated from the pydantic models."""
    from schemas.export import REGENERATE

    if check:
        stale = stale_files(out)
        if stale:
            typer.echo(
                f"out of date under {out}: {', '.join(stale)}; run `{REGENERATE}` and commit the result", err=True
            )
            raise typer.Exit(1)
        typer.echo(f"{out}: current")
        return
    for path in write_schemas(out):
        typer.echo(str(path))
