"""The registry's epoch (issue 16 item 7): the manifest on disk and the Redis pointer each
carry one; the higher one settles which state is newer. Real Redis, real adapter folders.

A failed Redis write is made real: the registry's client sends its transactions (the
pointer write) to a closed port, so the write fails the way a dropped connection does,
while its reads reach the machine's Redis."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import redis

from core.registry import Registry, RegistryError
from schemas.adapters import AdapterStatus
from tests.helpers.adapter_factory import write_test_adapter


class _TransactionsGoToAClosedPort(redis.Redis):
    """A real client of the machine's Redis whose transactions go to ``dead`` (a client of a
    closed port): the registry reads fine and its pointer write fails."""

    dead: redis.Redis

    def pipeline(self, transaction=True, shard_hint=None):
        return self.dead.pipeline(transaction, shard_hint)


@pytest.fixture
def failing_client(redis_url):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = _TransactionsGoToAClosedPort.from_url(redis_url, decode_responses=True)
    client.dead = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    yield client
    client.dead.close()
    client.close()


@pytest.fixture
def registry(tmp_path, redis_client, redis_prefix):
    return Registry(tmp_path / "adapters", redis_client, redis_prefix)


def _add(registry, model_dir, name, seed=0, parent=None):
    return registry.register(write_test_adapter(model_dir, registry.root, name, seed=seed, parent=parent))


def _epoch_key(registry) -> str:
    return f"{registry.prefix}adapter:epoch"  # spelled out: the test must run (and fail) before the fix too


def _manifest(registry) -> dict:
    return json.loads(registry.manifest_path.read_text())


def _read(registry, how: str) -> str:
    """The active name as each kind of reader gets it."""
    if how == "active":
        return registry.active()
    if how == "serving":  # the API's hot-swap watcher
        return registry.serving()[0]
    if how == "pointer":
        return registry.pointer()
    return Registry(registry.root, registry.redis, registry.prefix).active()  # a process starting


def _drain(pubsub) -> list[str]:
    seen = []
    for _ in range(20):
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            seen.append(message["data"] if isinstance(message["data"], str) else message["data"].decode())
    return seen


@pytest.mark.parametrize("read", ["active", "serving", "pointer", "new registry"])
def test_a_promote_whose_redis_write_fails_is_reported_durable_and_not_undone_by_the_next_read(
    registry, tiny_model_dir, redis_client, failing_client, read
):
    _add(registry, tiny_model_dir, "f-a", seed=1)
    _add(registry, tiny_model_dir, "f-b", seed=2, parent="f-a")
    registry.promote("f-a")
    broken = Registry(registry.root, failing_client, registry.prefix)

    with pytest.raises(RegistryError, match=r"'f-b'.*saved in the manifest.*epoch") as failed:
        broken.promote("f-b")
    assert failed.value.active == "f-b" and failed.value.epoch == 2
    assert _manifest(registry)["active"] == "f-b"  # durable
    assert redis_client.get(registry.active_key) == "f-a"  # not published yet

    with registry.subscribe_pointer() as pubsub:
        pubsub.get_message(timeout=1)  # the subscribe confirmation
        assert _read(registry, read) == "f-b"  # the manifest's newer epoch wins: not undone
        assert _drain(pubsub) == ["f-b"]  # and the repair is published: API instances swap now
    assert redis_client.get(registry.active_key) == "f-b"
    assert redis_client.get(_epoch_key(registry)) == "2" and _manifest(registry)["epoch"] == 2
    assert registry.history() == ["base", "f-a"]  # f-a was not pushed back on the rollback stack
    assert registry.rollback() == "f-a"


def test_a_rollback_whose_redis_write_fails_is_durable_too(registry, tiny_model_dir, redis_client, failing_client):
    _add(registry, tiny_model_dir, "fr-a", seed=1)
    _add(registry, tiny_model_dir, "fr-b", seed=2)
    registry.promote("fr-a")
    registry.promote("fr-b")
    with pytest.raises(RegistryError, match="saved in the manifest"):
        Registry(registry.root, failing_client, registry.prefix).rollback()
    assert registry.serving() == ("fr-a", None)
    assert redis_client.get(registry.active_key) == "fr-a" and registry.history() == ["base"]


def test_when_redis_cannot_be_repaired_before_a_promote_nothing_changes(
    registry, tiny_model_dir, redis_client, failing_client
):
    _add(registry, tiny_model_dir, "n-a", seed=1)
    _add(registry, tiny_model_dir, "n-b", seed=2)
    registry.promote("n-a")
    redis_client.set(registry.active_key, "base")
    redis_client.set(_epoch_key(registry), 0)  # Redis lost the last write
    before = _manifest(registry)
    with pytest.raises(RegistryError, match="nothing changed"):
        Registry(registry.root, failing_client, registry.prefix, sync=False).promote("n-b")
    after = _manifest(registry)
    assert (after["active"], after["epoch"], after["history"]) == (before["active"], before["epoch"], before["history"])
    assert registry.active() == "n-a"


@pytest.mark.parametrize("read", ["active", "serving", "pointer", "new registry"])
def test_a_redis_pointer_that_regresses_to_an_older_epoch_is_repaired_from_the_manifest(
    registry, tiny_model_dir, redis_client, caplog, read
):
    _add(registry, tiny_model_dir, "g-a", seed=1)
    _add(registry, tiny_model_dir, "g-b", seed=2, parent="g-a")
    registry.promote("g-a")
    registry.promote("g-b")
    # Redis restarts from an append-only file that lost the last write: the older pointer, its epoch.
    redis_client.mset({registry.active_key: "g-a", registry.trial_key: "", _epoch_key(registry): 1})

    with caplog.at_level(logging.WARNING, logger="core.registry"), registry.subscribe_pointer() as pubsub:
        pubsub.get_message(timeout=1)
        assert _read(registry, read) == "g-b"
        assert _drain(pubsub) == ["g-b"]
    assert any("behind the manifest" in r.getMessage() for r in caplog.records), caplog.text
    assert redis_client.get(registry.active_key) == "g-b" and redis_client.get(_epoch_key(registry)) == "2"
    assert _manifest(registry)["active"] == "g-b" and registry.history() == ["base", "g-a"]


def test_the_epoch_increments_once_per_promote_rollback_and_trial_change_and_never_otherwise(
    registry, tiny_model_dir, redis_client
):
    def epochs() -> tuple[int, int]:
        return _manifest(registry)["epoch"], int(redis_client.get(_epoch_key(registry)))

    for i, name in enumerate(["e-a", "e-b", "e-c", "e-d"]):
        _add(registry, tiny_model_dir, name, seed=i)
    steps = [
        lambda: registry.promote("e-a"),
        lambda: registry.promote("e-b"),
        lambda: registry.rollback(),
        lambda: registry.start_trial("e-c", 0.3),
        lambda: registry.end_trial("e-c", promote=False, reason="worse"),
        lambda: registry.start_trial("e-d", 0.3),
        lambda: registry.mark("e-d", AdapterStatus.rejected, "by hand"),  # ends the trial
        lambda: registry.promote("e-b"),
        lambda: registry.rollback(reject_current="guardrail"),
    ]
    seen = [registry.epoch()]
    for step in steps:
        step()
        manifest_epoch, redis_epoch = epochs()
        assert manifest_epoch == redis_epoch == registry.epoch() == seen[-1] + 1
        seen.append(manifest_epoch)
    # No pointer or trial change, no new epoch.
    _add(registry, tiny_model_dir, "e-e", seed=9)
    registry.mark("e-e", AdapterStatus.rejected, "not served")
    registry.prune(keep=2)
    registry.active(), registry.serving(), registry.sync()
    assert epochs() == (seen[-1], seen[-1])


def test_a_manifest_without_an_epoch_loads_as_epoch_0(registry, tiny_model_dir, redis_client):
    _add(registry, tiny_model_dir, "l-a", seed=1)
    registry.promote("l-a")
    legacy = _manifest(registry)
    legacy.pop("epoch", None)  # written before epochs existed; Redis had no epoch key either
    registry.manifest_path.write_text(json.dumps(legacy))
    redis_client.delete(_epoch_key(registry))

    old = Registry(registry.root, redis_client, registry.prefix)
    assert old.epoch() == 0 and old.active() == "l-a" and old.serving() == ("l-a", None)
    _add(old, tiny_model_dir, "l-b", seed=2)
    old.promote("l-b")
    assert old.epoch() == 1 and redis_client.get(_epoch_key(registry)) == "1"
    assert old.rollback() == "l-a"


def test_redis_ahead_of_the_manifest_is_followed_only_when_consistent_with_its_versions(
    registry, tiny_model_dir, redis_client
):
    _add(registry, tiny_model_dir, "h-a", seed=1)
    _add(registry, tiny_model_dir, "h-b", seed=2)
    _add(registry, tiny_model_dir, "h-c", seed=3)  # never promoted: a candidate
    registry.promote("h-b")
    registry.promote("h-a")  # epoch 2
    epoch_key = _epoch_key(registry)

    # Same epoch, another pointer (a SET by hand that did not bump the epoch): the manifest wins,
    # re-asserted at a new epoch above what Redis had.
    redis_client.set(registry.active_key, "h-b")
    assert registry.active() == "h-a" and redis_client.get(registry.active_key) == "h-a"
    assert registry.epoch() == 3 and redis_client.get(epoch_key) == "3"

    # Ahead, naming a candidate no promote published: not followed (the API would refuse it).
    redis_client.mset({registry.active_key: "h-c", epoch_key: 5})
    assert registry.active() == "h-a" and registry.epoch() == 6

    # Another writer, ahead, naming a published version the manifest knows: followed, its epoch adopted.
    redis_client.mset({registry.active_key: "h-b", epoch_key: 7})
    assert registry.active() == "h-b" and registry.epoch() == 7
    assert _manifest(registry)["active"] == "h-b" and registry.history()[-1] == "h-a"
    assert registry.get("h-c").status == AdapterStatus.candidate

    # Ahead but naming a version the manifest does not know: the manifest wins, above Redis's epoch.
    redis_client.mset({registry.active_key: "does-not-exist", epoch_key: 9})
    assert registry.serving() == ("h-b", None)
    assert redis_client.get(registry.active_key) == "h-b" and registry.epoch() == 10
    assert redis_client.get(epoch_key) == "10"

    # Ahead with a trial whose active arm is not the pointer: inconsistent, the manifest wins.
    bad_trial = '{"candidate": "h-a", "active": "base", "share": 0.5, "started_at": 1.0}'
    redis_client.mset({registry.trial_key: bad_trial, epoch_key: 12})
    assert registry.serving() == ("h-b", None) and registry.epoch() == 13

    # Ahead with a consistent trial: followed.
    good_trial = '{"candidate": "h-a", "active": "h-b", "share": 0.5, "started_at": 1.0}'
    redis_client.mset({registry.trial_key: good_trial, epoch_key: 15})
    pointer, trial = registry.serving()
    assert pointer == "h-b" and trial is not None and trial.candidate == "h-a" and registry.epoch() == 15
    assert registry.trial() == trial and _manifest(registry)["trial"]["candidate"] == "h-a"
