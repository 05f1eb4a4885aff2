"""Checkpoint registry against the real Redis and real PEFT adapter folders."""

from __future__ import annotations

import json

import pytest

from core.registry import Registry, RegistryError
from schemas.adapters import AdapterStatus
from tests.helpers.adapter_factory import write_test_adapter


@pytest.fixture
def registry(tmp_path, redis_client, redis_prefix):
    return Registry(tmp_path / "adapters", redis_client, redis_prefix)


def _add(registry, model_dir, name, seed=0, parent=None):
    return registry.register(write_test_adapter(model_dir, registry.root, name, seed=seed, parent=parent))


def test_promote_and_rollback_move_the_pointer_and_bump_the_seq(registry, tiny_model_dir, redis_client):
    assert registry.active() == "base"
    a = _add(registry, tiny_model_dir, "v-a", seed=1)
    b = _add(registry, tiny_model_dir, "v-b", seed=2, parent="v-a")
    assert a.id < b.id and a.status == AdapterStatus.candidate
    seq0 = registry.active_seq()

    assert registry.promote("v-a").status == AdapterStatus.published
    assert redis_client.get(registry.active_key) == "v-a"
    registry.promote("v-b")
    assert registry.active() == "v-b" and registry.active_seq() == seq0 + 2
    assert registry.lineage("v-b") == ["v-b", "v-a"]

    assert registry.rollback() == "v-a"
    assert redis_client.get(registry.active_key) == "v-a" and registry.active_seq() == seq0 + 3
    assert registry.rollback() == "base"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert registry.active() == "base"


def test_validate_refuses_a_checksum_mismatch_and_promote_keeps_the_old_version(registry, tiny_model_dir):
    _add(registry, tiny_model_dir, "good", seed=1)
    bad = _add(registry, tiny_model_dir, "tampered", seed=2)
    registry.promote("good")
    weights = registry.root / "tampered" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one weight byte: the header still parses, the sha256 does not match
    weights.write_bytes(bytes(data))
    assert registry.get("tampered").sha256 == bad.sha256

    with pytest.raises(RegistryError, match="sha256"):
        registry.validate("tampered")
    with pytest.raises(RegistryError, match="sha256"):
        registry.promote("tampered")
    assert registry.active() == "good"
    with pytest.raises(RegistryError, match="unknown adapter version"):
        registry.validate("nope")
    with pytest.raises(KeyError):
        registry.get("nope")


def test_register_refuses_metadata_sha_mismatch_and_reused_names(registry, tiny_model_dir):
    folder = write_test_adapter(tiny_model_dir, registry.root, "meta-bad", seed=1)
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(RegistryError, match="corrupt"):
        registry.register(folder)
    _add(registry, tiny_model_dir, "once", seed=2)
    with pytest.raises(RegistryError, match="already used"):
        registry.register(registry.root / "once")


def test_manifest_restores_pointer_and_ids_after_redis_keys_are_deleted(registry, tiny_model_dir, redis_client):
    a = _add(registry, tiny_model_dir, "r-a", seed=1)
    b = _add(registry, tiny_model_dir, "r-b", seed=2)
    registry.promote("r-a")
    registry.promote("r-b")
    redis_client.delete(registry.active_key, registry.seq_key, registry.id_key)  # a Redis restart

    fresh = Registry(registry.root, redis_client, registry.prefix)
    assert redis_client.get(fresh.active_key) == "r-b"
    assert fresh.active() == "r-b" and fresh.active_seq() >= 1
    c = _add(fresh, tiny_model_dir, "r-c", seed=3)
    assert c.id > max(a.id, b.id)
    assert fresh.rollback() == "r-a"  # the history survived too


