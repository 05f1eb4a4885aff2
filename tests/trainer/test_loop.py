"""The trainer loop in-process: real broker, real Redis, tiny model, real RLHB rounds."""

from __future__ import annotations

import json
import random
import time

import pytest

from schemas.adapters import AdapterStatus
from schemas.behavior import BehaviorRecord
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.toy_task import toy_records
from tests.helpers.trainer_loop import produce_records, trainer_env
from trainer.loop import LoopSettings, Trainer, read_rounds, read_status


@pytest.fixture
def make_trainer(monkeypatch, tmp_path, kafka_bootstrap, redis_url, redis_prefix, unique_topics, tiny_model_dir):
    made = []

    def make(records_per_round: int = 40, **extra: str) -> Trainer:
        env = trainer_env(
            bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
            adapter_dir=tmp_path / "adapters", state_dir=tmp_path / "state", model_dir=tiny_model_dir,
            records_per_round=records_per_round, **extra,
        )  # fmt: skip
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        made.append(Trainer(LoopSettings(), kafka_bootstrap, redis_url))
        made[-1].start()
        return made[-1]

    yield make
    for t in made:
        t.close()


@pytest.fixture
def trainer(make_trainer):
    return make_trainer()


def step_until(trainer: Trainer, rounds: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while trainer.rounds_done < rounds:
        assert time.monotonic() < deadline, f"no round finished in {timeout}s; status {trainer.status()}"
        trainer.step()


def test_rounds_publish_on_m_records_and_on_request_and_rejected_never_go_live(trainer, kafka_bootstrap, redis_client):
    from core.behavior.encoding import RatesEncoding, most_preferred_sentence
    from core.behavior.encoding_store import save_encoding

    # the aggregator's stored encoding, clauses in the other order: the API serves its most preferred sentence
    stored = RatesEncoding(rates=("dislike_rate", "like_rate"))
    save_encoding(redis_client, trainer.settings.redis_prefix, stored)
    produce_records(kafka_bootstrap, trainer.settings.topic_records, toy_records(40))
    step_until(trainer, 1)
    first = trainer.last_round
    assert first["outcome"] == "published", first
    # the gate answered under that served sentence, not under the records' own (E24)
    assert first["gate_behavior"] == most_preferred_sentence(stored) != toy_records(1)[0].behavior_prompt
    assert first["train_records"] + first["heldout_records"] == 40 and first["heldout_records"] > 0
    assert trainer.registry.active() == first["version"]
    assert trainer.registry.validate(first["version"]).status == AdapterStatus.published
    assert first["gate"]["finite"] == 1.0 and first["gate"]["kl_token"] <= trainer.gate_cfg.kl_bound
    # offsets were committed after the round: all 40 records are "seen"
    committed = sum(trainer.consumer.committed(tp) or 0 for tp in trainer.consumer.assignment())
    assert committed == 40 and trainer.new_records == 0

    # a round asked for over Redis (what POST /admin/train pushes), whose candidate fails the gate
    request = {"reason": "test", "requested_at": time.time(), "algorithm": "sft", "gate": {"kl_bound": 1e-9}}
    redis_client.rpush(trainer.requests_key, json.dumps(request))
    step_until(trainer, 2)
    second = trainer.last_round
    assert second["outcome"] == "rejected" and "KL" in second["reason"], second
    assert second["algorithm"] == "sft" and second["version"].startswith("sft-")
    assert second["parent"] == first["version"]  # trained on top of the active version
    assert trainer.registry.active() == first["version"]
    assert trainer.registry.get(second["version"]).status == AdapterStatus.rejected
    assert redis_client.llen(trainer.inflight_key) == 0 and redis_client.llen(trainer.requests_key) == 0

    rounds = read_rounds(redis_client, trainer.settings.redis_prefix)
    assert [r["outcome"] for r in rounds] == ["published", "rejected"]
    trainer._publish_status(force=True)
    status = read_status(redis_client, trainer.settings.redis_prefix)
    assert status["buffer"] == 40 and status["rounds_done"] == 2 and status["active"] == first["version"]


def test_bad_algorithm_override_fails_at_start_with_the_field_names(monkeypatch, redis_url):
    monkeypatch.setenv("RLHB_TRAINER_ALGO__BATCH_SIZEE", "4")
    with pytest.raises(ValueError, match="RLHB_TRAINER_ALGO__BATCH_SIZEE.*did you mean batch_size.*known"):
        from trainer.loop import build_algorithm_config

        build_algorithm_config(LoopSettings(), "rlhb")
    monkeypatch.delenv("RLHB_TRAINER_ALGO__BATCH_SIZEE")
    monkeypatch.setenv("RLHB_TRAINER_ALGORITHM_CONFIG", '{"batch_size": 4}')
    with pytest.raises(ValueError, match="no longer read; use one variable per field: RLHB_TRAINER_ALGO__"):
        LoopSettings()


def served(version: str, start: int, n: int, like_rate: float, seed: int) -> list[BehaviorRecord]:
    """n impressions served by ``version``, one view each, liked with probability like_rate."""
    rng = random.Random(seed)
    return [
        BehaviorRecord(
            impression_id=f"{version}-{start + i}", query="q", response="a", behavior_prompt="b",
            adapter_version=version, counts={"view": 1.0, "like": float(rng.random() < like_rate)}, buckets={},
            behavior_text="", reward=0.0,
        )
        for i in range(n)
    ]  # fmt: skip


def test_guardrail_rolls_back_a_version_users_like_less_from_live_records(
    make_trainer, kafka_bootstrap, tiny_model_dir
):
    trainer = make_trainer(records_per_round=100_000, RLHB_TRAINER_GUARDRAIL="1")
    reg = trainer.registry
    reg.register(write_test_adapter(tiny_model_dir, reg.root, "parent", seed=1, scale=0.01))
    reg.register(write_test_adapter(tiny_model_dir, reg.root, "same", seed=2, scale=0.01, parent="parent"))
    reg.register(write_test_adapter(tiny_model_dir, reg.root, "worse", seed=3, scale=0.01, parent="parent"))
    topic = trainer.settings.topic_records

    def feed(records):
        produce_records(kafka_bootstrap, topic, records)
        deadline = time.monotonic() + 30
        while trainer.buffer.added < feed.total + len(records):
            assert time.monotonic() < deadline, "records did not arrive"
            trainer.step()
        feed.total += len(records)

    feed.total = 0
    reg.promote("parent")
    feed(served("parent", 0, 400, 0.30, seed=1))
    reg.promote("same")  # as good as its parent: noise must not roll it back
    for k in range(4):
        feed(served("same", 100 * k, 100, 0.30, seed=10 + k))
    assert reg.active() == "same" and not trainer.guardrail_rollbacks

    reg.promote("worse")  # parent "parent", like rate halved
    for k in range(4):
        feed(served("worse", 100 * k, 100, 0.10, seed=20 + k))
        if reg.active() != "worse":
            break
    assert reg.active() == "same"  # the previous active version (history), within 400 views
    event = trainer.guardrail_rollbacks[-1]
    assert event["rolled_back"] == "worse" and "like rate" in event["reason"]
    assert reg.get("worse").status == AdapterStatus.rejected and "guardrail" in reg.get("worse").reason


def arm_served(trial: str, arm: str, version: str, start: int, n: int, like_rate: float, seed: int):
    """n impressions of one A/B arm, one view each, liked with probability like_rate."""
    return [
        r.model_copy(update={"arm": arm, "trial": trial, "impression_id": f"{trial}-{arm}-{r.impression_id}"})
        for r in served(version, start, n, like_rate, seed)
    ]


def both_arms(trial: str, active: str, start: int, n: int, active_rate: float, candidate_rate: float, seed: int):
    return arm_served(trial, "active", active, start, n, active_rate, seed) + arm_served(
        trial, "candidate", trial, start, n, candidate_rate, seed + 1000
    )


def test_ab_trial_rejects_a_worse_candidate_promotes_an_as_good_one_and_survives_a_restart(
    make_trainer, kafka_bootstrap, tiny_model_dir
):
    ab = dict(RLHB_TRAINER_AB_SHARE="0.5", RLHB_TRAINER_AB_MIN_VIEWS="300", RLHB_TRAINER_GUARDRAIL_MIN_VIEWS="50")
    trainer = make_trainer(records_per_round=100_000, **ab)
    reg = trainer.registry
    for name, seed in (("act", 1), ("worse", 2), ("good", 3)):
        reg.register(write_test_adapter(tiny_model_dir, reg.root, name, seed=seed, scale=0.01, parent="act"))
    reg.promote("act")
    topic = trainer.settings.topic_records

    def feed(t: Trainer, records, total: int) -> None:
        produce_records(kafka_bootstrap, topic, records)
        deadline = time.monotonic() + 30
        # Records read from the topic: a restarted trainer also reloads its record file first
        # (trainer/record_store.py), which buffer.added counts too.
        while t.buffer.added - t.reloaded < total:
            assert time.monotonic() < deadline, "records did not arrive"
            t.step()

    # The active version's earlier, better counts (another period) must not count: only the arms.
    feed(trainer, served("act", 0, 200, 0.9, seed=1), 200)
    reg.start_trial("worse", 0.5)
    feed(trainer, both_arms("worse", "act", 0, 30, 0.3, 0.1, seed=2), 260)
    assert reg.trial() is not None and not trainer.trial_decisions  # below guardrail_min_views: waiting

    # Restart mid-trial: the trial comes from the registry, the counts from the topic.
    trainer.close()
    trainer = make_trainer(records_per_round=100_000, **ab)
    feed(trainer, [], 260)
    assert trainer.registry.trial().candidate == "worse"
    total = 260
    for k in range(1, 6):
        feed(trainer, both_arms("worse", "act", 100 * k, 60, 0.3, 0.1, seed=10 + k), total + 120)
        total += 120
        if reg.trial() is None:
            break
    decision = trainer.trial_decisions[-1]
    assert decision["candidate"] == "worse" and decision["decision"] == "rejected" and decision["now_active"] == "act"
    assert "same period" in decision["reason"]
    assert reg.serving() == ("act", None)
    assert reg.get("worse").status == AdapterStatus.rejected and "A/B guardrail" in reg.get("worse").reason
    assert reg.trials()[-1]["outcome"] == "rejected"

    # An as-good candidate is promoted after ab_min_views views per arm, not before.
    reg.start_trial("good", 0.5)
    for k in range(6):
        feed(trainer, both_arms("good", "act", 100 * k, 60, 0.3, 0.3, seed=30 + k), total + 120)
        total += 120
        if reg.trial() is None:
            break
    decision = trainer.trial_decisions[-1]
    assert decision["candidate"] == "good" and decision["decision"] == "promoted", decision
    assert decision["behavior"]["near_empty_share"] == decision["behavior"]["near_empty_share_parent"]  # guard ran
    assert min(decision["arms"]["candidate"]["views"], decision["arms"]["active"]["views"]) >= 300
    assert reg.serving() == ("good", None) and reg.get("good").status == AdapterStatus.published

    # A third trainer finds the decisions in the registry and leaves them alone.
    trainer.close()
    trainer = make_trainer(records_per_round=100_000, **ab)
    feed(trainer, [], total)
    assert trainer.check_trial() is None and reg.serving() == ("good", None)
    assert [t["outcome"] for t in reg.trials()] == ["rejected", "promoted"]


def test_ab_trial_rejects_a_candidate_users_like_as_much_whose_live_answers_are_near_empty(
    make_trainer, kafka_bootstrap, tiny_model_dir
):
    """Issue 14 item 5 on the live arms: the like rates alone would promote it (same rate, enough views)."""
    ab = dict(RLHB_TRAINER_AB_SHARE="0.5", RLHB_TRAINER_AB_MIN_VIEWS="60", RLHB_TRAINER_GUARDRAIL_MIN_VIEWS="50")
    trainer = make_trainer(records_per_round=100_000, RLHB_TRAINER_AB_GUARD_MIN_ANSWERS="100", **ab)
    reg = trainer.registry
    for name, seed in (("act", 1), ("terse", 2)):
        reg.register(write_test_adapter(tiny_model_dir, reg.root, name, seed=seed, scale=0.01, parent="act"))
    reg.promote("act")
    reg.start_trial("terse", 0.5)

    def answered(records, answer):
        return [
            r.model_copy(update={"query": f"How do I bake loaf number {i}?", "response": answer(i)})
            for i, r in enumerate(records)
        ]

    full = answered(arm_served("terse", "active", "act", 0, 80, 0.3, seed=1), lambda i: (
        f"Mix flour, water, salt and yeast, knead for ten minutes, let it rise, then bake loaf {i} for forty minutes."
    ))  # fmt: skip
    terse = answered(arm_served("terse", "candidate", "terse", 0, 80, 0.3, seed=1), lambda i: "Bake." if i % 4 else "")
    produce_records(kafka_bootstrap, trainer.settings.topic_records, full + terse)
    deadline = time.monotonic() + 60
    while reg.trial() is not None:
        assert time.monotonic() < deadline, f"no decision: {trainer.trial_look}, {trainer.trial_decisions}"
        trainer.step()
    decision = trainer.trial_decisions[-1]  # fewer answers per arm than the guard needs: promoted, the skip said
    assert decision["decision"] == "promoted" and "fewer than 100" in decision["behavior"]["skipped"]

    trainer.close()  # the same trial again, with the guard's minimum met: rejected on what the arm served
    trainer = make_trainer(records_per_round=100_000, RLHB_TRAINER_AB_GUARD_MIN_ANSWERS="40", **ab)
    reg = trainer.registry
    reg.register(write_test_adapter(tiny_model_dir, reg.root, "terse2", seed=3, scale=0.01, parent="terse"))
    trainer.data_windows.record_round("terse2", None, full)  # as if trained here on these records
    reg.start_trial("terse2", 0.5)
    full2 = [
        r.model_copy(update={"trial": "terse2", "adapter_version": "terse", "impression_id": r.impression_id + "-2"})
        for r in full
    ]
    terse2 = [
        r.model_copy(update={"trial": "terse2", "adapter_version": "terse2", "impression_id": r.impression_id + "-2"})
        for r in terse
    ]
    produce_records(kafka_bootstrap, trainer.settings.topic_records, full2 + terse2)
    deadline = time.monotonic() + 60
    while reg.trial() is not None:
        assert time.monotonic() < deadline, f"no decision: {trainer.trial_look}, {trainer.trial_decisions}"
        trainer.step()
    decision = trainer.trial_decisions[-1]
    assert decision["decision"] == "rejected" and decision["now_active"] == "terse", decision
    assert "live behavior guard" in decision["reason"] and "near-empty answers" in decision["reason"]
    assert decision["behavior"]["near_empty_share"] == 1.0 and decision["behavior"]["near_empty_share_parent"] == 0.0
    assert reg.get("terse2").status == AdapterStatus.rejected and "near-empty" in reg.get("terse2").reason
    assert "data_quarantined" not in decision  # the policy gamed the users, their feedback was fine: data kept
    assert trainer.live.arm_answers  # kept while the trial ran (and "terse"'s, re-read from the topic, dropped)
    assert {trial for trial, _ in trainer.live.arm_answers} == {"terse2"}
    trainer.step()
    assert not trainer.live.arm_answers and trainer.live.get_arm("terse2", "candidate")[0] == 80  # counts stay


def test_with_ab_share_a_round_that_passes_the_gate_starts_a_trial_and_no_round_starts_during_it(
    make_trainer, kafka_bootstrap, redis_client
):
    trainer = make_trainer(records_per_round=40, RLHB_TRAINER_AB_SHARE="0.25")
    produce_records(kafka_bootstrap, trainer.settings.topic_records, toy_records(40))
    step_until(trainer, 1)
    first = trainer.last_round
    assert first["outcome"] == "trial" and first["ab_share"] == 0.25, first
    assert trainer.registry.serving() == ("base", trainer.registry.trial())
    assert trainer.registry.trial().candidate == first["version"] and trainer.registry.trial().share == 0.25
    redis_client.rpush(trainer.requests_key, json.dumps({"reason": "test"}))
    for _ in range(10):
        trainer.step()
    assert trainer.rounds_done == 1 and not trainer.training  # deferred until the trial is decided
    assert trainer.status()["trial"]["candidate"] == first["version"]


def test_a_candidate_users_liked_less_takes_the_records_it_learned_from_out_of_training(make_trainer, kafka_bootstrap):
    """Data rollback (trainer/data_windows.py): rejecting the version does not leave its data to the next round."""
    ab = dict(RLHB_TRAINER_AB_SHARE="0.5", RLHB_TRAINER_AB_MIN_VIEWS="300", RLHB_TRAINER_GUARDRAIL_MIN_VIEWS="50")
    trainer = make_trainer(records_per_round=40, **ab)
    topic = trainer.settings.topic_records
    taught = toy_records(40)  # stands for a period of bad feedback: the round learns from it
    produce_records(kafka_bootstrap, topic, taught)
    step_until(trainer, 1)
    first = trainer.last_round
    assert first["outcome"] == "trial", first
    assert first["data_window"] == {"since": 0.0, "until": max(r.updated_at for r in taught)}
    candidate = first["version"]

    later = both_arms(candidate, "base", 0, 200, 0.3, 0.05, seed=5)  # users like the candidate far less
    produce_records(kafka_bootstrap, topic, later)
    deadline = time.monotonic() + 60
    while trainer.registry.trial() is not None:
        assert time.monotonic() < deadline, f"no decision: {trainer.trial_look}"
        trainer.step()
    decision = trainer.trial_decisions[-1]
    assert decision["decision"] == "rejected", decision
    assert decision["data_quarantined"] == {**first["data_window"], "records_removed": 40}
    kept = {r.impression_id for r in trainer.buffer.records()}
    assert kept == {r.impression_id for r in later}  # the arms' records came after the window: they stay
    status = trainer.status()
    assert status["records_quarantined"] == 40 and status["data_quarantine"][0]["version"] == candidate

    # The same period's records read again (a replay of the topic, a restart) stay out of training.
    produce_records(kafka_bootstrap, topic, taught[:5])
    for _ in range(5):
        trainer.step()
    assert {r.impression_id for r in trainer.buffer.records()} == kept
    trainer.close()
    restarted = make_trainer(records_per_round=40, **ab)
    deadline = time.monotonic() + 30
    while restarted.quarantined_records < 45:  # its record file, then the whole topic again
        assert time.monotonic() < deadline, restarted.status()
        restarted.step()
    assert {r.impression_id for r in restarted.buffer.records()} == kept


def test_data_rollback_can_be_switched_off(make_trainer, kafka_bootstrap):
    trainer = make_trainer(records_per_round=40, RLHB_TRAINER_QUARANTINE_REJECTED_DATA="false")
    trainer.data_windows.record_round("v1", None, toy_records(3))
    assert trainer._quarantine("v1", "users liked it less") is None and not trainer.data_windows.quarantined


def test_with_replay_share_a_later_round_trains_mostly_on_what_its_parent_has_not_seen(make_trainer, kafka_bootstrap):
    trainer = make_trainer(records_per_round=40, RLHB_TRAINER_REPLAY_SHARE="0.25")
    topic = trainer.settings.topic_records
    produce_records(kafka_bootstrap, topic, toy_records(60))
    step_until(trainer, 1)
    first = trainer.last_round
    assert first["outcome"] == "published" and first["records"] == 60, first
    assert "fresh_records" not in first  # from base: everything is new
    later = [r.model_copy(update={"impression_id": f"later-{i}", "updated_at": time.time() + 1})
             for i, r in enumerate(toy_records(48, seed=1))]  # fmt: skip
    produce_records(kafka_bootstrap, topic, later)
    step_until(trainer, 2)
    second = trainer.last_round
    assert second["parent"] == first["version"], second
    assert second["fresh_records"] == 48 and second["records"] == 48 + 16, second  # 16 of 64: the replay share
