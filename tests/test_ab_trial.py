"""Issue 14 item 4, end to end: an A/B trial through the real processes (``rlhb api``,
``rlhb aggregator``, ``rlhb trainer`` as subprocesses, the real broker and Redis, tiny model).

A candidate serves a share of live traffic next to the active version: requests split between
the arms at about that share by a hash of the impression id, every impression says which arm
answered; users like every answer of the active arm and dislike the candidate's, so the
trainer's guardrail (candidate vs active over the same period) rejects the candidate, and the
API sends all traffic back to the active version."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from core.infra.ports import free_port
from core.registry import Registry
from schemas.adapters import AdapterStatus
from schemas.impression import Impression
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.e2e import Deployment, deployment_env, read_topic, wait_ready
from tests.helpers.trainer_loop import trainer_env, wait_for
from trainer.loop import read_status

ACTIVE, CANDIDATE = "ab-active", "ab-candidate"
SHARE = 0.4
N_ANSWERS = 50


def ask(deployment: Deployment, question: str) -> tuple[str, str]:
    """(impression id, adapter version) of one /v1/query answer."""
    r = deployment.http.post("/v1/query", json={"query": question, "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()["impression_id"], r.json()["adapter_version"]


def react(deployment: Deployment, answers: list[tuple[str, str]]) -> None:
    """Every answer viewed; the active arm's liked, the candidate's disliked."""
    events = []
    for iid, version in answers:
        events.append({"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": "view"})
        kind = "like" if version == ACTIVE else "dislike"
        events.append({"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": kind})
    r = deployment.http.post("/v1/feedback", json={"events": events})
    assert r.status_code in (200, 202), r.text


@pytest.mark.slow
def test_ab_trial_splits_live_traffic_labels_the_arms_and_rejects_a_worse_candidate(
    tmp_path, kafka_bootstrap, redis_url, redis_prefix, redis_client, unique_topics, tiny_model_dir
):
    adapters = tmp_path / "adapters"
    registry = Registry(adapters, redis_client, redis_prefix)
    registry.register(write_test_adapter(tiny_model_dir, adapters, ACTIVE, seed=1, scale=0.01))
    registry.register(write_test_adapter(tiny_model_dir, adapters, CANDIDATE, seed=2, scale=0.01, parent=ACTIVE))
    registry.promote(ACTIVE)
    env = deployment_env(
        trainer_env(
            bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
            adapter_dir=adapters, state_dir=tmp_path / "state", model_dir=tiny_model_dir,
            records_per_round=100_000,
            RLHB_TRAINER_AB_SHARE=str(SHARE), RLHB_TRAINER_AB_MIN_VIEWS="1000",
            RLHB_TRAINER_GUARDRAIL_MIN_VIEWS="10",
        ),
        port=free_port(), prefix=redis_prefix,
    )  # fmt: skip
    deployment = Deployment(tmp_path, env)
    try:
        deployment.start()
        assert wait_ready(deployment)["checks"]["adapter"]["serving"] == ACTIVE
        wait_for(lambda: read_status(redis_client, redis_prefix).get("state") == "idle", 60, "the trainer to start")

        # ---- the trial starts while the API serves: its watcher loads the candidate, then splits
        trial = registry.start_trial(CANDIDATE, SHARE)
        wait_for(lambda: ask(deployment, "warm-up")[1] == CANDIDATE, 30, "the candidate arm to serve", interval=0.05)
        answers = [ask(deployment, f"question {i % 8}") for i in range(N_ANSWERS)]
        for iid, version in answers:  # reproducible: the arm is a hash of the impression id
            assert version == (CANDIDATE if trial.arm_of(iid) == "candidate" else ACTIVE)
        share = sum(v == CANDIDATE for _, v in answers) / N_ANSWERS
        # SHARE = 0.4 of 50 answers hashed from random ids: Binomial(50, 0.4). The band [0.1, 0.7] fails
        # a correct split once in 200,000 runs; the earlier [0.2, 0.6] failed once in 470 (CI drew 0.64).
        assert 0.1 <= share <= 0.7, share
        assert registry.trial() == trial  # not decided before any feedback

        def impressions() -> dict[str, Impression]:
            msgs = read_topic(kafka_bootstrap, unique_topics["impressions"])
            return {i.impression_id: i for i in (Impression.model_validate_json(m.value) for m in msgs)}

        logged = wait_for(
            lambda: (imps := impressions()) and all(iid in imps for iid, _ in answers) and imps,
            30,
            "the impressions",
            interval=0.5,
        )
        for iid, version in answers:
            imp = logged[iid]
            assert imp.adapter_version == version and imp.trial == CANDIDATE
            assert imp.arm == ("candidate" if version == CANDIDATE else "active")

        # ---- users like the active arm and dislike the candidate: the guardrail rejects it
        react(deployment, answers)
        wait_for(lambda: registry.trial() is None, 90, "the guardrail to decide the trial", interval=0.5)
        rejected = registry.get(CANDIDATE)
        assert rejected.status == AdapterStatus.rejected and "A/B guardrail" in rejected.reason, rejected
        assert registry.active() == ACTIVE
        decided = registry.trials()[-1]
        assert decided["candidate"] == CANDIDATE and decided["outcome"] == "rejected"
        status = read_status(redis_client, redis_prefix)
        assert status["trial_decisions"][-1]["decision"] == "rejected", json.dumps(status)

        # ---- traffic returns to the active version, unlabelled
        wait_for(lambda: deployment.readyz()["checks"]["adapter"].get("trial") is None, 10, "the trial to end")
        after = [ask(deployment, f"question {i}") for i in range(12)]
        assert {v for _, v in after} == {ACTIVE}
        time.sleep(1.0)
        logged = wait_for(
            lambda: (imps := impressions()) and all(iid in imps for iid, _ in after) and imps, 30, "the impressions"
        )
        assert all(logged[iid].arm is None and logged[iid].trial is None for iid, _ in after)
        deployment.check_alive()
    except AssertionError as e:
        raise AssertionError(f"{e}\n{deployment.logs()}") from None
    finally:
        deployment.stop_all()
