"""``rlhb simulate`` against a real API (uvicorn, tiny model, real broker and Redis): answers
come over HTTP, every viewer's events land on the feedback topic, and evaluation mode sends none."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from rlhb.simulate.driver import SimulationConfig, feedback_events, poisson, question_stream, run_simulation
from rlhb.simulate.users import Reaction
from schemas import FeedbackEvent
from tests.helpers.serving import ADMIN, LiveServer, new_topics, serving_settings


def _read_topic(bootstrap: str, topic: str, want: int, timeout_s: float = 15) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=200).values():
            got.extend(msgs)
    # Nothing more may arrive: poll once more to catch extras.
    for msgs in consumer.poll(timeout_ms=500).values():
        got.extend(msgs)
    consumer.close()
    return got


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path_factory):
    from service.api.app import create_app

    topics = new_topics(kafka_bootstrap)
    prefix = f"rlhbtest:{uuid.uuid4().hex[:10]}:"
    settings = serving_settings(
        Path(tmp_path_factory.mktemp("sim")), kafka_bootstrap, redis_url, prefix, topics, tiny_model_dir
    )
    server = LiveServer(create_app(settings)).start()
    yield server.url, topics
    server.stop()


def test_simulated_users_send_every_viewers_events(api, kafka_bootstrap):
    url, topics = api
    # Several viewers per answer report through one driver: a trusted relay (the admin token), as the
    # API requires for feedback on behalf of users other than the asker.
    config = SimulationConfig(
        api_url=url, viewers_mean=3.0, max_tokens=8, concurrency=3, seed=1, run_tag="t1", admin_token=ADMIN
    )
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "What is a wavelength?", "How far is the moon?"]
    served = run_simulation(config, questions)
    assert sorted(s.question for s in served) == sorted(questions)
    assert all(s.impression_id and s.adapter_version == "base" and s.views >= 1 for s in served)
    # The tiny random model writes gibberish: the users judge it degenerate, as they should.
    assert all(s.degenerate for s in served)
    sent = sum(s.events_sent for s in served)
    assert sent == sum(s.views + s.clicks + s.likes + s.dislikes for s in served)
    events = [
        FeedbackEvent.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, topics["feedback"], sent)
    ]
    assert len(events) == sent
    by_impression = {s.impression_id: s for s in served}
    for s in served:
        kinds = [e.kind.value for e in events if e.impression_id == s.impression_id]
        assert kinds.count("view") == s.views and kinds.count("like") == s.likes
    assert {e.impression_id for e in events} == set(by_impression)

    # Same seed, same draws: reactions depend on (seed, index), not on thread timing.
    again = run_simulation(
        SimulationConfig(api_url=url, viewers_mean=3.0, max_tokens=8, seed=1, send_feedback=False, concurrency=1),
        questions,
    )
    assert sorted(s.views for s in again) == sorted(s.views for s in served)


def test_evaluation_mode_pins_a_version_and_sends_nothing(api, kafka_bootstrap):
    url, topics = api
    before = len(_read_topic(kafka_bootstrap, topics["feedback"], 10**6, timeout_s=2))
    config = SimulationConfig(api_url=url, model="base", send_feedback=False, max_tokens=8, viewers_mean=1.0)
    served = run_simulation(config, ["What is the capital of France?", "Who wrote Hamlet?"])
    assert [s.events_sent for s in served] == [0, 0] and all(s.views == 1 for s in served)
    assert all(s.adapter_version == "base" for s in served)
    assert len(_read_topic(kafka_bootstrap, topics["feedback"], 10**6, timeout_s=2)) == before


def test_a_behavior_sentence_goes_with_every_chat_request(api, kafka_bootstrap):
    """The demo's behavior-following check asks one version under the least preferred sentence:
    the sentence must reach the server (the impression it logs carries it)."""
    from schemas import Impression

    url, topics = api
    least = "Users liked this answer at a low rate and disliked it at a high rate."
    config = SimulationConfig(api_url=url, model="base", send_feedback=False, max_tokens=8, behavior=least)
    served = run_simulation(config, ["Who painted the Mona Lisa?"])
    logged = [Impression.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, topics["impressions"], 99)]
    mine = [i for i in logged if i.impression_id == served[0].impression_id]
    assert mine and mine[0].behavior == least


def test_unknown_version_is_a_clear_error(api):
    url, _ = api
    with pytest.raises(RuntimeError, match="404"):
        run_simulation(SimulationConfig(api_url=url, model="no-such-version", send_feedback=False), ["Hi there?"])


def test_the_first_failure_ends_the_run_and_the_queued_questions_are_not_asked(api, monkeypatch):
    """An API that keeps failing (here: an unknown version, 404 at once) ends the run at the first
    failure: the questions still queued are dropped. Before, each was asked in turn and failed too:
    with 503s and their retries a 300-answer batch hung for ~25 minutes. A spy counts the asks."""
    from rlhb.simulate import driver

    url, _ = api
    asked: list[str] = []
    real_ask = driver.ApiClient.ask

    def counting_ask(self, question):
        asked.append(question)
        return real_ask(self, question)

    monkeypatch.setattr(driver.ApiClient, "ask", counting_ask)
    config = SimulationConfig(api_url=url, model="no-such-version", send_feedback=False, concurrency=2)
    with pytest.raises(RuntimeError, match="404"):
        run_simulation(config, [f"Question number {i}?" for i in range(80)])
    assert 1 <= len(asked) < 40  # a few in flight when the first failed; all 80 before


def test_pure_helpers():
    import random

    assert feedback_events("imp", [Reaction(click=True, like=False, dislike=True)], "tag", 3) == [
        {"event_id": "tag-3-0-view", "impression_id": "imp", "kind": "view"},
        {"event_id": "tag-3-0-click", "impression_id": "imp", "kind": "click"},
        {"event_id": "tag-3-0-dislike", "impression_id": "imp", "kind": "dislike"},
    ]
    rng = random.Random(0)
    draws = [poisson(4.0, rng) for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 4.0) < 0.15
    stream = list(question_stream(["a", "b", "c"], 7, seed=0))
    assert sorted(stream[:3]) == ["a", "b", "c"] and len(stream) == 7
    with pytest.raises(ValueError, match="viewers_mean"):
        SimulationConfig(viewers_mean=0.5)
