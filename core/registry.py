"""Checkpoint registry: immutable adapter versions on disk, the active pointer in Redis.

Layout under ``root`` (``RLHB_ADAPTER_DIR``)::

    root/<name>/                 one immutable PEFT adapter dir per version
        adapter_config.json
        adapter_model.safetensors
        metadata.json            AdapterVersion fields written by trainer/checkpoints.py
                                 (the folder format: core/checkpoint_format.py)
    root/manifest.json           the registry's durable state (see ``Manifest``)
    root/.registry.lock          flock: serialises read-modify-write across processes

Redis keys (``prefix`` = ``RLHB_REDIS_PREFIX``)::

    {prefix}adapter:active       name of the active version ("base" = no adapter)
    {prefix}adapter:active_seq   INCR'd on every pointer move, so watchers notice any change
                                 (including a move back to a name they saw before)
    {prefix}adapter:next_id      INCR counter for unique int ids
    {prefix}adapter:trial        the running A/B trial (``schemas.adapters.ABTrial`` JSON), "" when none;
                                 written in the same transaction as the pointer
    {prefix}adapter:epoch        the epoch of the pointer and trial above (see "Epochs"), same transaction

Rules:

- Ids are ``max(INCR next_id, manifest max id + 1)`` and the manifest remembers the largest
  id ever handed out (pruned versions included), so an id is never reused, even after a
  Redis restart or a prune.
- Names are never reused either: pruned names stay in ``manifest.retired``.
- The manifest is written atomically (temp file, fsync, rename, fsync dir) under the lock,
  and always before the Redis pointer moves.
- Redis vs manifest: settled by epochs (below). Reconciliation happens under the lock, so a
  reader racing a promote waits for it instead of undoing it.
- A rollback pops the history stack (previous actives, most recent last), skipping entries
  that were pruned; it is one Redis SET + INCR + PUBLISH (transaction): API watchers wake on
  the message, and see the pointer at their next poll if they missed it.
- A rejected version is never promoted.

A/B trials (``start_trial``): a gated candidate serves a share of new requests next to the
active version until the trainer's guardrail ends the trial (``end_trial``): promoted to
active, or rejected (with the reason) and removed from traffic. The trial lives in the
manifest (so a Redis loss does not forget it) and in Redis next to the pointer, both written
by the same transaction as the pointer and its pub/sub message, so a watcher reading
``serving()`` sees the pointer and the trial of one moment. One trial at a time. Moving the
pointer by hand (``promote`` of another version, ``rollback``) cancels a running trial (its
candidate stays a candidate); ``promote`` of the trial's candidate ends it as promoted;
``mark(rejected)`` of it ends it as rejected. Decided trials are kept in ``manifest.trials``.

Epochs (issue 16 item 7). The serving state is the pair (active pointer, trial). Every change
of it (promote, rollback, trial start or end, a repair that re-asserts the manifest) takes a
new epoch, one more than any epoch seen in the manifest or in Redis, and the manifest and
the Redis pointer both carry it: one epoch names one serving state. Write order: the
manifest first (atomic and fsync'd: durable), then one Redis transaction (pointer, trial,
epoch, seq, message). So Redis can only lag the manifest, never lead it, as long as every
writer shares ``root`` (the flock serialises them). Reading, the higher epoch wins:

- Redis behind the manifest (its write failed, or it restarted from an append-only file that
  lost writes, or it was flushed): the manifest is newer. Redis is repaired from it (same
  epoch) and a warning logged. Without epochs a lagging Redis used to look like a pointer
  moved by hand, and the read silently undid the promote.
- Same epoch, another state (a SET by hand that left the epoch alone): nothing says Redis is
  newer, and the manifest is the durable copy, so it wins, re-asserted at a new epoch (one
  above Redis's, so the epoch never goes back in Redis).
- Redis ahead (a writer this manifest did not see: one with another copy of ``root``, or the
  manifest restored from an older backup): followed only if it is consistent with the
  manifest's versions: the pointer is "base" or a version the manifest lists as published
  (what a promote makes it; the API serves nothing else) whose folder exists, and the trial is
  none or one whose active arm is that pointer and whose candidate is a version the manifest
  knows, not rejected, whose folder exists. The manifest then adopts Redis's state and epoch
  (the old active goes on the history). If not consistent the registry could not load what
  Redis names anyway, so the manifest wins, re-asserted one epoch above Redis's.

A Redis key with no epoch (written before epochs existed) counts as epoch 0, as does a
manifest without one, so an old deployment's state is in agreement and loads unchanged.

Failures. A change whose Redis write fails after the manifest was saved raises
``PointerPublishError`` (a ``RegistryError``): the change is durable (the manifest's higher
epoch wins at the next read, which also publishes it), only not yet seen by the API. Why
this order and not Redis first: Redis is the copy that can lose writes (an append-only file
is synced once a second at best), and a pointer in Redis that the manifest does not record
would name a state the registry cannot reproduce after a Redis restart. If Redis cannot be
brought up to date before a change (its repair write fails), the change is refused with a
``RegistryError`` and nothing changes. Reads never raise for a failed repair: they log it
and answer what the manifest says, which is the truth the next repair will publish.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from core.checkpoint_format import (
    ADAPTER_CONFIG,
    METADATA,
    WEIGHT_FILES,
    is_temp_name,
    looks_like_version,
    next_id,
    sha256_file,
    weights_file,
)
from schemas.adapters import BASE_VERSION, ABTrial, AdapterStatus, AdapterVersion

__all__ = [
    "Manifest",
    "PointerPublishError",
    "Registry",
    "RegistryError",
    "atomic_write_json",
    "sha256_file",
    "weights_file",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".registry.lock"
TRIALS_KEPT = 200


class RegistryError(Exception):
    """A registry operation was refused; the message says what is wrong and what to do."""


class PointerPublishError(RegistryError):
    """A change was saved in the manifest (durable) but writing it to Redis failed: API
    instances do not see it yet. Nothing to redo: the manifest's higher epoch wins at the next
    registry read that reaches Redis (an API poll, a trainer round), which publishes it.
    ``active``, ``trial`` and ``epoch`` are the saved state."""

    def __init__(self, what: str, active: str, trial: ABTrial | None, epoch: int, cause: BaseException):
        self.active, self.trial, self.epoch = active, trial, epoch
        trial_note = f", A/B trial of {trial.candidate!r}" if trial is not None else ""
        super().__init__(
            f"{what} is saved in the manifest (epoch {epoch}: active {active!r}{trial_note}) but writing it to "
            f"Redis failed ({type(cause).__name__}: {cause}); API instances keep serving the old pointer until "
            "the next registry read that reaches Redis publishes it (any API poll or trainer round): do not redo it"
        )


class Manifest(BaseModel):
    """Durable registry state (``root/manifest.json``)."""

    schema_version: int = 1
    versions: dict[str, AdapterVersion] = Field(default_factory=dict)
    """Registered versions by name (pruned ones removed)."""
    active: str = BASE_VERSION
    """The active version ("base" = the base model, no adapter)."""
    history: list[str] = Field(default_factory=list)
    """Previous active versions, most recent last (the rollback stack)."""
    max_id: int = 0
    """Largest int id ever handed out, pruned versions included."""
    retired: dict[str, int] = Field(default_factory=dict)
    """Pruned versions: name -> id (names and ids are never reused)."""
    trial: ABTrial | None = None
    """The running A/B trial (a candidate serving a share of traffic), if any."""
    epoch: int = 0
    """Epoch of ``active`` + ``trial`` (module docstring, "Epochs"); 0 in manifests written before
    epochs existed."""
    trials: list[dict[str, Any]] = Field(default_factory=list)
    """Decided trials, oldest first: the trial's fields plus outcome (promoted | rejected |
    cancelled), reason and decided_at (last TRIALS_KEPT)."""
    updated_at: float = 0.0


def _is_cluster(client: Any) -> bool:
    """True for a ``redis.cluster.RedisCluster`` (core.infra.redis_url, ``redis+cluster://``)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _trial_text(trial: ABTrial | None) -> str:
    return trial.model_dump_json() if trial is not None else ""


# --------------------------------------------------------------------------- files


def _check_safetensors_header(path: Path) -> None:
    """Cheap readability check: the 8-byte length + JSON header parse (no torch)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"implausible header length {n}")
        header = json.loads(f.read(n))
    if not isinstance(header, dict) or not header:
        raise ValueError("empty header")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so a crash leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch(text: str | None) -> int:
    """Redis's epoch: a missing key is 0 (written before epochs existed), garbage is -1 (older
    than anything, so the manifest repairs it)."""
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        return -1


# --------------------------------------------------------------------------- registry


class Registry:
    """See the module docstring. Safe to use from several processes sharing ``root``."""

    def __init__(self, root: Path, redis: Any, prefix: str, sync: bool = True):
        """``redis``: a ``redis.Redis`` (bytes or decode_responses, either works).
        ``sync``: reconcile the Redis pointer with the manifest now (restores it after a
        Redis restart)."""
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis = redis
        self.prefix = prefix
        self.active_key = f"{prefix}adapter:active"
        self.pointer_channel = f"{prefix}adapter:pointer-moved"  # pub/sub: the new pointer value
        self.seq_key = f"{prefix}adapter:active_seq"
        self.id_key = f"{prefix}adapter:next_id"
        self.trial_key = f"{prefix}adapter:trial"
        self.epoch_key = f"{prefix}adapter:epoch"
        # The last manifest read by the cheap reads (serving, active, pointer), keyed by the
        # file's inode, mtime and size: every save is a rename, so a poll costs one stat.
        self._cached: tuple[tuple[int, int, int], Manifest] | None = None
        if sync:
            self.sync()

    # ----------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _load(self) -> Manifest:
        path = self.manifest_path
        if not path.exists():
            return Manifest()
        try:
            return Manifest.model_validate_json(path.read_text())
        except ValueError as e:
            raise RegistryError(
                f"registry manifest {path} is unreadable ({e}); restore it from a backup or move it "
                "aside and re-register the version folders with Registry.register"
            ) from e

    def _save(self, manifest: Manifest) -> None:
        manifest.updated_at = time.time()
        atomic_write_json(self.manifest_path, manifest.model_dump(mode="json"))

    def _cached_manifest(self) -> Manifest:
        """The manifest, re-read only when the file changed (read-only: never modify it)."""
        try:
            st = os.stat(self.manifest_path)
        except FileNotFoundError:
            return Manifest()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        # A save between the stat and this read only pairs the old key with the newer content:
        # the next stat differs from that key and reads again.
        manifest = self._load()
        self._cached = (key, manifest)
        return manifest

    def _set_pointer(self, manifest: Manifest) -> None:
        """Write the manifest's pointer, trial and epoch to Redis, bump the sequence and publish
        (one transaction). Raises the client's error (RedisError) if Redis refuses or is away."""
        name = manifest.active
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.active_key, name)
        pipe.set(self.trial_key, _trial_text(manifest.trial))
        pipe.set(self.epoch_key, manifest.epoch)
        pipe.incr(self.seq_key)
        if _is_cluster(self.redis):
            # redis-py refuses PUBLISH inside a Cluster transaction: send it right after EXEC (the
            # same order; a lost message only delays watchers to their next poll of active_seq).
            pipe.execute()
            self.redis.publish(self.pointer_channel, name)
            return
        pipe.publish(self.pointer_channel, name)  # API instances swap now instead of at their next poll
        pipe.execute()

    def _commit(self, manifest: Manifest, what: str) -> None:
        """Save a changed serving state (pointer and/or trial) under a new epoch, then publish it.
        The caller holds the lock and reconciled Redis first (``_sync_locked``), so the manifest's
        epoch is already >= Redis's and one more is newer than both. PointerPublishError when the
        Redis write fails: the change is durable and wins at the next read (module docstring)."""
        manifest.epoch += 1
        self._save(manifest)
        try:
            self._set_pointer(manifest)
        except RedisError as e:
            raise PointerPublishError(what, manifest.active, manifest.trial, manifest.epoch, e) from e

    def _end_trial_locked(self, manifest: Manifest, outcome: str, reason: str) -> None:
        """Record the running trial as decided and clear it (the caller saves and sets the pointer)."""
        trial = manifest.trial
        if trial is None:
            return
        manifest.trials.append(
            {**trial.model_dump(mode="json"), "outcome": outcome, "reason": reason, "decided_at": time.time()}
        )
        del manifest.trials[:-TRIALS_KEPT]
        manifest.trial = None

    def _pointer_target_ok(self, manifest: Manifest, name: str) -> bool:
        if name == BASE_VERSION:
            return True
        v = manifest.versions.get(name)
        return v is not None and v.status != AdapterStatus.rejected and (Path(v.path) / ADAPTER_CONFIG).is_file()

    def sync(self) -> str:
        """Reconcile Redis and the manifest (module docstring, "Epochs"); the active name."""
        with self._locked():
            return self._sync_locked(self._load()).active

    def _read_redis(self) -> tuple[str | None, str | None, int]:
        """Redis's serving state and its epoch, as one moment's triple (one MGET)."""
        raw_pointer, raw_trial, raw_epoch = self.redis.mget(self.active_key, self.trial_key, self.epoch_key)
        return _text(raw_pointer), _text(raw_trial), _epoch(_text(raw_epoch))

    def _redis_trial_ok(self, manifest: Manifest, pointer: str, trial_text: str | None) -> ABTrial | None | bool:
        """Redis's trial if it is consistent with ``pointer`` and the manifest's versions (None:
        no trial), False if not (unreadable, another active arm, a candidate it cannot serve)."""
        if trial_text is None:  # written with the pointer by every registry: missing = not ours
            return False
        if trial_text == "":
            return None
        try:
            trial = ABTrial.model_validate_json(trial_text)
        except ValueError:
            return False
        ok = trial.active == pointer and trial.candidate not in (pointer, BASE_VERSION)
        return trial if ok and self._pointer_target_ok(manifest, trial.candidate) else False

    def _sync_locked(self, manifest: Manifest, before: str = "") -> Manifest:
        """Reconcile Redis with ``manifest`` (the caller holds the lock; rules in the module
        docstring, "Epochs"); the reconciled manifest (saved if it changed).

        ``before``: the change about to be made ("promote of 'x'"), when called by a write. If
        Redis then cannot be repaired the change is refused (RegistryError, nothing changed),
        so a write never starts from a state Redis does not have. Reads (``before`` empty) log
        a failed repair and go on with the manifest's state."""
        pointer, trial_text, redis_epoch = self._read_redis()
        if pointer is None:
            redis_epoch = -1  # no pointer (restart, flush): whatever epoch is left says nothing
        state = (manifest.active, _trial_text(manifest.trial))
        if (pointer, trial_text) == state and redis_epoch == manifest.epoch:
            return manifest
        if redis_epoch > manifest.epoch and pointer is not None and self._followable(manifest, pointer):
            trial = self._redis_trial_ok(manifest, pointer, trial_text)
            if trial is not False:
                self._adopt(manifest, pointer, trial, redis_epoch)
                return manifest
        if redis_epoch < manifest.epoch:
            # A fresh deployment has no pointer yet either: only a lost one is worth a warning.
            fresh = pointer is None and manifest.epoch == 0
            log.log(
                logging.INFO if fresh else logging.WARNING,
                "registry: Redis (epoch %s, active %r) is behind the manifest (epoch %s, active %r); "
                "repairing Redis from the manifest",
                redis_epoch,
                pointer,
                manifest.epoch,
                manifest.active,
            )
        else:
            # Same epoch with another state (nothing says Redis is newer; the manifest is the
            # durable copy), or ahead but naming what the manifest cannot serve: the manifest's
            # state is re-asserted as a new decision above Redis's epoch, saved first.
            log.warning(
                "registry: Redis (epoch %s, active %r, trial %r) %s the manifest (epoch %s, active %r); "
                "re-asserting the manifest's state at epoch %s",
                redis_epoch,
                pointer,
                trial_text,
                "disagrees at the same epoch with"
                if redis_epoch == manifest.epoch
                else "is ahead of, not consistent with,",
                manifest.epoch,
                manifest.active,
                redis_epoch + 1,
            )
            manifest.epoch = redis_epoch + 1
            self._save(manifest)
        try:
            self._set_pointer(manifest)
        except RedisError as e:
            if before:
                raise RegistryError(
                    f"{before} refused, nothing changed: Redis is behind the manifest and could not be "
                    f"repaired ({type(e).__name__}: {e}); retry when Redis accepts writes"
                ) from e
            log.warning("registry: could not repair Redis (%s: %s); the manifest's state stands", type(e).__name__, e)
        return manifest

    def _followable(self, manifest: Manifest, pointer: str) -> bool:
        """A pointer from a newer Redis state the manifest may adopt: "base", or a published
        version whose folder exists (a candidate was never promoted, so no registry wrote it)."""
        if pointer == BASE_VERSION:
            return True
        v = manifest.versions.get(pointer)
        return v is not None and v.status == AdapterStatus.published and self._pointer_target_ok(manifest, pointer)

    def _adopt(self, manifest: Manifest, pointer: str, trial: ABTrial | None, epoch: int) -> None:
        """Take Redis's newer, consistent state into the manifest (under the lock) and save it."""
        log.warning(
            "registry: Redis (epoch %s, active %r) is ahead of the manifest (epoch %s, active %r): "
            "another writer; following it",
            epoch,
            pointer,
            manifest.epoch,
            manifest.active,
        )
        if pointer != manifest.active:
            manifest.history.append(manifest.active)
            manifest.active = pointer
        if _trial_text(trial) != _trial_text(manifest.trial):
            if manifest.trial is not None and (trial is None or trial.candidate != manifest.trial.candidate):
                self._end_trial_locked(manifest, "cancelled", f"replaced by the newer state in Redis (epoch {epoch})")
            manifest.trial = trial
        manifest.epoch = epoch
        self._save(manifest)

    # ----------------------------------------------------------------- reads
    def list(self) -> list[AdapterVersion]:
        """Registered versions, oldest first (by id)."""
        return sorted(self._load().versions.values(), key=lambda v: v.id)

    def get(self, name: str) -> AdapterVersion:
        """The version named ``name``; KeyError if the registry does not know it."""
        versions = self._load().versions
        if name not in versions:
            raise KeyError(name)
        return versions[name]

    def history(self) -> list[str]:
        """Previous active versions, most recent last."""
        return list(self._load().history)

    def lineage(self, name: str) -> list[str]:
        """``name``, its parent, the parent's parent... as far as the registry knows."""
        versions, chain = self._load().versions, [name]
        while (v := versions.get(chain[-1])) is not None and v.parent and v.parent not in chain:
            chain.append(v.parent)
        return chain

    def active(self) -> str:
        """The active version name; "base" when none (``serving``'s pointer)."""
        return self.serving()[0]

    def pointer(self) -> str:
        """The active pointer, cheap enough to poll (``serving``'s pointer)."""
        return self.serving()[0]

    def serving(self) -> tuple[str, ABTrial | None]:
        """What the API serves: the pointer and the running A/B trial, as one moment's pair.

        Cheap enough to poll: one MGET (pointer, trial, epoch; one transaction writes them) and
        one stat of the manifest (re-read only when it changed). When Redis agrees with the
        manifest, state and epoch, that is the answer; otherwise the two are reconciled under the
        lock (module docstring, "Epochs": a lagging or regressed Redis is repaired, never
        followed) and the answer is the manifest's."""
        pointer, trial_text, epoch = self._read_redis()
        known = self._cached_manifest()
        if (pointer, trial_text, epoch) == (known.active, _trial_text(known.trial), known.epoch):
            return known.active, known.trial
        with self._locked():
            manifest = self._sync_locked(self._load())
            return manifest.active, manifest.trial

    def trial(self) -> ABTrial | None:
        """The running A/B trial, or None (``serving``'s trial)."""
        return self.serving()[1]

    def epoch(self) -> int:
        """The manifest's epoch (module docstring, "Epochs"): +1 on every serving-state change."""
        return self._load().epoch

    def trials(self) -> list[dict[str, Any]]:
        """Decided A/B trials, oldest first (see ``Manifest.trials``)."""
        return list(self._load().trials)

    def subscribe_pointer(self) -> Any:
        """A Redis pub/sub subscribed to the pointer channel: one message per pointer move
        (its data is the new pointer). Messages sent while nobody listens are lost, so poll
        ``pointer()`` too. The caller closes it."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.pointer_channel)
        return pubsub

    def active_seq(self) -> int:
        """Increases on every pointer move; watchers compare it with the last value they saw."""
        return int(_text(self.redis.get(self.seq_key)) or 0)

    def validate(self, name: str) -> AdapterVersion:
        """The version, if its folder is complete and its weights match the recorded sha256."""
        try:
            version = self.get(name)
        except KeyError:
            raise RegistryError(
                f"unknown adapter version {name!r}; GET /admin/checkpoints lists the registered ones"
            ) from None
        folder = Path(version.path)
        try:
            json.loads((folder / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(
                f"version {name!r}: {ADAPTER_CONFIG} in {folder} is missing or unreadable ({e}); "
                "the folder was damaged after registration: promote another version or retrain"
            ) from e
        weights = weights_file(folder)
        if weights is None:
            raise RegistryError(
                f"version {name!r}: no adapter weights ({' or '.join(WEIGHT_FILES)}) in {folder}; "
                "promote another version or retrain"
            )
        try:
            if weights.suffix == ".safetensors":
                _check_safetensors_header(weights)
            digest = sha256_file(weights)
        except (OSError, ValueError) as e:
            raise RegistryError(f"version {name!r}: weights {weights} are unreadable ({e})") from e
        if version.sha256 and digest != version.sha256:
            raise RegistryError(
                f"version {name!r}: sha256 of {weights.name} is {digest[:12]}..., the registry recorded "
                f"{version.sha256[:12]}...; the weights changed after registration, refusing to load them"
            )
        return version

    # ----------------------------------------------------------------- writes
    def _next_id(self, manifest: Manifest) -> int:
        counter = int(self.redis.incr(self.id_key))
        new_id = next_id(manifest.max_id, counter)
        if new_id != counter:  # Redis lost its counter: catch it up
            self.redis.set(self.id_key, new_id)
        manifest.max_id = new_id
        return new_id

    def register(self, version_dir: Path, status: AdapterStatus = AdapterStatus.candidate) -> AdapterVersion:
        """Record a finished version folder ``root/<name>/`` (with metadata.json) and give it an id."""
        folder = Path(version_dir).expanduser().resolve()
        if folder.parent != self.root:
            raise RegistryError(
                f"{folder} is not directly under the registry root {self.root}; write versions as "
                "root/<name>/ (trainer/checkpoints.py does) and register that folder"
            )
        name = folder.name
        if is_temp_name(name):
            raise RegistryError(f"{folder} looks like a temp folder; register only the renamed, finished folder")
        try:
            meta = json.loads((folder / METADATA).read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"{folder}: {METADATA} missing or unreadable ({e}); is the checkpoint finished?") from e
        if meta.get("name", name) != name:
            raise RegistryError(f"{folder}: metadata.json names {meta.get('name')!r}, the folder is {name!r}")
        if not (folder / ADAPTER_CONFIG).is_file() or weights_file(folder) is None:
            raise RegistryError(f"{folder} lacks {ADAPTER_CONFIG} or adapter weights; not a PEFT adapter folder")
        digest = sha256_file(weights_file(folder))
        if meta.get("sha256") and meta["sha256"] != digest:
            raise RegistryError(
                f"{folder}: weights sha256 {digest[:12]}... differs from metadata.json {meta['sha256'][:12]}...; "
                "the checkpoint is corrupt, do not register it"
            )
        with self._locked():
            manifest = self._load()
            if name in manifest.versions or name in manifest.retired or name == BASE_VERSION:
                raise RegistryError(f"version name {name!r} is already used; pick a new name (names are never reused)")
            fields = {**meta, "name": name, "path": str(folder), "sha256": digest, "status": status}
            fields["id"] = self._next_id(manifest)
            fields.setdefault("reason", "")
            version = AdapterVersion.model_validate(fields)
            manifest.versions[name] = version
            self._save(manifest)
        return version

    def mark(self, name: str, status: AdapterStatus, reason: str = "") -> AdapterVersion:
        """Set a version's status (and the reason, e.g. why the gate rejected it)."""
        with self._locked():
            manifest = self._load()
            if name not in manifest.versions:
                raise KeyError(name)
            trial = manifest.trial
            if status == AdapterStatus.rejected and trial is not None and trial.candidate == name:
                # Ends the trial, a serving-state change: start from the state Redis has (epochs).
                manifest = self._sync_locked(manifest, before=f"rejecting {name!r}")
            if status == AdapterStatus.rejected and manifest.active == name:
                raise RegistryError(f"{name!r} is active; roll back before rejecting it")
            version = manifest.versions[name].model_copy(update={"status": AdapterStatus(status), "reason": reason})
            manifest.versions[name] = version
            trial = manifest.trial
            in_trial = status == AdapterStatus.rejected and trial is not None and trial.candidate == name
            if in_trial:
                self._end_trial_locked(manifest, "rejected", reason)
                self._commit(manifest, f"rejecting {name!r} (ending its A/B trial)")
            else:
                self._save(manifest)
        return version

    def promote(self, name: str) -> AdapterVersion:
        """Validate ``name``, mark it published and make it active (the old one goes on the history)."""
        version = self.validate(name)
        if version.status == AdapterStatus.rejected:
            raise RegistryError(
                f"version {name!r} was rejected ({version.reason or 'no reason recorded'}); a rejected "
                "candidate is never made active: train a new one"
            )
        with self._locked():
            manifest = self._sync_locked(self._load(), before=f"promote of {name!r}")
            if name not in manifest.versions:
                raise RegistryError(f"version {name!r} was pruned while being promoted; pick another")
            version = manifest.versions[name].model_copy(update={"status": AdapterStatus.published})
            manifest.versions[name] = version
            if manifest.trial is not None and manifest.trial.candidate == name:
                self._end_trial_locked(manifest, "promoted", "promoted by hand during its trial")
            elif manifest.trial is not None and manifest.active != name:
                self._end_trial_locked(manifest, "cancelled", f"{name!r} was made active by hand")
            if manifest.active != name:
                manifest.history.append(manifest.active)
                manifest.active = name
            self._commit(manifest, f"promote of {name!r}")
        return version

    def start_trial(self, name: str, share: float) -> ABTrial:
        """Let the gated candidate ``name`` answer ``share`` of new requests next to the active
        version (an A/B trial) instead of making it active now; ``end_trial`` decides it."""
        if not 0 < share < 1:
            raise RegistryError(f"an A/B share must be in (0, 1), got {share}; 0 means promote at once (promote)")
        version = self.validate(name)
        if version.status == AdapterStatus.rejected:
            raise RegistryError(f"version {name!r} was rejected ({version.reason or 'no reason recorded'}); not served")
        with self._locked():
            manifest = self._sync_locked(self._load(), before=f"A/B trial of {name!r}")
            if name not in manifest.versions:
                raise RegistryError(f"version {name!r} was pruned before its trial; pick another")
            if manifest.active == name:
                raise RegistryError(f"version {name!r} is already active; a trial needs another version")
            if manifest.trial is not None and manifest.trial.candidate != name:
                raise RegistryError(
                    f"an A/B trial of {manifest.trial.candidate!r} is running; "
                    "end it (end_trial) before starting another"
                )
            if manifest.trial is None:
                manifest.trial = ABTrial(candidate=name, active=manifest.active, share=share)
                self._commit(manifest, f"A/B trial of {name!r}")
            return manifest.trial

    def end_trial(self, candidate: str, promote: bool, reason: str = "") -> str:
        """Decide the running trial of ``candidate``: promote it to active (the old active goes on
        the history) or reject it with ``reason`` (traffic returns to the active version). One
        manifest write, then one Redis transaction. The active name afterwards. RegistryError if
        no trial of ``candidate`` is running (another process decided it already)."""
        what = f"ending the A/B trial of {candidate!r} ({'promote' if promote else 'reject'})"
        with self._locked():
            manifest = self._sync_locked(self._load(), before=what)
            trial = manifest.trial
            if trial is None or trial.candidate != candidate:
                running = trial.candidate if trial else "none"
                raise RegistryError(f"no A/B trial of {candidate!r} is running (running: {running}); nothing to end")
            version = manifest.versions.get(candidate)
            if promote and (version is None or not self._pointer_target_ok(manifest, candidate)):
                promote, reason = False, f"{reason}; but its folder is gone, so it cannot be promoted".lstrip("; ")
            if version is not None:
                status = AdapterStatus.published if promote else AdapterStatus.rejected
                manifest.versions[candidate] = version.model_copy(update={"status": status, "reason": reason})
            self._end_trial_locked(manifest, "promoted" if promote else "rejected", reason)
            if promote and manifest.active != candidate:
                manifest.history.append(manifest.active)
                manifest.active = candidate
            self._commit(manifest, what)
            return manifest.active

    def _pop_rollback_target(self, manifest: Manifest) -> str | None:
        """Pop ``manifest.history`` down to the version a rollback goes to (the most recent
        previous active that is not the current one, not rejected and still on disk); None
        (history emptied) if there is none."""
        while manifest.history:
            previous = manifest.history.pop()
            if previous != manifest.active and self._pointer_target_ok(manifest, previous):
                return previous
        return None

    def rollback_target(self) -> str | None:
        """The version ``rollback()`` would make active now (same rule), or None. Changes nothing."""
        with self._locked():
            return self._pop_rollback_target(self._sync_locked(self._load()))

    def rollback(self, reject_current: str = "") -> str:
        """Make the previous active version active again; its name. RegistryError if there is none.

        ``reject_current``: also mark the version rolled back from as rejected with this reason
        (the guardrail uses it, so the trainer does not build on a version users dislike)."""
        with self._locked():
            manifest = self._sync_locked(self._load(), before="rollback")
            current = manifest.active
            previous = self._pop_rollback_target(manifest)
            if previous is None:
                raise RegistryError(
                    f"nothing to roll back to: {current!r} is the first active version "
                    "(POST /admin/promote/{version} to choose one explicitly)"
                )
            manifest.active = previous
            if reject_current and current in manifest.versions:
                manifest.versions[current] = manifest.versions[current].model_copy(
                    update={"status": AdapterStatus.rejected, "reason": reject_current}
                )
            self._end_trial_locked(manifest, "cancelled", f"rolled back from {current!r} to {previous!r}")
            self._commit(manifest, f"rollback from {current!r} to {previous!r}")
        return previous

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; never the active one or its parent.
        Returns the pruned names (their ids and names stay retired)."""
        if keep < 1:
            raise RegistryError(f"keep must be >= 1, got {keep}")
        with self._locked():
            manifest = self._load()
            active = manifest.versions.get(manifest.active)
            protected = {manifest.active, active.parent if active else None}
            if manifest.trial is not None:
                protected.add(manifest.trial.candidate)
            by_age = sorted(manifest.versions.values(), key=lambda v: v.id)
            newest = {v.name for v in by_age[-keep:]}
            doomed = [v for v in by_age if v.name not in newest and v.name not in protected]
            for v in doomed:
                del manifest.versions[v.name]
                manifest.retired[v.name] = v.id
            manifest.history = [h for h in manifest.history if h == BASE_VERSION or h in manifest.versions]
            self._save(manifest)
        # Folders go after the manifest no longer names them: a crash here leaves only orphans.
        for v in doomed:
            shutil.rmtree(v.path, ignore_errors=True)
        return [v.name for v in doomed]

    # ----------------------------------------------------------------- recovery
    def clean(self) -> dict[str, list[str]]:
        """Remove what a crash can leave under root: temp folders, and finished folders that
        were never registered (a kill between the checkpoint's rename and ``register``).
        Run it only where no checkpoint is being written (the trainer, at start)."""
        removed: dict[str, list[str]] = {"temp": [], "unregistered": []}
        with self._locked():
            manifest = self._load()
            known = {Path(v.path).name for v in manifest.versions.values()}
            for entry in self.root.iterdir():
                if entry.name in (MANIFEST, LOCK):
                    continue
                if entry.is_dir() and is_temp_name(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed["temp"].append(entry.name)
                elif entry.is_file() and entry.name.startswith(f".{MANIFEST}.tmp"):
                    entry.unlink(missing_ok=True)
                    removed["temp"].append(entry.name)
                elif entry.is_dir() and entry.name not in known and looks_like_version(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed["unregistered"].append(entry.name)
        return removed
