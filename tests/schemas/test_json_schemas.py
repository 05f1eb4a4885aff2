"""The checked-in JSON Schemas (schemas/json/) equal what the pydantic models produce now.

A change to a wire contract (a topic message or an HTTP body) must come with its regenerated
schema, so client teams in other languages see it; this test is the CI check."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlhb.cli import app
from rlhb.schemas_cli import DEFAULT_DIR, stale_files, write_schemas
from schemas.export import CONTRACTS, REGENERATE, rendered_schemas


def test_checked_in_schemas_are_current():
    stale = stale_files(DEFAULT_DIR)
    assert not stale, (
        f"schemas/json/ is out of date with the pydantic models in schemas/ ({', '.join(stale)}). "
        f"Run `{REGENERATE}` (or `.venv/bin/rlhb schemas export`), review the diff of schemas/json/ "
        "(it is the wire-contract change client teams will see) and commit it with the model change."
    )


def test_every_topic_has_a_schema_and_each_file_is_json_schema():
    names = {name for name, *_ in CONTRACTS}
    assert {"topics/impressions.json", "topics/feedback.json", "topics/behavior-records.json"} <= names
    for name, text in rendered_schemas().items():
        schema = json.loads(text)
        assert schema["$schema"].startswith("https://json-schema.org/"), name
        assert schema["type"] == "object" and schema["properties"], name
        assert REGENERATE in schema["$comment"], name


def test_rendering_is_deterministic():
    assert rendered_schemas() == rendered_schemas()


def test_export_writes_removes_leftovers_and_check_detects_drift(tmp_path):
    runner = CliRunner()
    (tmp_path / "topics").mkdir()
    (tmp_path / "topics" / "gone.json").write_text("{}")
    result = runner.invoke(app, ["schemas", "export", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "topics" / "gone.json").exists()
    assert stale_files(tmp_path) == []
    assert runner.invoke(app, ["schemas", "export", "--out", str(tmp_path), "--check"]).exit_code == 0

    (tmp_path / "topics" / "feedback.json").write_text("{}\n")
    result = runner.invoke(app, ["schemas", "export", "--out", str(tmp_path), "--check"])
    assert result.exit_code == 1
    assert "topics/feedback.json" in result.output and REGENERATE in result.output
    write_schemas(tmp_path)
    assert stale_files(tmp_path) == []