def test_redis_wins_only_with_a_newer_epoch_and_a_valid_version(registry, tiny_model_dir, redis_client):
    _add(registry, tiny_model_dir, "w-a", seed=1)
    _add(registry, tiny_model_dir, "w-b", seed=2)
    registry.promote("w-b")
    registry.promote("w-a")
    redis_client.set(registry.active_key, "w-b")  # moved by hand, epoch left alone: the manifest wins
    assert registry.active() == "w-a" and redis_client.get(registry.active_key) == "w-a"
    redis_client.set(registry.active_key, "w-b")  # moved by hand with a newer epoch: followed
    redis_client.incr(registry.epoch_key)
    assert registry.active() == "w-b"
    assert json.loads(registry.manifest_path.read_text())["active"] == "w-b"
    redis_client.set(registry.active_key, "does-not-exist")
    redis_client.incr(registry.epoch_key)
    assert registry.active() == "w-b"
    assert redis_client.get(registry.active_key) == "w-b"


def test_ids_are_never_reused_and_prune_keeps_active_and_its_parent(registry, tiny_model_dir, redis_client):
    names = ["p1", "p2", "p3", "p4"]
    ids = []
    for i, n in enumerate(names):
        ids.append(_add(registry, tiny_model_dir, n, seed=i, parent=names[i - 1] if i else None).id)
    registry.promote("p2")  # active p2, parent p1; p4 is the newest
    pruned = registry.prune(keep=1)
    assert pruned == ["p3"]
    assert {v.name for v in registry.list()} == {"p1", "p2", "p4"}
    assert not (registry.root / "p3").exists() and (registry.root / "p1").exists()
    with pytest.raises(RegistryError, match="already used"):
        registry.register(write_test_adapter(tiny_model_dir, registry.root, "p3", seed=9))
    redis_client.delete(registry.id_key)
    new_id = _add(registry, tiny_model_dir, "p5", seed=5).id
    assert new_id > max(ids)
    assert registry.validate("p2").name == "p2"  # the active one is still loadable


def test_a_rejected_version_is_never_promoted(registry, tiny_model_dir):
    _add(registry, tiny_model_dir, "rej", seed=1)
    registry.mark("rej", AdapterStatus.rejected, "kl 3.2 > bound 0.5")
    assert registry.get("rej").reason == "kl 3.2 > bound 0.5"
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote("rej")
    assert registry.active() == "base"


def test_clean_removes_temp_and_unregistered_folders_only(registry, tiny_model_dir):
    _add(registry, tiny_model_dir, "kept", seed=1)
    (registry.root / ".half.tmp-123").mkdir()
    (registry.root / ".half.tmp-123" / "adapter_model.safetensors").write_bytes(b"partial")
    write_test_adapter(tiny_model_dir, registry.root, "orphan", seed=2)  # renamed, never registered
    (registry.root / "notes").mkdir()  # not a version folder: left alone
    removed = registry.clean()
    assert removed == {"temp": [".half.tmp-123"], "unregistered": ["orphan"]}
    assert sorted(p.name for p in registry.root.iterdir() if p.is_dir()) == ["kept", "notes"]
    registry.promote("kept")


def test_rollback_target_predicts_rollback_and_pointer_reads_or_restores_redis(registry, tiny_model_dir, redis_client):
    assert registry.rollback_target() is None
    _add(registry, tiny_model_dir, "t-a", seed=1)
    _add(registry, tiny_model_dir, "t-b", seed=2)
    _add(registry, tiny_model_dir, "t-c", seed=3)
    for name in ("t-a", "t-b", "t-c"):
        registry.promote(name)
    registry.rollback()  # t-c -> t-b; history is now [base, t-a]
    registry.promote("t-c")  # history [base, t-a, t-b]
    registry.mark("t-b", AdapterStatus.rejected, "test")
    history = registry.history()
    assert registry.rollback_target() == "t-a"  # skips the rejected t-b, like rollback()
    assert registry.history() == history and registry.active() == "t-c"  # nothing changed
    assert registry.rollback() == "t-a"

    with registry.subscribe_pointer() as pubsub:
        registry.promote("t-c")
        message = None
        for _ in range(50):
            message = message or pubsub.get_message(timeout=0.1)
        assert message is not None and message["data"] in ("t-c", b"t-c")
    assert registry.pointer() == "t-c"
    redis_client.delete(registry.active_key)  # a Redis flush: pointer() restores it from the manifest
    assert registry.pointer() == "t-c" and redis_client.get(registry.active_key) == "t-c"


