"""The dashboard in a real headless Chromium against a real API: it loads without console errors,
asks for the admin token once, shows the active version, the processes, versions, rounds and
curves, and a real click on "Roll back" moves the registry's active pointer and the page shows it.

``RLHB_DASHBOARD_SCREENSHOT=path.png`` also saves the screenshot there (docs/img/dashboard.png)."""

from __future__ import annotations

import os
import uuid

import pytest
from playwright.sync_api import expect

from core.process_status import publish_status
from tests.helpers.browser import open_page
from tests.helpers.serving import ADMIN
from tests.helpers.status_api import start_status_api, train_curve, write_round
from trainer.status import TrainerStatus


@pytest.fixture
def api(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path):
    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    a = start_status_api(tmp_path / "api", kafka_bootstrap, redis_url, prefix, tiny_model_dir,
                         versions=["rlhb-r0001", "rlhb-r0002"])  # fmt: skip
    yield a
    a.server.stop()
    keys = list(a.redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        a.redis.delete(*keys)


def _some_history(api, tmp_path) -> TrainerStatus:
    """Two finished rounds with curves and a third training, written by the real writers."""
    r = api.redis
    trainer = TrainerStatus(r, api.prefix, period_s=30.0)
    for n, version in ((1, "rlhb-r0001"), (2, "rlhb-r0002")):
        train_curve(trainer, n, tmp_path / f"r{n}.jsonl", steps=12, seed=0.1 * n)
        trainer.end_round({"round": n, "outcome": "published"})
        write_round(r, api.prefix, round=n, version=version, reason_for_round="200 new records", records=240,
                    seconds=95.0 + n, gate={"kl": 0.1 * n})  # fmt: skip
    train_curve(trainer, 3, tmp_path / "r3.jsonl", steps=5, seed=0.3)
    trainer.steps = 12
    live = {"rlhb-r0002": {"views": 180.0, "likes": 61.0}, "rlhb-r0001": {"views": 400.0, "likes": 112.0},
            "base": {"views": 350.0, "likes": 80.0}}  # fmt: skip
    assert trainer.publish(lambda: {"live_counts": live}, force=True)
    publish_status(r, api.prefix, "aggregator", {"events_per_s": 41.2, "lag": 0}, 30.0, member="agg-1")
    return trainer


def test_dashboard_rollback_click_moves_the_pointer(api, tmp_path):
    trainer = _some_history(api, tmp_path)
    try:
        with open_page(f"{api.url}/dashboard") as page:
            assert page.locator("#main").is_hidden()  # nothing is fetched before the token
            page.fill("#token", ADMIN)
            page.click("#token-form button[type=submit]")
            # Locator waits, not wait_for_function: the page's CSP forbids the eval that one needs.
            expect(page.locator("#active-version")).to_have_text("rlhb-r0002")
            expect(page.locator("#curves svg polyline")).to_have_count(8)  # 4 curves x (round 3, round 2)
            assert page.evaluate("sessionStorage.getItem('rlhb-admin-token')") == ADMIN
            expect(page.locator("#token-form")).to_be_hidden()  # asked once
            assert ADMIN not in page.url
            assert "training round 3 step 5 of 12" in page.text_content("#proc-trainer")
            assert "41.2 events/s" in page.text_content("#proc-aggregator")
            active_row = page.locator("#versions tr.active-row")
            assert active_row.get_attribute("data-version") == "rlhb-r0002"
            assert "33.9%" in active_row.text_content()  # 61 likes / 180 views
            assert "rlhb-r0001" in active_row.locator(".lineage").nth(1).text_content()  # its parent
            assert page.locator("#rounds tbody tr").count() == 3  # the running round + two finished
            shot = os.environ.get("RLHB_DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
            page.screenshot(path=shot, full_page=True)
            assert os.path.getsize(shot) > 10_000

            page.click("#btn-rollback")
            expect(page.locator("#active-version")).to_have_text("rlhb-r0001")
            assert api.registry.active() == "rlhb-r0001"
            assert "active: rlhb-r0001 (was rlhb-r0002)" in page.text_content("#action-msg")
            expect(page.locator("#versions tr.active-row")).to_have_attribute("data-version", "rlhb-r0001")
            assert page.rlhb_errors == []
    finally:
        trainer.close()
