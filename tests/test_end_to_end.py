"""Acceptance of issue 6, end to end: tiny model, the real broker and Redis, and every
process a real subprocess (``rlhb api``, ``rlhb aggregator``, ``rlhb trainer``).

Simulated users (rlhb.simulate) ask the API over HTTP and send their reactions over HTTP
-> the aggregator turns them into behavior records -> the trainer runs a round after M
records and publishes a version -> the API serves it within seconds -> POST /admin/rollback
restores its parent -> a candidate forced to fail the gate never becomes active, neither in
the pointer nor in what the API serves -> with the pointer key gone from Redis the API
keeps serving the active version (it restores the pointer from the manifest). Along the way:
an ordinary client's repeated like is answered "duplicate" and counted once, and /admin/status
shows the aggregator and trainer up.

Run twice: on one Redis, and on Redis Cluster (``RLHB_REDIS_URL=redis+cluster://...``, three
real valkey primaries from tests/helpers/redis_cluster.py, a hash-tagged prefix).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from core.infra.ports import free_port
from core.registry import Registry
from rlhb.simulate.driver import SimulationConfig, run_simulation
from rlhb.simulate.users import load_user_model
from tests.helpers.adapter_factory import write_test_adapter
from tests.helpers.e2e import ADMIN_TOKEN, AUTH, Deployment, counts_of, deployment_env, latest_records, wait_ready
from tests.helpers.redis_cluster import tagged_prefix
from tests.helpers.trainer_loop import trainer_env, wait_for
from trainer.loop import read_rounds, read_status

N_ANSWERS = 24  # = M: one round from one pass of simulated traffic
SEED_VERSION = "seed-v"


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request, redis_url, redis_prefix, redis_client):
    """(URL, prefix, client) of one Redis, or of a three-primary Redis Cluster with a tagged prefix."""
    if request.param == "redis":
        return redis_url, redis_prefix, redis_client
    return request.getfixturevalue("cluster_url"), tagged_prefix(), request.getfixturevalue("cluster_client")


@pytest.mark.slow
def test_feedback_to_records_to_published_version_served_rolled_back_and_rejected_never_active(
    tmp_path, kafka_bootstrap, redis_target, unique_topics, tiny_model_dir
):
    from rlhb.queries import split_questions

    redis_url, redis_prefix, redis_client = redis_target

    timings: dict[str, float] = {}
    t_start = time.monotonic()
    adapters = tmp_path / "adapters"
    registry = Registry(adapters, redis_client, redis_prefix)
    # A version active before the trainer's first round, so that "the parent" is an adapter
    # (a rollback to it is told apart from a fall-back to the base model).
    registry.register(write_test_adapter(tiny_model_dir, adapters, SEED_VERSION, seed=1, scale=0.01))
    registry.promote(SEED_VERSION)
    env = deployment_env(
        trainer_env(
            bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=redis_prefix, topics=unique_topics,
            adapter_dir=adapters, state_dir=tmp_path / "state", model_dir=tiny_model_dir,
            records_per_round=N_ANSWERS,
        ),
        port=free_port(), prefix=redis_prefix,
    )  # fmt: skip
    deployment = Deployment(tmp_path, env)
    try:
        deployment.start()
        ready = wait_ready(deployment)
        assert ready["checks"]["adapter"]["serving"] == SEED_VERSION, ready
        wait_for(lambda: read_status(redis_client, redis_prefix).get("state") == "idle", 60, "the trainer to start")
        timings["processes_ready_s"] = time.monotonic() - t_start

        # ---- an ordinary client (no admin token): its like counts once, the repeat is a duplicate
        asked = deployment.http.post("/v1/query", json={"query": "What is a prime number?", "max_tokens": 4})
        assert asked.status_code == 200, asked.text
        own_iid = asked.json()["impression_id"]
        likes = [
            deployment.http.post("/v1/feedback", json={"impression_id": own_iid, "event_id": f"e{n}", "kind": "like"})
            for n in range(2)
        ]
        assert [r.status_code for r in likes] == [202, 202], [r.text for r in likes]
        assert [(r.json()["accepted"], r.json()["duplicates"]) for r in likes] == [(1, 0), (0, 1)]

        # ---- simulated users: answers and feedback over HTTP only
        t0 = time.monotonic()
        questions = list(split_questions().train[:N_ANSWERS])
        config = SimulationConfig(
            api_url=deployment.url, users="concise", viewers_mean=3.0, max_tokens=8, temperature=1.0,
            concurrency=4, seed=0, run_tag="e2e", timeout_s=60, admin_token=ADMIN_TOKEN,
        )  # fmt: skip
        # The tiny random model writes only degenerate text, which the presets dislike so
        # consistently that every record can land on the same levels (then the discriminator
        # has no swapped fakes and the round refuses to train): these viewers are lenient.
        users = load_user_model("concise", degenerate_like=0.3, degenerate_dislike=0.3)
        served = run_simulation(config, questions, user=users)
        timings["simulate_s"] = time.monotonic() - t0
        assert len(served) == N_ANSWERS and {s.adapter_version for s in served} == {SEED_VERSION}
        assert sum(s.events_sent for s in served) >= N_ANSWERS  # every answer is viewed at least once

        # ---- the aggregator turns the events into behavior records (counts as the users sent them)
        def records_complete():
            deployment.check_alive()
            latest = latest_records(kafka_bootstrap, unique_topics["records"])
            ok = all(s.impression_id in latest and latest[s.impression_id].counts == counts_of(s) for s in served)
            ok = ok and own_iid in latest and latest[own_iid].counts == {"like": 1.0}
            return latest if ok else None

        latest = wait_for(records_complete, 60, "one record per served answer with the users' counts", interval=1)
        timings["records_s"] = time.monotonic() - t0
        for s in served:
            record = latest[s.impression_id]
            assert (record.query, record.response, record.adapter_version) == (s.question, s.answer, SEED_VERSION)
            assert record.behavior_text and record.buckets
        assert set(latest) == {s.impression_id for s in served} | {own_iid}  # nothing else, nothing lost
        counted = {k: int(v) for k, v in redis_client.hgetall(f"{redis_prefix}agg:cnt:{own_iid}").items()}
        assert counted == {"like": 1}, counted  # the aggregator's own counts, in Redis

        # ---- the trainer runs a round after M records and publishes a version; the API serves it
        seen_pointer: dict[str, float] = {}

        def first_round():
            deployment.check_alive()
            pointer = redis_client.get(registry.active_key)
            seen_pointer.setdefault(pointer, time.monotonic())
            return read_rounds(redis_client, redis_prefix)

        rounds = wait_for(first_round, 150, "the first round", interval=0.1)
        first = rounds[0]
        timings["round1_s"] = first["seconds"]
        assert first["outcome"] == "published", first
        new_version = first["version"]
        assert first["parent"] == SEED_VERSION  # trained on top of the active version
        assert 8 <= first["train_records"] and first["heldout_records"] >= 1
        assert first["records"] <= N_ANSWERS + 1  # the simulated answers and the ordinary client's one
        assert new_version in seen_pointer  # the pointer moved (seen by the test's poller)
        t_swap = wait_for(lambda: deployment.ask() == new_version and time.monotonic(), 10, f"{new_version} served")
        timings["pointer_to_served_s"] = t_swap - seen_pointer[new_version]
        assert timings["pointer_to_served_s"] < 5, timings
        assert {deployment.ask(q) for q in questions[:3]} == {new_version}
        listed = deployment.http.get("/admin/checkpoints", headers=AUTH).json()
        assert listed["active"] == new_version and listed["serving"] == new_version
        assert {v["name"]: v["parent"] for v in listed["versions"]}[new_version] == SEED_VERSION

        # ---- rollback restores the parent (admin token required)
        assert deployment.http.post("/admin/rollback").status_code == 401
        assert redis_client.get(registry.active_key) == new_version
        t0 = time.monotonic()
        moved = deployment.http.post("/admin/rollback", headers=AUTH)
        assert moved.status_code == 200, moved.text
        assert (moved.json()["previous"], moved.json()["active"]) == (new_version, SEED_VERSION)
        wait_for(lambda: deployment.serving() == SEED_VERSION, 5, "the parent served again", interval=0.02)
        timings["rollback_to_served_s"] = time.monotonic() - t0
        assert timings["rollback_to_served_s"] < 2, timings
        assert {deployment.ask(q) for q in questions[:3]} == {SEED_VERSION}

        # ---- every process's status, as each wrote it to Redis
        status = deployment.http.get("/admin/status", headers=AUTH)
        assert status.status_code == 200, status.text
        body = status.json()
        assert body["active"] == SEED_VERSION
        assert body["aggregator"]["state"] == "up" and body["trainer"]["state"] == "up", body
        assert [r["version"] for r in body["rounds"] if r.get("outcome") == "published"] == [new_version]

        # ---- a candidate that fails the gate is never active, not for one poll
        request = {"reason": "e2e: forced rejection", "requested_at": time.time(), "gate": {"kl_bound": 1e-9}}
        redis_client.rpush(f"{redis_prefix}train:requests", json.dumps(request))
        pointers, serving, labels = set(), set(), set()
        last_ask = 0.0

        def second_round():
            nonlocal last_ask
            deployment.check_alive()
            pointers.add(redis_client.get(registry.active_key))
            serving.add(deployment.serving())
            if time.monotonic() - last_ask > 1.0:
                labels.add(deployment.ask())
                last_ask = time.monotonic()
            done = read_rounds(redis_client, redis_prefix)
            return done if len(done) >= 2 else None

        rounds = wait_for(second_round, 150, "the requested round", interval=0.05)
        timings["round2_s"] = rounds[1]["seconds"]
        assert len(rounds) == 2, rounds  # no other round ran in between
        rejected = rounds[1]
        assert rejected["outcome"] == "rejected" and "KL" in rejected["reason"], rejected
        assert rejected["parent"] == SEED_VERSION and rejected["version"] not in (new_version, SEED_VERSION)
        assert pointers == {SEED_VERSION} and serving == {SEED_VERSION} and labels == {SEED_VERSION}
        listed = deployment.http.get("/admin/checkpoints", headers=AUTH).json()
        assert {v["name"]: v["status"] for v in listed["versions"]}[rejected["version"]] == "rejected"
        assert listed["active"] == SEED_VERSION
        # The API may have preloaded the candidate before its gate decided; once rejected it is
        # unloaded at the watcher's next preload tick (every 2 s) and never served meanwhile.
        wait_for(
            lambda: rejected["version"] not in deployment.http.get("/admin/checkpoints", headers=AUTH).json()["loaded"],
            10,
            "the rejected candidate unloaded",
            interval=0.2,
        )
        refused = deployment.http.post(f"/admin/promote/{rejected['version']}", headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert redis_client.get(registry.active_key) == SEED_VERSION and deployment.ask() == SEED_VERSION
        assert redis_client.llen(f"{redis_prefix}train:requests") == 0
        assert redis_client.llen(f"{redis_prefix}train:inflight") == 0

        # ---- the pointer key gone from Redis (flush, restart): the API keeps serving the
        # active version and puts the pointer back from the manifest. The trainer, which
        # would restore it too, is stopped first so that only the API can.
        assert deployment.stop("trainer") == 0, deployment.logs()
        summary = json.loads((tmp_path / "trainer.log").read_text().strip().splitlines()[-1])
        assert (summary["rounds"], summary["active"]) == (2, SEED_VERSION)  # read from Redis at its stop
        redis_client.delete(registry.active_key)
        t0 = time.monotonic()
        served_meanwhile = set()
        while time.monotonic() - t0 < 1.5:  # >= 10 polls of the API's watcher
            served_meanwhile.add(deployment.serving())
            time.sleep(0.05)
        assert served_meanwhile == {SEED_VERSION}, served_meanwhile
        assert redis_client.get(registry.active_key) == SEED_VERSION
        assert deployment.ask() == SEED_VERSION

        assert deployment.stop("aggregator") == 0, deployment.logs()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15)
        assert deployment.stop("api") in (0, -signal.SIGTERM), deployment.logs()
        assert "Application shutdown complete" in (tmp_path / "api.log").read_text()
    except BaseException:
        print(deployment.logs())
        raise
    finally:
        deployment.stop_all()
        timings["total_s"] = time.monotonic() - t_start
        print(json.dumps({"e2e_timings": {k: round(v, 2) for k, v in timings.items()}}))