def test_ab_trial_lives_next_to_the_pointer_survives_redis_loss_and_ends_promoted_or_rejected(
    registry, tiny_model_dir, redis_client
):
    _add(registry, tiny_model_dir, "ab-a", seed=1)
    _add(registry, tiny_model_dir, "ab-b", seed=2, parent="ab-a")
    _add(registry, tiny_model_dir, "ab-c", seed=3, parent="ab-a")
    registry.promote("ab-a")
    assert registry.serving() == ("ab-a", None) and registry.trial() is None
    with pytest.raises(RegistryError, match="share must be in"):
        registry.start_trial("ab-b", 0.0)

    pubsub = registry.subscribe_pointer()
    pubsub.get_message(timeout=1)
    seq = registry.active_seq()
    trial = registry.start_trial("ab-b", 0.3)
    assert (trial.candidate, trial.active, trial.share) == ("ab-b", "ab-a", 0.3)
    assert registry.serving() == ("ab-a", trial) and registry.active() == "ab-a"  # the pointer did not move
    assert registry.active_seq() == seq + 1  # one transaction: pointer, trial, seq, message
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == "ab-a"
    pubsub.close()
    with pytest.raises(RegistryError, match="trial of 'ab-b' is running"):
        registry.start_trial("ab-c", 0.3)
    assert "ab-b" not in registry.prune(keep=2)  # a candidate in trial is never pruned

    # Redis loses everything: the manifest brings the trial back with the pointer.
    redis_client.delete(registry.active_key, registry.trial_key)
    assert Registry(registry.root, redis_client, registry.prefix).serving() == ("ab-a", trial)
    redis_client.delete(registry.trial_key)
    assert registry.serving() == ("ab-a", trial)

    # Rejected: traffic returns to the active version, the reason is kept.
    with pytest.raises(RegistryError, match="no A/B trial of 'ab-c'"):
        registry.end_trial("ab-c", promote=False, reason="x")
    assert registry.end_trial("ab-b", promote=False, reason="A/B guardrail: worse") == "ab-a"
    assert registry.serving() == ("ab-a", None)
    assert (
        registry.get("ab-b").status == AdapterStatus.rejected and registry.get("ab-b").reason == "A/B guardrail: worse"
    )
    with pytest.raises(RegistryError, match="rejected"):
        registry.start_trial("ab-b", 0.3)

    # Promoted: the candidate becomes active, the old active goes on the history.
    registry.start_trial("ab-c", 0.5)
    assert registry.end_trial("ab-c", promote=True, reason="as good") == "ab-c"
    assert registry.serving() == ("ab-c", None) and registry.get("ab-c").status == AdapterStatus.published
    assert registry.history()[-1] == "ab-a"
    assert [(t["candidate"], t["outcome"]) for t in registry.trials()] == [("ab-b", "rejected"), ("ab-c", "promoted")]


def test_moving_the_pointer_by_hand_cancels_a_trial_and_marking_its_candidate_rejected_ends_it(
    registry, tiny_model_dir
):
    _add(registry, tiny_model_dir, "h-a", seed=1)
    _add(registry, tiny_model_dir, "h-b", seed=2)
    _add(registry, tiny_model_dir, "h-c", seed=3)
    registry.promote("h-a")
    registry.start_trial("h-b", 0.5)
    registry.promote("h-c")  # another version by hand: the trial's active arm is gone
    assert registry.serving() == ("h-c", None) and registry.get("h-b").status == AdapterStatus.candidate
    registry.start_trial("h-b", 0.5)
    registry.mark("h-b", AdapterStatus.rejected, "by hand")
    assert registry.serving() == ("h-c", None)
    assert [t["outcome"] for t in registry.trials()] == ["cancelled", "rejected"]
