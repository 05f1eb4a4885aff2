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

Rules:

- Ids are ``max(INCR next_id, manifest max id + 1)`` and the manifest remembers the largest
  id ever handed out (pruned versions included), so an id is never reused, even after a
  Redis restart or a prune.
- Names are never reused either: pruned names stay in ``manifest.retired``.
- The manifest is written atomically (temp file, fsync, rename, fsync dir) under the lock,
  and always before the Redis pointer moves.
- Redis vs manifest: when Redis has no pointer (restart, flush), it is restored from the
  manifest. When the two disagree, Redis wins only if it names a version the manifest
  knows whose directory exists (or "base"); the manifest then adopts it. Otherwise the
  manifest's pointer is written back to Redis. Reconciliation happens under the lock, so a
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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

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

__all__ = ["Manifest", "Registry", "RegistryError", "atomic_write_json", "sha256_file", "weights_file"]

MANIFEST = "manifest.json"
LOCK = ".registry.lock"
TRIALS_KEPT = 200


class RegistryError(Exception):
    """A registry operation was refused; the message says what is wrong and what to do."""


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
    trials: list[dict[str, Any]] = Field(default_factory=list)
    """Decided trials, oldest first: the trial's fields plus outcome (promoted | rejected |
    cancelled), reason and decided_at (last TRIALS_KEPT)."""
    updated_at: float = 0.0


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

    def _set_pointer(self, manifest: Manifest) -> None:
        """Write the manifest's pointer and trial to Redis, bump the sequence and publish (one transaction)."""
        name = manifest.active
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.active_key, name)
        pipe.set(self.trial_key, _trial_text(manifest.trial))
        pipe.incr(self.seq_key)
        pipe.publish(self.pointer_channel, name)  # API instances swap now instead of at their next poll
        pipe.execute()

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
        """Reconcile Redis and the manifest (rules in the module docstring); the active name."""
        with self._locked():
            return self._sync_locked(self._load())

    def _sync_locked(self, manifest: Manifest) -> str:
        raw_pointer, raw_trial = self.redis.mget(self.active_key, self.trial_key)
        in_redis, trial_in_redis = _text(raw_pointer), _text(raw_trial)
        if in_redis == manifest.active:
            if trial_in_redis != _trial_text(manifest.trial):  # the trial: the manifest is written first, it wins
                self._set_pointer(manifest)
            return in_redis
        if in_redis is not None and self._pointer_target_ok(manifest, in_redis):
            manifest.history.append(manifest.active)
            manifest.active = in_redis
            self._end_trial_locked(manifest, "cancelled", f"the active pointer was moved to {in_redis!r} in Redis")
            self._save(manifest)
            if trial_in_redis != _trial_text(manifest.trial):
                self._set_pointer(manifest)
            return in_redis
        self._set_pointer(manifest)
        return manifest.active

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
        """The active version name; "base" when none. Restores the Redis pointer if it is gone."""
        in_redis = _text(self.redis.get(self.active_key))
        if in_redis is not None and in_redis == self._load().active:
            return in_redis
        return self.sync()

    def pointer(self) -> str:
        """The Redis pointer as it is (one GET, no manifest read: cheap enough to poll). When
        Redis has none (restart, flush) it is restored from the manifest, see ``active``."""
        in_redis = _text(self.redis.get(self.active_key))
        return in_redis if in_redis else self.active()

    def serving(self) -> tuple[str, ABTrial | None]:
        """What the API serves: the pointer and the running A/B trial, as one moment's pair (one
        MGET; both are written by one transaction). Restored from the manifest when Redis lost them."""
        raw_pointer, raw_trial = self.redis.mget(self.active_key, self.trial_key)
        pointer, trial_text = _text(raw_pointer), _text(raw_trial)
        if not pointer or trial_text is None:
            with self._locked():
                manifest = self._load()
                self._sync_locked(manifest)
                manifest = self._load()
                return manifest.active, manifest.trial
        try:
            return pointer, (ABTrial.model_validate_json(trial_text) if trial_text else None)
        except ValueError:  # not written by a registry: restore what the manifest says
            with self._locked():
                manifest = self._load()
                self._set_pointer(manifest)
                return manifest.active, manifest.trial

    def trial(self) -> ABTrial | None:
        """The running A/B trial, or None (the manifest's, after reconciling Redis with it)."""
        with self._locked():
            manifest = self._load()
            self._sync_locked(manifest)
            return self._load().trial

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
            if status == AdapterStatus.rejected and manifest.active == name:
                raise RegistryError(f"{name!r} is active; roll back before rejecting it")
            version = manifest.versions[name].model_copy(update={"status": AdapterStatus(status), "reason": reason})
            manifest.versions[name] = version
            trial = manifest.trial
            in_trial = status == AdapterStatus.rejected and trial is not None and trial.candidate == name
            if in_trial:
                self._end_trial_locked(manifest, "rejected", reason)
            self._save(manifest)
            if in_trial:
                self._set_pointer(manifest)
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
            manifest = self._load()
            self._sync_locked(manifest)
            manifest = self._load()
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
            self._save(manifest)
            self._set_pointer(manifest)
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
            manifest = self._load()
            self._sync_locked(manifest)
            manifest = self._load()
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
                self._save(manifest)
                self._set_pointer(manifest)
            return manifest.trial

    def end_trial(self, candidate: str, promote: bool, reason: str = "") -> str:
        """Decide the running trial of ``candidate``: promote it to active (the old active goes on
        the history) or reject it with ``reason`` (traffic returns to the active version). One
        manifest write, then one Redis transaction. The active name afterwards. RegistryError if
        no trial of ``candidate`` is running (another process decided it already)."""
        with self._locked():
            manifest = self._load()
            self._sync_locked(manifest)
            manifest = self._load()
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
            self._save(manifest)
            self._set_pointer(manifest)
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
            self._sync_locked(self._load())
            return self._pop_rollback_target(self._load())

    def rollback(self, reject_current: str = "") -> str:
        """Make the previous active version active again; its name. RegistryError if there is none.

        ``reject_current``: also mark the version rolled back from as rejected with this reason
        (the guardrail uses it, so the trainer does not build on a version users dislike)."""
        with self._locked():
            manifest = self._load()
            self._sync_locked(manifest)
            manifest = self._load()
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
            self._save(manifest)
            self._set_pointer(manifest)
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
