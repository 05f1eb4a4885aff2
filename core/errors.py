"""The one way errors become a line a person can act on.

Every edge that validates (HTTP routes, CLIs, the aggregator's decoder, record files)
formats pydantic's ``ValidationError`` with :func:`validation_message`, and every CLI
stops with :func:`fail` (one red line on stderr, exit 2), so all processes word the same
mistake the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError


def location(parts: tuple | list, default: str = "body") -> str:
    """``("events", 0, "kind")`` -> ``events[0].kind``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or default


def validation_message(
    err: ValidationError, *, first_only: bool = True, prefix: tuple = (), default: str = "body"
) -> str:
    """``where: what`` for the first error (or every error, ``; ``-joined)."""
    errors = err.errors()[:1] if first_only else err.errors()
    return "; ".join(
        f"{location(tuple(prefix) + tuple(e.get('loc', ())), default)}: {e.get('msg', '')}" for e in errors
    )


def fail(message: str, code: int = 2) -> None:
    """Stop a CLI command with one red ``error:`` line on stderr."""
    import typer

    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def clear_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn configuration and infrastructure errors into one clear line (exit 2)."""
    from core.infra.broker import InfraError

    try:
        yield
    except ValidationError as e:
        fail(validation_message(e, default="settings"))
    except (InfraError, FileNotFoundError, ValueError, TimeoutError, *extra) as e:
        fail(str(e))
