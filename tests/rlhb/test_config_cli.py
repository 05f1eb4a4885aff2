"""`rlhb config show` masks secrets; docs/configuration.md matches the settings classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from core.settings import AggregatorSettings, ApiSettings, GateSettings, TrainerSettings
from rlhb.config_cli import DOC_PATH, doc_with_reference, mask, reference

ADMIN_TOKEN = "admin-4f7c0a9e1b2d3c5e6f708192a3b4c5d6"
IMPRESSION_SECRET = "impr-9d8c7b6a5f4e3d2c1b0a99887766"
REDIS_PASSWORD = "r3dis-pa55word-0042"


def _rlhb(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("RLHB_", "REDIS_URL", "KAFKA_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rlhb.cli", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_show_masks_secrets_and_says_where_values_came_from():
    env = {
        "RLHB_API_ADMIN_TOKEN": ADMIN_TOKEN,
        "RLHB_API_IMPRESSION_SECRET": IMPRESSION_SECRET,
        "REDIS_URL": f"redis://default:{REDIS_PASSWORD}@redis.internal:6379/0",
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": f"svc:{REDIS_PASSWORD}@kafka:9092",
        "RLHB_TRAINER_ALGO__KL_COEF": "0.02",
        "RLHB_TRAINER_GATE__KL_BOUND": "0.3",
    }
    done = _rlhb("config", "show", "all", "--json", **env)
    assert done.returncode == 0, done.stderr
    for secret in (ADMIN_TOKEN, IMPRESSION_SECRET, REDIS_PASSWORD):
        assert secret not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    api = {row["variable"]: row for row in shown["api"]}
    assert api["RLHB_API_ADMIN_TOKEN"]["value"] == "***" and api["RLHB_API_ADMIN_TOKEN"]["source"] == "env"
    assert api["RLHB_REDIS_URL"]["value"] == "redis://default:***@redis.internal:6379/0"
    assert api["RLHB_REDIS_URL"]["source"] == "env (REDIS_URL)"
    assert api["RLHB_API_PORT"] == {"variable": "RLHB_API_PORT", "value": 8000, "source": "default"}
    trainer = {row["variable"]: row for row in shown["trainer"]}
    assert trainer["RLHB_TRAINER_ALGO__KL_COEF"] == {
        "variable": "RLHB_TRAINER_ALGO__KL_COEF",
        "value": 0.02,
        "source": "env",
    }
    assert trainer["RLHB_TRAINER_GATE__KL_BOUND"]["value"] == 0.3
    assert trainer["RLHB_TRAINER_ALGO__LAM"]["source"] == "default"

    table = _rlhb("config", "show", "api", **env)  # the rich table
    assert table.returncode == 0, table.stderr
    assert "***" in table.stdout and "RLHB_API_ADMIN_TOKEN" in table.stdout
    for secret in (ADMIN_TOKEN, IMPRESSION_SECRET, REDIS_PASSWORD):
        assert secret not in table.stdout + table.stderr


def test_show_reports_a_bad_variable_and_exits_2():
    done = _rlhb("config", "show", "trainer", RLHB_TRAINER_ALGO__BATCH_SIZEE="4")
    assert done.returncode == 2
    assert "RLHB_TRAINER_ALGO__BATCH_SIZEE" in done.stderr and "did you mean batch_size" in done.stderr


def test_mask():
    assert mask("admin_token", "abc") == "***" and mask("admin_token", "") == ""
    assert mask("redis_url", "redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask("url", "https://h/x?token=abc&a=1") == "https://h/x?token=***&a=1"
    assert mask("redis_url", "redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_every_field_is_described():
    for cls in (ApiSettings, AggregatorSettings, TrainerSettings, GateSettings):
        missing = [name for name, field in cls.model_fields.items() if not field.description]
        assert not missing, f"{cls.__name__}: fields without a description: {missing}"
    undocumented = [v.name for v in reference("all") if not v.description]
    assert not undocumented, f"variables without a description: {undocumented}"


def test_the_doc_lists_every_variable_and_is_up_to_date():
    doc = DOC_PATH.read_text()
    assert doc_with_reference(doc) == doc, "docs/configuration.md is out of date: run `rlhb config env --write-doc`"
    for v in reference("all"):
        assert f"`{v.name}`" in doc
