"""``rlhb api``: run the HTTP API under uvicorn (host/port from ApiSettings, overridable).

Imports only typer at module level, so ``rlhb --help`` stays instant.
"""

from __future__ import annotations

import typer


def run_api(
    host: str = typer.Option(None, help="Address to bind (default: RLHB_API_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to bind (default: RLHB_API_PORT, 8000)."),
    log_level: str = typer.Option("info", help="Log level of the JSON logs."),
) -> None:
    """Serve /v1/query, /v1/chat/completions, /v1/feedback, /admin/* and /metrics."""
    import uvicorn

    from core.errors import clear_errors
    from core.settings import ApiSettings
    from service.api.app import create_app
    from service.api.logs import configure_json_logging

    with clear_errors():
        overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        settings = ApiSettings(**overrides)
    configure_json_logging(log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )
