"""Redis Cluster, the "one slot" way, against a real local cluster of three valkey primaries.

A ``redis+cluster://`` URL builds a ``RedisCluster``; with a hash-tagged ``RLHB_REDIS_PREFIX``
every key of the deployment is in one slot, and each aggregator script names one key as
KEYS[1] so the client routes it to that slot's node. Without KEYS the client sends a script to
a random primary, which refuses keys of a slot it does not own: the many script calls below
would fail (docs/production.md, "Redis Cluster").

The cluster (``cluster_url``, ``cluster_client``) is tests/conftest.py's, started once per session
by tests/helpers/redis_cluster.py and shared with tests/test_end_to_end.py (its cluster run)."""

from __future__ import annotations

import random
import time

import pytest

from core.infra.redis_url import ClusterURL, cluster_prefix_problem, parse_cluster_url
from core.registry import Registry
from schemas import FeedbackEvent, Impression
from service.aggregator.redis_state import AggregatorStore
from tests.helpers.redis_cluster import free_port, tagged_prefix


def _workload(store: AggregatorStore) -> list:
    """Every script (batch, offsets, claim, pending drop) many times, and the reads: what they returned."""
    rnd = random.Random(7)
    out: list = []
    iids = [f"i{n}" for n in range(12)]
    for step in range(15):
        now = 100.0 + step
        imps = [
            Impression(impression_id=i, query="q", behavior="b", response="r", adapter_version="v1")
            for i in rnd.sample(iids, 2)
        ]
        events = [
            FeedbackEvent(
                event_id=f"e{rnd.randrange(40)}",
                impression_id=rnd.choice(iids),
                kind=rnd.choice(["like", "view"]),
                value=1.0,
            )
            for _ in range(6)
        ] + [FeedbackEvent(event_id=f"o{step}", impression_id="orphan", kind="like", value=1.0)]  # stays pending
        done = store.apply_batch(imps, events, now, pending_max=20, offsets={"feedback:0": step * 6 + 6})
        out.append(("batch", done.counted, done.drained, done.rejected, done.dropped))
        out.append(("claim", sorted(store.claim_dirty(now, coalesce_s=0.5, lease_s=5.0))))
        store.save_offsets({"feedback:1": step})
        out.append(("offsets", store.offsets()))
    expired = store.expired_pending(cutoff=1e9)
    out.append(("expired", sorted(expired)))
    for iid, entries in sorted(expired.items()):
        out.append(("drop", iid, store.drop_pending(iid, sorted(entries), cutoff=1e9)))
    out.append(("pending", store.pending_count(), store.backlog()))
    out.append(("counts", store.all_counts()))
    return out


def test_aggregator_scripts_on_a_cluster_match_a_single_redis(cluster_client, redis_client, redis_prefix):
    prefix = tagged_prefix()
    assert cluster_prefix_problem(prefix) is None
    on_cluster = AggregatorStore(cluster_client, prefix)
    expected = _workload(AggregatorStore(redis_client, redis_prefix))
    assert _workload(on_cluster) == expected
    assert any(step[0] == "drop" and step[2] > 0 for step in expected)  # the drop script ran on pending events
    assert on_cluster.clear() > 0 and on_cluster.all_counts() == {}


