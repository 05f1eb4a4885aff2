"""Progress bars of long CLI work go to stderr only, show when forced (``--progress``), stay off
when stderr is not a terminal or with ``--no-progress``, and never touch the JSON result on
stdout (scripts and tests parse it): `rlhb records export` against the real broker and
`rlhb train` on the tiny model."""

from __future__ import annotations

import json

from kafka import KafkaProducer
from typer.testing import CliRunner

from core.progress import progress_enabled
from rlhb.cli import app
from tests.helpers.toy_task import toy_records
from tests.trainer.test_train_cli import SMALL, records_file

runner = CliRunner()


def test_without_a_flag_the_bar_follows_the_terminal(monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(None) is False and progress_enabled(True) is True
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress_enabled(None) is True and progress_enabled(False) is False


def test_records_export_bar_on_stderr_json_on_stdout(kafka_bootstrap, unique_topics, redis_url, tmp_path):
    records = toy_records(12)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for r in records:
        producer.send(unique_topics["records"], key=r.impression_id.encode(), value=r.model_dump_json().encode())
    producer.flush()
    producer.close()
    env = {
        "RLHB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RLHB_REDIS_URL": redis_url,
        "RLHB_TOPIC_RECORDS": unique_topics["records"],
        "RLHB_STATE_DIR": str(tmp_path / "state"),
    }
    runs = {}
    for flag in ("--progress", "--no-progress", None):  # None: CliRunner's stderr is not a terminal
        out = tmp_path / f"r{flag}.jsonl"
        res = runner.invoke(app, ["records", "export", "--out", str(out), *([flag] if flag else [])], env=env)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == {"records": 12, "out": str(out)}  # stdout is exactly the JSON line
        runs[flag] = res.stderr
    assert "records: 100%" in runs["--progress"] and "12/12" in runs["--progress"]
    assert "records:" not in runs["--no-progress"] and "records:" not in runs[None]


def test_train_bar_on_stderr_json_on_stdout(tiny_model_dir, tmp_path):
    args = ["train", "--algo", "rlhb", "--records", str(records_file(tmp_path)), "--out", str(tmp_path / "a")]
    args += ["--steps", "2", "--model", str(tiny_model_dir), "--name", "bar-v1", "--progress", *SMALL]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "rlhb: 100%" in res.stderr and "2/2" in res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["version"] == "bar-v1"
