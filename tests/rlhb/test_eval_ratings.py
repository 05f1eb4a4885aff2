"""`rlhb eval ratings [load FILE]` (rlhb/evaluation/ratings.py, cli.py): tasks loaded from a
compare report, a known set of ratings, and the figure-3 numbers the report must give, on a
real SQLite file and on the machine's real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.ratings_store import Rating, RatingsStore
from rlhb.cli import app
from rlhb.evaluation.ratings import read_pairs
from tests.helpers.postgres import fresh_database

# (quality A, satisfaction A, quality B, satisfaction B, preference) of 10 tasks, A = v2, B = v1.
RATINGS = [
    ("excellent", "satisfied", "medium", "partially", "a"),
    ("excellent", "satisfied", "good", "satisfied", "a"),
    ("excellent", "partially", "bad", "unsatisfied", "a"),
    ("good", "satisfied", "good", "partially", "a"),
    ("good", "partially", "medium", "unsatisfied", "a"),
    ("good", "partially", "bad", "unsatisfied", "a"),
    ("medium", "partially", "medium", "partially", "tie"),
    ("medium", "unsatisfied", "bad", "unsatisfied", "b"),
    ("bad", "unsatisfied", "good", "satisfied", "b"),
    ("bad", "unsatisfied", "medium", "partially", "b"),
]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "ratings.sqlite3")
    else:
        with fresh_database() as url:
            yield url


def write_compare_report(path, n: int) -> None:
    rows = [{"question": f"q{i}?", "answer_a": f"v2 answer {i}", "answer_b": f"v1 answer {i}", "outcome": "tie"}
            for i in range(n)]  # fmt: skip
    path.write_text(json.dumps({"a": "v2", "b": "v1", "judge": "users:concise", "rows": rows}))


def test_report_numbers_on_known_ratings(store_url, tmp_path):
    report = tmp_path / "report.json"
    write_compare_report(report, len(RATINGS))
    loaded = cli("eval", "ratings", "load", str(report), "--store", store_url)
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.output.strip().splitlines()[-1])["added"] == len(RATINGS)

    store = RatingsStore(store_url)
    for i, scores in enumerate(RATINGS):
        task = store.next_task("ann" if i < 5 else "bob")
        assert task.question == f"q{i}?" and task.version_a == "v2"
        store.add_rating(task.id, "ann" if i < 5 else "bob", Rating(*scores))

    out = tmp_path / "out"
    result = cli("eval", "ratings", "--store", store_url, "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ratings.json").read_text())
    assert (summary["ratings"], summary["raters"], summary["tasks"]) == (10, 2, 10)
    v2, v1 = summary["versions"]["v2"], summary["versions"]["v1"]
    assert {k: c["count"] for k, c in v2["quality"].items()} == {"bad": 2, "medium": 2, "good": 3, "excellent": 3}
    assert {k: c["count"] for k, c in v1["quality"].items()} == {"bad": 3, "medium": 4, "good": 3, "excellent": 0}
    assert {k: c["count"] for k, c in v2["satisfaction"].items()} == {"unsatisfied": 3, "partially": 4,
                                                                      "satisfied": 3}  # fmt: skip
    assert {k: c["count"] for k, c in v1["satisfaction"].items()} == {"unsatisfied": 4, "partially": 4,
                                                                      "satisfied": 2}  # fmt: skip
    assert v2["quality"]["excellent"]["share"] == pytest.approx(0.3)
    assert v2["good_or_excellent_share"] == pytest.approx(0.6) and v1["good_or_excellent_share"] == pytest.approx(0.3)
    assert v2["satisfied_or_partially_share"] == pytest.approx(0.7)
    assert v1["satisfied_or_partially_share"] == pytest.approx(0.6)

    [pair] = summary["pairs"]
    assert (pair["a"], pair["b"], pair["n"]) == ("v2", "v1", 10)
    pref, quality = pair["preference"], pair["quality"]
    assert (pref["wins"], pref["ties"], pref["losses"]) == (6, 1, 3)
    assert pref["p_value"] == pytest.approx(0.5078125)  # two-sided binomial, 6 of 9
    assert (quality["wins"], quality["ties"], quality["losses"]) == (6, 2, 2)
    assert quality["p_value"] == pytest.approx(0.2890625)  # 6 of 8

    md = (out / "ratings.md").read_text()
    assert "| v2 | 10 | 2 (20%) | 2 (20%) | 3 (30%) | 3 (30%) | 60% |" in md
    assert "| v2 vs v1 | 10 | preference | 6 (60%) | 1 (10%) | 3 (30%) | 0.5078 |" in md
    assert md in result.output
    assert (out / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_formats_and_errors(tmp_path):
    store = str(tmp_path / "r.sqlite3")
    pairs = [{"question": f"q{i}", "version_a": "x", "answer_a": "1", "version_b": "y", "answer_b": "2"}
             for i in range(3)]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    (tmp_path / "p.json").write_text(json.dumps(pairs))
    assert [p.question for p in read_pairs(tmp_path / "p.jsonl")] == ["q0", "q1", "q2"]
    assert read_pairs(tmp_path / "p.json") == read_pairs(tmp_path / "p.jsonl")

    first = cli("eval", "ratings", "load", str(tmp_path / "p.jsonl"), "--store", store)
    again = cli("eval", "ratings", "load", str(tmp_path / "p.json"), "--store", store)
    assert json.loads(first.output)["added"] == 3 and json.loads(again.output) == {
        "store": store, "read": 3, "added": 0, "tasks": 3}  # fmt: skip

    (tmp_path / "bad.jsonl").write_text(json.dumps(pairs[0]) + "\n" + json.dumps({**pairs[1], "answer_b": 5}) + "\n")
    bad = cli("eval", "ratings", "load", str(tmp_path / "bad.jsonl"), "--store", store)
    assert bad.exit_code == 2 and "line 2: answer_b" in bad.output
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    assert "line 1: not JSON" in cli("eval", "ratings", "load", str(tmp_path / "broken.jsonl"), "--store", store).output

    missing = cli("eval", "ratings", "--store", str(tmp_path / "none.sqlite3"), "--out", str(tmp_path / "o"))
    assert missing.exit_code == 2 and "no ratings store" in missing.output
    assert not (tmp_path / "none.sqlite3").exists()
    empty = cli("eval", "ratings", "--store", store, "--out", str(tmp_path / "o"))
    assert empty.exit_code == 0 and "Nothing rated yet." in empty.output