def test_registry_promote_read_and_watch_on_a_cluster(cluster_client, tmp_path, tiny_model_dir):
    from schemas.adapters import AdapterStatus
    from tests.helpers.adapter_factory import write_test_adapter

    registry = Registry(tmp_path / "adapters", cluster_client, tagged_prefix())
    watcher = registry.subscribe_pointer()
    try:
        for name, seed in (("v-a", 1), ("v-b", 2)):
            registry.register(write_test_adapter(tiny_model_dir, registry.root, name, seed=seed))
        seq0 = registry.active_seq()
        assert registry.promote("v-a").status == AdapterStatus.published
        registry.start_trial("v-b", 0.25)
        assert cluster_client.get(registry.active_key) == "v-a" and registry.active_seq() == seq0 + 2
        pointer, trial = registry.serving()  # the MGET of pointer, trial and epoch
        assert pointer == "v-a" and trial is not None and trial.candidate == "v-b"
        assert registry.rollback() == "base" and registry.active() == "base"
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            msg = watcher.get_message(timeout=0.5)
            if msg is not None:
                seen.append(msg["data"])
        assert seen == ["v-a", "v-a", "base"]  # promote, trial start, rollback: each published
    finally:
        watcher.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+cluster://h1:7000,h2", ClusterURL(nodes=(("h1", 7000), ("h2", 6379)))),
        (
            "rediss+cluster://app:p%40ss@[::1]:7001/0?ssl_ca_certs=/ca.pem",
            ClusterURL(nodes=(("::1", 7001),), username="app", password="p@ss", ssl=True, ssl_ca_certs="/ca.pem"),
        ),
        ("redis+cluster://:pw@h:1/", ClusterURL(nodes=(("h", 1),), password="pw")),
    ],
)
def test_cluster_urls_parse(url, expected):
    assert parse_cluster_url(url) == expected
    assert "pw" not in repr(parse_cluster_url(url)) and "p@ss" not in repr(parse_cluster_url(url))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://h:port", "not host"),
        ("redis+cluster://h/3", "only database 0"),
        ("redis+cluster://h?ssl=true", "unknown option"),
        ("redis+cluster://h?ssl_ca_certs=/ca.pem", "rediss"),
        ("redis+cluster://app@h", "user:password@"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_cluster_url(url)


def test_settings_refuse_a_cluster_url_with_an_untagged_prefix(monkeypatch):
    from pydantic import ValidationError

    from core.settings import CommonSettings

    monkeypatch.setenv("RLHB_REDIS_URL", "redis+cluster://h1:7000")
    monkeypatch.setenv("RLHB_REDIS_PREFIX", "rlhb:")
    with pytest.raises(ValidationError, match=r"no hash tag.*one slot.*RLHB_REDIS_PREFIX='\{rlhb\}:'"):
        CommonSettings()
    monkeypatch.setenv("RLHB_REDIS_PREFIX", "{}rlhb:")  # an empty tag hashes the whole key
    with pytest.raises(ValidationError, match="no hash tag"):
        CommonSettings()
    monkeypatch.setenv("RLHB_REDIS_PREFIX", "{rlhb}:")
    assert CommonSettings().redis_prefix == "{rlhb}:"
    monkeypatch.setenv("RLHB_REDIS_URL", "redis+cluster://h1:7000/2")
    with pytest.raises(ValidationError, match="only database 0"):
        CommonSettings()
    monkeypatch.setenv("RLHB_REDIS_URL", "redis://h1:7000/0")  # not a cluster: any prefix, as before
    monkeypatch.setenv("RLHB_REDIS_PREFIX", "rlhb:")
    assert CommonSettings().redis_prefix == "rlhb:"


def test_probe_of_a_cluster(cluster_url):
    from core.infra.redis_server import redis_answers

    assert redis_answers(cluster_url)
    assert not redis_answers(f"redis+cluster://127.0.0.1:{free_port()}", timeout_s=0.5)  # nobody there: False, no raise


def _exec_calls(client, key: str) -> int:
    """EXECs the primary holding ``key``'s slot has run (INFO commandstats)."""
    stats = client.info("commandstats", target_nodes=client.get_node_from_key(key))
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


def test_process_status_and_curves_on_a_cluster_are_transactions(cluster_client):
    """A Cluster client's ``pipeline()`` is not MULTI/EXEC (a Redis client's is): status writes
    and curve trims ask for a transaction, so the hash never outlives its TTL renewal."""
    from core.process_status import (
        CURVE_POINTS_KEPT,
        CURVE_ROUNDS_KEPT,
        curve_key,
        publish_status,
        push_curve_points,
        read_curve,
        read_status,
        status_key,
    )

    prefix = tagged_prefix()
    key = status_key(prefix, "aggregator")
    before = _exec_calls(cluster_client, key)
    publish_status(cluster_client, prefix, "aggregator", {"lag": 3}, period_s=1.0, member="a")
    publish_status(cluster_client, prefix, "aggregator", {"lag": 4}, period_s=1.0, member="b")
    assert _exec_calls(cluster_client, key) == before + 2
    got = read_status(cluster_client, prefix, "aggregator")
    assert got["state"] == "up" and [m["lag"] for m in got["members"]] == [3, 4]
    assert 0 < cluster_client.ttl(key) <= 3
    before = _exec_calls(cluster_client, key)
    for round_no in range(1, CURVE_ROUNDS_KEPT + 2):
        push_curve_points(cluster_client, prefix, round_no, [{"i": i} for i in range(CURVE_POINTS_KEPT + 1)])
    assert _exec_calls(cluster_client, key) == before + CURVE_ROUNDS_KEPT + 1  # same slot, same node
    assert cluster_client.exists(curve_key(prefix, 1)) == 0  # the oldest round's curve deleted
    assert len(read_curve(cluster_client, prefix, CURVE_ROUNDS_KEPT + 1)) == CURVE_POINTS_KEPT


def test_feedback_once_claims_on_a_cluster(cluster_client):
    """The API's once-per-(impression, client) claim: first, pending, written, released."""
    from schemas import FeedbackEvent
    from service.api.feedback_guard import claim_once, confirm_once, release_once

    prefix = tagged_prefix()
    events = [(FeedbackEvent(event_id=f"once-like-{n}", impression_id=f"i{n}", kind="like"), 60.0) for n in range(5)]
    assert claim_once(cluster_client, prefix, events) == [True] * 5
    assert claim_once(cluster_client, prefix, events) == [None] * 5  # pending: the retry writes again
    confirm_once(cluster_client, prefix, events[:3])
    assert claim_once(cluster_client, prefix, events) == [False] * 3 + [None] * 2  # written: duplicates
    release_once(cluster_client, prefix, events)
    assert claim_once(cluster_client, prefix, events) == [True] * 5


def test_demo_lanes_on_a_cluster_get_a_tagged_prefix_and_their_keys_deleted(cluster_url, cluster_client):
    from rlhb.demo.lanes import delete_lane_keys, lane_prefix

    assert lane_prefix("r1", "rlhb", "redis://h:6379/0") == "rlhbdemo:r1:rlhb:"  # one Redis: as before
    prefix = lane_prefix("r1", "rlhb", cluster_url)
    assert prefix == "{rlhbdemo:r1:rlhb}:" and cluster_prefix_problem(prefix) is None
    other = tagged_prefix()
    for n in range(30):
        cluster_client.set(f"{prefix}k{n}", n)
    cluster_client.set(f"{other}k", 1)
    assert delete_lane_keys(cluster_client, prefix) == 30
    assert not list(cluster_client.scan_iter(match=prefix + "*")) and cluster_client.get(f"{other}k") == "1"
    assert delete_lane_keys(cluster_client, prefix) == 0
