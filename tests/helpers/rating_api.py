"""A real API for the rating tests: uvicorn on a loopback port, real broker and Redis, no model
(the rating routes need none), raters configured, and the ratings store at a given URL."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers.serving import LiveServer, new_topics, serving_settings

RATERS = {"ann": "ann-rater-token-0123456789", "bob": "bob-rater-token-0123456789"}


def rater(name: str) -> dict[str, str]:
    return {"X-Rater-Token": RATERS[name]}


@contextlib.contextmanager
def rating_api(root: Path, bootstrap: str, redis_url: str, store_url: str, **overrides) -> Iterator[LiveServer]:
    from service.api.app import create_app

    fields = dict(
        serve_model=False,
        rater_tokens=",".join(f"{name}={token}" for name, token in RATERS.items()),
        ratings_store=store_url,
    )
    fields.update(overrides)
    (root / "no-model").mkdir(parents=True, exist_ok=True)  # never loaded (serve_model=False), but must exist
    settings = serving_settings(
        root, bootstrap, redis_url, f"rlhbtest:{uuid.uuid4().hex[:10]}:", new_topics(bootstrap), root / "no-model",
        **fields,
    )  # fmt: skip
    server = LiveServer(create_app(settings))
    server.thread.start()
    _wait_alive(server.url)  # not /readyz: without a model it never turns ready
    try:
        yield server
    finally:
        server.stop()


def _wait_alive(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the API at {url} did not start within {timeout_s}s")
