"""GET /admin/status, /admin/versions and the curve route on a real API, with the aggregator and
trainer status written to the real Redis by the real writers, and with them missing (down)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.process_status import publish_status
from tests.helpers.serving import AUTH
from tests.helpers.status_api import start_status_api, train_curve, write_round
from trainer.status import TrainerStatus


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path_factory):
    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    a = start_status_api(tmp_path_factory.mktemp("status"), kafka_bootstrap, redis_url, prefix, tiny_model_dir,
                         versions=["s1", "s2"])  # fmt: skip
    yield a
    a.server.stop()
    keys = list(a.redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        a.redis.delete(*keys)


def test_status_needs_the_admin_token(api):
    assert httpx.get(f"{api.url}/admin/status").status_code == 401
    assert httpx.get(f"{api.url}/admin/status", headers={"Authorization": "Bearer nope"}).status_code == 403


def test_silent_processes_read_as_down(api):
    body = httpx.get(f"{api.url}/admin/status", headers=AUTH).json()
    assert body["active"] == "s2" and body["api"]["state"] == "up"
    assert body["aggregator"] == {"state": "down", "summary": "down", "members": []}
    assert body["trainer"]["state"] == "down" and body["trainer"]["summary"] == "down"


def test_status_gathers_the_three_processes_rounds_and_curves(api, tmp_path):
    r = api.redis
    publish_status(r, api.prefix, "aggregator", {"events_per_s": 12.5, "lag": 3, "dedupe_hits": 2}, 5.0, member="agg-1")
    trainer = TrainerStatus(r, api.prefix, period_s=5.0)
    write_round(r, api.prefix, round=1, version="s2", reason_for_round="200 new records", records=240, seconds=31.0,
                gate={"kl": 0.12, "heldout_reward": 0.4})  # fmt: skip
    train_curve(trainer, 2, tmp_path / "r2.jsonl", steps=3)
    trainer.steps = 10  # round 2 runs 10 iterations; 3 are done
    live = {"s2": {"views": 100.0, "likes": 50.0}, "s1": {"views": 0.0, "likes": 0.0}}
    assert trainer.publish(lambda: {"live_counts": live}, force=True)
    try:
        body = httpx.get(f"{api.url}/admin/status", headers=AUTH).json()
        assert body["aggregator"]["state"] == "up"
        assert body["aggregator"]["summary"] == "1 member(s), 12.5 events/s, lag 3"
        assert body["trainer"]["summary"] == "training round 2 step 3 of 10 (ETA 4s)"
        assert body["trainer"]["members"][0]["d_acc"] == pytest.approx(0.56)
        assert [x["round"] for x in body["rounds"]] == [1]
        assert body["rounds"][0]["reason_for_round"] == "200 new records" and "gate" not in body["rounds"][0]

        curve = httpx.get(f"{api.url}/admin/rounds/2/curve", headers=AUTH).json()
        assert [p["i"] for p in curve["points"]] == [0, 1, 2]
        assert curve["points"][2]["d_acc"] == pytest.approx(0.56) and curve["points"][0]["clipfrac"] == 0.2
        assert httpx.get(f"{api.url}/admin/rounds/0/curve", headers=AUTH).status_code == 422

        versions = httpx.get(f"{api.url}/admin/versions", headers=AUTH).json()
        rows = {v["name"]: v for v in versions["versions"]}
        assert versions["active"] == "s2" and versions["rollback_target"] == "s1"
        assert versions["live_counts_from"] == "live"
        assert rows["s2"]["active"] and rows["s2"]["lineage"] == ["s2", "s1"] and rows["s2"]["parent"] == "s1"
        assert rows["s2"]["gate"] == {"round": 1, "outcome": "published", "reason": "passed",
                                      "metrics": {"kl": 0.12, "heldout_reward": 0.4}}  # fmt: skip
        assert rows["s2"]["live"]["like_rate"] == 0.5 and rows["s2"]["live"]["views"] == 100.0
        assert rows["s2"]["live"]["ci_low"] == pytest.approx(0.4038, abs=1e-3)
        assert rows["s1"]["live"]["like_rate"] is None and rows["s1"]["live"]["ci_high"] == 1.0
        assert list(rows)[-1] == "base"

        trainer.end_round({"round": 2, "outcome": "diverged", "reason": "kl became nan"})
        trainer.publish(dict, force=True)
        body = httpx.get(f"{api.url}/admin/status", headers=AUTH).json()
        assert body["trainer"]["summary"] == "idle; last error: round 2: diverged: kl became nan"
    finally:
        trainer.close()
        r.delete(f"{api.prefix}status:aggregator")
    body = httpx.get(f"{api.url}/admin/status", headers=AUTH).json()
    assert body["trainer"]["state"] == "down" and body["aggregator"]["state"] == "down"


def test_the_page_and_its_assets_are_served_from_the_package(api):
    page = httpx.get(f"{api.url}/dashboard")
    assert (
        page.status_code == 200
        and "dashboard.js" in page.text
        and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert httpx.get(f"{api.url}/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
    missing = httpx.get(f"{api.url}/dashboard/nope.js")
    assert missing.status_code == 404 and "no dashboard asset" in missing.json()["detail"]
