"""Bad configuration fails fast with one clear line that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from core.settings import AggregatorSettings, ApiSettings, CommonSettings, TrainerSettings

GOOD_TOKEN = "x" * 32


def test_empty_admin_token_is_refused_outside_dev_mode():
    with pytest.raises(ValidationError, match="RLHB_API_ADMIN_TOKEN"):
        ApiSettings(admin_token="", impression_secret=GOOD_TOKEN)
    with pytest.raises(ValidationError, match="placeholder"):
        ApiSettings(admin_token="changeme", impression_secret=GOOD_TOKEN)
    assert ApiSettings(admin_token="", impression_secret="", dev_mode=True).dev_mode


def test_good_secrets_are_accepted():
    s = ApiSettings(admin_token=GOOD_TOKEN, impression_secret=GOOD_TOKEN)
    assert s.port == 8000


def test_malformed_bootstrap_and_redis_url_say_what_to_do():
    with pytest.raises(ValidationError, match="host:port"):
        CommonSettings(kafka_bootstrap_servers="localhost")
    with pytest.raises(ValidationError, match="redis://"):
        CommonSettings(redis_url="http://localhost:6379")


def test_missing_model_path_points_at_model_prepare(tmp_path):
    with pytest.raises(ValidationError, match="rlhb model prepare"):
        CommonSettings(model_path=str(tmp_path / "nope"))


def test_env_prefixes_and_conventional_aliases(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("RLHB_AGG_NUM_BUCKETS", "7")
    monkeypatch.setenv("RLHB_TRAINER_ALGORITHM", "pro")
    assert AggregatorSettings().redis_url.endswith("/3")
    assert AggregatorSettings().num_buckets == 7
    assert TrainerSettings().algorithm == "pro"
    monkeypatch.setenv("RLHB_TRAINER_ALGORITHM", "magic")
    with pytest.raises(ValidationError):
        TrainerSettings()


def _run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RLHB_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rlhb.cli", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_cli_bad_model_path_is_one_line_not_a_traceback(tmp_path):
    result = _run_cli(["up"], RLHB_MODEL_PATH=str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rlhb model prepare" in lines[0]


def test_cli_unreachable_redis_is_one_clear_line(tmp_path, smollm2_dir):
    result = _run_cli(
        ["up"], RLHB_REDIS_URL="redis://127.0.0.1:1/0", RLHB_MODEL_PATH=str(smollm2_dir), RLHB_STATE_DIR=str(tmp_path)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Redis does not answer" in result.stderr and "RLHB_REDIS_URL" in result.stderr


def test_cli_unreachable_kafka_is_one_clear_line(tmp_path, smollm2_dir):
    result = _run_cli(
        ["up"],
        RLHB_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        RLHB_MODEL_PATH=str(smollm2_dir),
        RLHB_STATE_DIR=str(tmp_path),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no Kafka broker answers" in result.stderr


def test_infra_status_reports_reachability(kafka_bootstrap, redis_url):
    ok = _run_cli(["infra", "status"], RLHB_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, RLHB_REDIS_URL=redis_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"reachable": true' in ok.stdout
    bad = _run_cli(["infra", "status"], RLHB_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", RLHB_REDIS_URL=redis_url)
    assert bad.returncode == 1
    assert '"reachable": false' in bad.stdout
