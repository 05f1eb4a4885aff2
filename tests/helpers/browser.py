"""A real headless browser for page tests: Debian's Chromium (``/usr/bin/chromium``, installed by
``make setup``) driven by Playwright's Python API (the ``playwright`` package, without its own
browser download: ``executable_path`` points at the system one).

``open_page(url)`` yields a Playwright ``Page`` and collects the page's console errors and
uncaught exceptions in ``page.rlhb_errors`` (a list of strings), so a test can assert that a page
loaded cleanly. The launch flags are the ones this machine needs: ``--no-sandbox`` (tests run as
root) and no background networking (the machine's network is closed; Chromium's own update and
sync connections would otherwise be refused by the dozen and slow every start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("RLHB_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    """The browser binary; a clear error (not a skip) when it is missing."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"no Chromium at {CHROMIUM}: `make setup` installs Debian's chromium "
            "(apt-get install chromium); set RLHB_TEST_CHROMIUM to use another binary"
        )
    return CHROMIUM


@contextlib.contextmanager
def open_page(url: str, timeout_ms: int = 30_000, viewport=(1280, 900)) -> Iterator:
    """A loaded page at ``url``; ``page.rlhb_errors`` lists console errors and page exceptions."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.rlhb_errors = errors
            page.goto(url, wait_until="load")
            yield page
        finally:
            browser.close()
