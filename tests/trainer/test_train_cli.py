"""`rlhb train` and `rlhb train plot` end to end (in-process CLI runner, real tiny model)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhb.cli import app
from tests.helpers.toy_task import toy_records

runner = CliRunner()
SMALL = [
    "--set", "batch_size=4", "--set", "rollouts_per_prompt=2", "--set", "max_new_tokens=2", "--set", "threads=1",
    "--set", "discriminator=lm", "--set", "d_batch_size=2", "--set", "heldout_max=2", "--set", "lora_r=2",
]  # fmt: skip


def records_file(tmp_path, n=16):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in toy_records(n)))
    return path


def test_train_then_plot(tiny_model_dir, tmp_path):
    records = records_file(tmp_path)
    out = tmp_path / "adapters"
    args = ["train", "--algo", "rlhb", "--records", str(records), "--out", str(out), "--steps", "2"]
    args += ["--model", str(tiny_model_dir), "--name", "cli-v1", "--no-progress", *SMALL]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == "cli-v1" and (out / "cli-v1" / "adapter_model.safetensors").is_file()
    metrics = out / "cli-v1.metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 2

    png = tmp_path / "curves.png"
    result = runner.invoke(app, ["train", "plot", str(metrics), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no records (the file is empty)"),
        ('{"impression_id": "x"}\n', "records.jsonl:1: query: Field required"),
        ("GOOD\nnot json\n", "records.jsonl:2: not valid JSON"),
    ],
)
def test_bad_records_file_is_one_clear_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "records.jsonl"
    path.write_text(content.replace("GOOD", toy_records(1)[0].model_dump_json()))
    result = runner.invoke(app, ["train", "--records", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_options_exit_2_with_what_to_do(tmp_path):
    records = records_file(tmp_path, 4)
    cases = [
        (["--algo", "dpo"], "unknown --algo 'dpo'"),
        (["--set", "kl_coef=-1"], "kl_coef must be >= 0"),
        (["--set", "nonsense=1"], "--set nonsense: rlhb has no such option"),
        (["--set", "batch_size=many"], "cannot read 'many'"),
        (["--model", str(tmp_path)], "no config.json there"),
        (["--from-adapter", str(tmp_path)], "not a PEFT adapter folder"),
        ([], None),  # --records given, everything else default: reaches the model check only if no error above
    ]
    for extra, message in cases[:-1]:
        result = runner.invoke(app, ["train", "--records", str(records), "--out", str(tmp_path), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
    result = runner.invoke(app, ["train", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--records FILE.jsonl is required" in result.output


def test_plot_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["train", "plot", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2 and "no such metrics file" in result.output
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"unrelated": 1}\n')
    result = runner.invoke(app, ["train", "plot", str(bad), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "none of the plotted metrics" in result.output


def test_rlhb_device_is_read_by_train(tmp_path, tiny_model_dir, monkeypatch):
    """`rlhb train` trains where RLHB_DEVICE says (it once ignored it and always used auto): a
    device this machine lacks (cuda:99, absent on a CPU machine and on any GPU box) is refused
    before loading anything, with the setting named."""
    monkeypatch.setenv("RLHB_DEVICE", "cuda:99")
    args = ["train", "--records", str(records_file(tmp_path)), "--out", str(tmp_path / "a"), "--steps", "1"]
    result = runner.invoke(app, [*args, "--model", str(tiny_model_dir), "--no-progress", *SMALL])
    assert result.exit_code == 2, result.output
    assert "RLHB_DEVICE=cuda:99" in result.output
    assert not (tmp_path / "a").exists()
