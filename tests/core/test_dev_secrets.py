"""Per-install secrets of the embedded default (core/dev_secrets.py), and the API signing ids
with the per-install key, never the old public constant, when no secret is configured."""

from __future__ import annotations

import stat
import uuid

import pytest
from fastapi.testclient import TestClient

from core.dev_secrets import (
    ADMIN_TOKEN_FILE,
    IMPRESSION_SECRET_FILE,
    fill_deployment_secrets,
    load_or_create_secret,
)
from core.impression_ids import ImpressionIds as ImpressionSigner
from core.settings import ApiSettings
from service.api.app import create_app


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_created_once_owner_only_and_then_reused(tmp_path):
    path = tmp_path / "state" / "admin-token"
    first, created = load_or_create_secret(path)
    assert created and len(first) >= 32 and _mode(path) == 0o600
    again, created = load_or_create_secret(path)
    assert again == first and not created
    path.chmod(0o644)  # widened by hand: narrowed again, the value kept
    assert load_or_create_secret(path) == (first, False) and _mode(path) == 0o600
    path.write_text("short\n")
    with pytest.raises(ValueError, match="delete it"):
        load_or_create_secret(path)


def test_rlhb_up_fills_only_what_is_not_configured(tmp_path):
    env: dict[str, str] = {}
    lines = fill_deployment_secrets(env, tmp_path)
    token = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    assert env["RLHB_API_ADMIN_TOKEN"] == token and token in lines[0] and "generated" in lines[0]
    assert env["RLHB_API_IMPRESSION_SECRET"] == (tmp_path / IMPRESSION_SECRET_FILE).read_text().strip()
    assert env["RLHB_API_IMPRESSION_SECRET"] != token
    again: dict[str, str] = {}
    assert token in fill_deployment_secrets(again, tmp_path)[0] and again == env  # reused, said so
    configured = {"RLHB_API_ADMIN_TOKEN": "x" * 20, "RLHB_API_IMPRESSION_SECRET": "y" * 20}
    assert fill_deployment_secrets(dict(configured), tmp_path / "other") == []
    assert not (tmp_path / "other").exists()


def test_dev_mode_api_signs_with_the_per_install_key_across_restarts(
    tmp_path, kafka_bootstrap, unique_topics, redis_url, redis_prefix
):
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url, redis_prefix=redis_prefix, dev_mode=True,
        serve_model=False, state_dir=tmp_path / "state", topic_feedback=unique_topics["feedback"],
        topic_impressions=unique_topics["impressions"], topic_records=unique_topics["records"],
        topic_dead_letter=unique_topics["dead_letter"],
    )  # fmt: skip
    client_id = {"X-Client-Id": "dev-secrets-client-01"}

    def like(client, iid: str):
        event = {"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": "like"}
        return client.post("/v1/feedback", json={"events": [event]}, headers=client_id)

    with TestClient(create_app(settings)) as client:
        key_file = tmp_path / "state" / IMPRESSION_SECRET_FILE
        assert _mode(key_file) == 0o600
        signed_before = ImpressionSigner(key_file.read_text().strip()).issue(client_id["X-Client-Id"])
        assert like(client, signed_before).status_code == 202
        public = ImpressionSigner("dev-only-impression-secret").issue(client_id["X-Client-Id"])
        refused = like(client, public)
        assert refused.status_code == 422 and "not an impression id issued by this server" in refused.text
    with TestClient(create_app(settings)) as client:  # a restart on the same data folder
        later = ImpressionSigner(key_file.read_text().strip()).issue(client_id["X-Client-Id"])
        assert like(client, later).status_code == 202
        assert like(client, signed_before).status_code == 202  # signed before the restart: still verifies
        assert like(client, public).status_code == 422
