"""`rlhb eval compare A B` (rlhb/evaluation/compare.py, judges.py, cli.py).

The statistics on hand-made cases; the both-orders rule with judges whose behavior is known
(one always picks the answer shown first: every pair must be a tie); the simulated-user judge
on written answers; and the whole command on the tiny model against a stand-in for an LLM
judge endpoint (a small OpenAI-compatible FastAPI server started here, since no LLM can run
on this machine) that prefers the shorter answer; and the behavior-classifier judge with real
classifiers trained here (RLHBC's eq. 1, MiniLM cut to two layers so it trains in seconds),
one on the keyword toy task and one on the tiny model's own answers.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from rlhb.cli import app
from rlhb.evaluation.compare import (
    CompareConfig,
    answer,
    bootstrap_ci,
    compare_answers,
    held_out_questions,
    outcome,
    sign_test,
)
from rlhb.evaluation.judges import ClassifierJudge, UsersJudge
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.behavior_toy import KEYWORD, toy_record, toy_records
from tests.helpers.serving import LiveServer
from trainer.reward_models.behavior_classifier import (
    ClassifierConfig,
    save_behavior_classifier,
    train_behavior_classifier,
)
from trainer.reward_models.encoder import EncoderConfig

QUESTIONS = ["What is the capital of France?", "How far is the moon?", "Who wrote Hamlet?"]
GOOD = [
    "Paris is the capital of France.",
    "The moon is about 384,400 km from Earth on average.",
    "William Shakespeare wrote Hamlet around 1600.",
]
BAD = ["the the the the the the the the the the", "moon moon moon moon moon moon moon moon", "x"]


class FirstShown:
    """A judge with total position bias."""

    name = "first-shown"

    def pick(self, question, first, second):
        return "first"


def test_sign_test_p_value_on_a_hand_made_case():
    # 9 wins, 1 loss (ties dropped): P(X <= 1 | n=10, p=1/2) = 11/1024, two-sided twice that.
    assert sign_test(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(6, 0) == pytest.approx(2 / 64)


def test_bootstrap_ci_of_the_win_rate_difference():
    assert bootstrap_ci(["win"] * 7) == (1.0, 1.0)
    outcomes = ["win"] * 9 + ["loss"] * 1 + ["tie"] * 5
    low, high = bootstrap_ci(outcomes)
    assert low < (9 - 1) / 15 < high and -1 <= low and high <= 1
    assert bootstrap_ci(outcomes) == (low, high)  # seeded: reproducible
    assert 0 < low  # 9 of 10 decided pairs won: the difference is positive


def test_both_orders_must_agree_else_tie():
    assert outcome("first", "second") == "win"  # A first: A; B first: A
    assert outcome("second", "first") == "loss"  # A first: B; B first: B
    assert outcome("first", "first") == "tie"  # whoever is shown first: position bias
    assert outcome("second", "second") == "tie"
    assert outcome("first", "tie") == outcome("tie", "second") == outcome("tie", "tie") == "tie"
    result = compare_answers(QUESTIONS, GOOD, BAD, FirstShown())
    assert (result.wins, result.ties, result.losses, result.p_value) == (0, 3, 0, 1.0)


def test_users_judge_prefers_the_higher_like_probability_and_swapping_swaps():
    judge = UsersJudge("concise")
    p_good = [judge.user.judge(q, a).p_like for q, a in zip(QUESTIONS, GOOD, strict=True)]
    p_bad = [judge.user.judge(q, a).p_like for q, a in zip(QUESTIONS, BAD, strict=True)]
    assert all(g > b for g, b in zip(p_good, p_bad, strict=True))  # the premise of the test
    ab = compare_answers(QUESTIONS, GOOD, BAD, judge, "good", "bad")
    ba = compare_answers(QUESTIONS, BAD, GOOD, judge, "bad", "good")
    assert (ab.wins, ab.ties, ab.losses) == (3, 0, 0) and (ba.wins, ba.ties, ba.losses) == (0, 0, 3)
    assert ab.win_rate_diff == 1.0 and ba.win_rate_diff == -1.0 and ab.p_value == ba.p_value == 0.25
    same = compare_answers(QUESTIONS, GOOD, GOOD, judge)
    assert (same.wins, same.ties, same.losses) == (0, 3, 0)  # equal p_like: tie


# ------------------------------------------------------------------ the command, tiny model
def stand_in_llm_judge():
    """Stand-in for an OpenAI-compatible LLM endpoint: answers "A" when the answer after
    'A>>>' is shorter than the one after 'B>>>' (ties go to "A": a position bias)."""
    from fastapi import FastAPI

    app_ = FastAPI()
    app_.state.prompts = []

    @app_.get("/readyz")
    def ready():
        return {"status": "ready"}

    @app_.post("/v1/chat/completions")
    def chat(body: dict):
        prompt = body["messages"][-1]["content"]
        app_.state.prompts.append(prompt)
        first = prompt.split("A>>>", 1)[1].split("<<<", 1)[0]
        second = prompt.split("B>>>", 1)[1].split("<<<", 1)[0]
        verdict = "B" if len(second) < len(first) else "A"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"{verdict}."}}]}

    return app_


def shorter_rule(row) -> str:
    a, b = len(row["answer_a"]), len(row["answer_b"])
    return "win" if a < b else "loss" if b < a else "tie"


@pytest.fixture
def stand_in():
    server_app = stand_in_llm_judge()
    server = LiveServer(server_app).start(ready_timeout_s=30)
    yield server, server_app.state.prompts
    server.stop()


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, (result.stdout or "") + (getattr(result, "stderr", "") or "")


def test_compare_command_on_the_tiny_model_with_an_openai_compatible_judge(tmp_path, tiny_model_dir, stand_in):
    server, prompts = stand_in
    adapters = tmp_path / "adapters"
    write_test_adapter(tiny_model_dir, adapters, "v-big", seed=3, scale=2.0)  # far from base: other answers
    prompt = tmp_path / "judge.txt"
    prompt.write_text('Q: {question}\nA>>>{answer_a}<<<\nB>>>{answer_b}<<<\nReply "A" or "B". {"json": "braces ok"}')
    common = ["--judge", f"openai:{server.url}/v1", "--prompt-file", str(prompt), "--questions", "5",
              "--max-new-tokens", "6", "--threads", "1", "--adapter-dir", str(adapters),
              "--model-path", str(tiny_model_dir)]  # fmt: skip
    reports = {}
    for a, b in (("base", "v-big"), ("v-big", "base")):
        out = tmp_path / f"{a}-vs-{b}"
        result, text = run_cli("eval", "compare", a, b, *common, "--out", str(out))
        assert result.exit_code == 0, text + repr(result.exception)
        report = json.loads((out / "report.json").read_text())
        assert (out / "report.md").read_text().startswith(f"# {a} vs {b}")
        assert (out / "wtl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        reports[a] = report
        # counts add up; each row's outcome is the stand-in's rule applied in both orders
        assert report["wins"] + report["ties"] + report["losses"] == report["n"] == len(report["rows"]) == 5
        assert [r["outcome"] for r in report["rows"]] == [shorter_rule(r) for r in report["rows"]]
        assert report["p_value"] == pytest.approx(sign_test(report["wins"], report["losses"]))
        assert report["win_rate_diff"] == (report["wins"] - report["losses"]) / 5
        assert report["ci95"][0] <= report["win_rate_diff"] <= report["ci95"][1]
        assert report["settings"]["unparsed_judge_replies"] == 0
    ab, ba = reports["base"], reports["v-big"]
    assert (ab["wins"], ab["ties"], ab["losses"]) == (ba["losses"], ba["ties"], ba["wins"])
    assert ab["wins"] + ab["losses"] > 0, ab["rows"]  # the adapter changed some answers' lengths
    assert not math.isclose(ab["p_value"], 0.0)
    # two requests per question and run (both orders), with the prompt file's text and the answers
    assert len(prompts) == 2 * 2 * 5
    row = ab["rows"][0]
    assert f"A>>>{row['answer_a']}<<<" in prompts[0] and f"B>>>{row['answer_b']}<<<" in prompts[0]
    assert f"A>>>{row['answer_b']}<<<" in prompts[1] and '{"json": "braces ok"}' in prompts[1]


def test_compare_command_users_judge_same_version_is_all_ties(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    result, text = run_cli(
        "eval", "compare", "base", "base", "--judge", "users:concise", "--questions", "3", "--max-new-tokens", "4",
        "--threads", "1", "--model-path", str(tiny_model_dir), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text + repr(result.exception)
    report = json.loads((out / "report.json").read_text())
    assert (report["wins"], report["ties"], report["losses"], report["p_value"]) == (0, 3, 0, 1.0)
    assert all(r["answer_a"] == r["answer_b"] for r in report["rows"])  # greedy: the same answers


@pytest.mark.parametrize(
    "args, message",
    [
        (["base", "nope"], "version 'nope'"),
        (["base", "base", "--judge", "users:nobody"], "unknown preset"),
        (["base", "base", "--judge", "gpt4"], "use users:PRESET"),
        (["base", "base", "--judge", "classifier:/no/such/classifier"], "no saved behavior classifier at"),
        (["base", "base", "--judge", "openai:ftp://x"], "http://"),
        (["base", "base", "--judge", "openai:http://127.0.0.1:1/v1", "--prompt-file", "/no/such"], "no such file"),
        (["base", "base", "--judge", "users:concise", "--prompt-file", "/no/such"], "openai:URL judges only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, args, message):
    result, text = run_cli("eval", "compare", *args, "--model-path", str(tiny_model_dir), "--adapter-dir",
                           str(tmp_path), "--out", str(tmp_path / "out"))  # fmt: skip
    assert result.exit_code == 2, text
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()  # nothing generated before the input was checked


def test_prompt_without_placeholders_is_refused(tmp_path, tiny_model_dir):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Which is better? {question}")
    result, text = run_cli("eval", "compare", "base", "base", "--judge", "openai:http://127.0.0.1:1/v1",
                           "--prompt-file", str(prompt), "--model-path", str(tiny_model_dir))  # fmt: skip
    assert result.exit_code == 2 and "missing {answer_a}, {answer_b}" in text


# ------------------------------------------------------------------ the behavior-classifier judge
def fit_and_save(records, folder, epochs: int, held_out: float):
    config = ClassifierConfig(
        encoder=EncoderConfig(num_layers=2), epochs=epochs, batch_size=8, lr=3e-4, held_out_fraction=held_out
    )
    model, metrics = train_behavior_classifier(records, config, seed=0)
    return save_behavior_classifier(model, folder), metrics


@pytest.fixture(scope="module")
def keyword_classifier(tmp_path_factory):
    """Saved classifier of the toy task: users like answers with KEYWORD and dislike the rest."""
    folder, metrics = fit_and_save(toy_records(n_queries=40), tmp_path_factory.mktemp("clf") / "keyword", 2, 0.25)
    assert metrics["accuracy"] > 0.8, metrics  # the premise: it learned the preference
    return folder


def test_classifier_judge_prefers_what_the_classifier_learned(keyword_classifier):
    judge = ClassifierJudge(str(keyword_classifier))
    questions = ["Tell me about a volcano?", "Tell me about a violin?", "Tell me about a kettle?"]  # unseen topics
    liked = [f"A volcano is like a {KEYWORD}.", f"The violin is like a {KEYWORD}.", f"A kettle is like a {KEYWORD}."]
    plain = ["A volcano is what it is.", "The violin is what it is.", "A kettle is what it is."]
    ab = compare_answers(questions, liked, plain, judge, "liked", "plain")
    ba = compare_answers(questions, plain, liked, judge, "plain", "liked")
    assert (ab.wins, ab.ties, ab.losses) == (3, 0, 0) and (ba.wins, ba.ties, ba.losses) == (0, 0, 3)
    assert ab.p_value == ba.p_value == 0.25 and ab.judge == f"classifier:{keyword_classifier}"
    # deterministic: one verdict whichever answer is shown first
    assert all((r["a_first"], r["b_first"]) == ("first", "second") for r in ab.rows)
    same = compare_answers(questions, liked, liked, judge)
    assert (same.wins, same.ties, same.losses) == (0, 3, 0)  # equal scores: tie, not a coin flip
    # each answer was scored once (cached across both orders and both comparisons)
    assert len(judge.scores) == 6


def test_classifier_judge_ties_within_epsilon(keyword_classifier):
    judge = ClassifierJudge(str(keyword_classifier))
    q, a, b = "Tell me about tea?", "Tea is what it is.", "Tea is what it is!"
    judge.scores[(q, a)], judge.scores[(q, b)] = 0.5, 0.5 + judge.TIE_EPSILON / 2  # float noise, not a preference
    assert judge.pick(q, a, b) == judge.pick(q, b, a) == "tie"
    judge.scores[(q, b)] = 0.5 + 10 * judge.TIE_EPSILON
    assert (judge.pick(q, a, b), judge.pick(q, b, a)) == ("second", "first")


def test_compare_command_with_a_classifier_trained_to_prefer_one_version(tmp_path, tiny_model_dir):
    """Train a classifier on the two versions' own answers, users liking base and disliking
    v-big; `eval compare --judge classifier:PATH` must then side with base, in both orders."""
    adapters, n = tmp_path / "adapters", 8
    big = write_test_adapter(tiny_model_dir, adapters, "v-big", seed=3, scale=2.0)
    cfg = CompareConfig(a="base", b="v-big", judge="", out=tmp_path, model_path=str(tiny_model_dir),
                        adapter_dir=adapters, questions=n, max_new_tokens=6, threads=1)  # fmt: skip
    questions = held_out_questions(n, cfg.seed)  # the command's own sample: same seed, same questions
    base_answers, big_answers = answer(cfg, None, questions), answer(cfg, str(big), questions)
    assert all(x != y for x, y in zip(base_answers, big_answers, strict=True))  # premise: something to judge
    records = [toy_record(2 * i + k, q, ans, liked=k == 0)
               for i, (q, pair) in enumerate(zip(questions, zip(base_answers, big_answers, strict=True), strict=True))
               for k, ans in enumerate(pair)]  # fmt: skip
    folder, _ = fit_and_save(records, tmp_path / "clf", epochs=10, held_out=0.0)

    reports = {}
    for a, b in (("base", "v-big"), ("v-big", "base")):
        out = tmp_path / f"{a}-vs-{b}"
        result, text = run_cli("eval", "compare", a, b, "--judge", f"classifier:{folder}", "--questions", str(n),
                               "--max-new-tokens", "6", "--threads", "1", "--adapter-dir", str(adapters),
                               "--model-path", str(tiny_model_dir), "--out", str(out))  # fmt: skip
        assert result.exit_code == 0, text + repr(result.exception)
        reports[a] = report = json.loads((out / "report.json").read_text())
        assert report["judge"] == f"classifier:{folder}" and report["n"] == n
        # every verdict is the sign of the classifier's reward gap, which the report keeps per answer
        for row in report["rows"]:
            gap = row["score_a"] - row["score_b"]
            want = "tie" if abs(gap) <= ClassifierJudge.TIE_EPSILON else "win" if gap > 0 else "loss"
            assert row["outcome"] == want, row
        assert report["p_value"] == pytest.approx(sign_test(report["wins"], report["losses"]))
    ab, ba = reports["base"], reports["v-big"]
    assert ab["wins"] >= n - 1 and ab["losses"] == 0, ab  # it learned to like base's answers
    assert ab["p_value"] < 0.05  # 7+ wins, no losses: P <= 2 / 2**7
    assert (ab["wins"], ab["ties"], ab["losses"]) == (ba["losses"], ba["ties"], ba["wins"])
