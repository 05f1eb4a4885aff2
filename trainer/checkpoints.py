"""Immutable checkpoints: a standard PEFT adapter directory plus ``metadata.json``.

Layout of ``output_root/<version_name>/``::

    adapter_config.json, adapter_model.safetensors   what peft and vLLM load
    metadata.json                                    schemas.adapters.AdapterVersion fields
    trainer_state/                                   optional: value head, discriminator (resume)

Everything is written to a hidden temp folder next to the target and renamed into place in
one ``os.replace``, so a reader sees either no version or a complete one. An existing
version is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from schemas.adapters import AdapterVersion

WEIGHTS = "adapter_model.safetensors"
METADATA = "metadata.json"
STATE_DIR = "trainer_state"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def next_id(output_root: Path) -> int:
    """1 + the largest id among the versions already under ``output_root`` (the registry may reassign)."""
    largest = 0
    for meta in output_root.glob(f"*/{METADATA}"):
        try:
            largest = max(largest, int(json.loads(meta.read_text()).get("id", 0)))
        except (OSError, ValueError, TypeError):
            continue
    return largest + 1


def write_checkpoint(
    output_root: Path,
    version_name: str,
    *,
    save_adapter: Callable[[Path], None],
    algorithm: str,
    step: int,
    metrics: Mapping[str, float],
    parent: AdapterVersion | None = None,
    save_state: Callable[[Path], None] | None = None,
) -> AdapterVersion:
    """Write ``output_root/version_name`` atomically and return its metadata.

    save_adapter(dir) must write a standard PEFT adapter (``peft_model.save_pretrained``);
    save_state(dir), if given, writes extra tensors into ``dir`` (= ``trainer_state/``).
    """
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    target = output_root / version_name
    if target.exists():
        raise FileExistsError(f"{target} already exists; versions are immutable, pick a new version_name")
    tmp = output_root / f".{version_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_adapter(tmp)
        if not (tmp / WEIGHTS).is_file() or not (tmp / "adapter_config.json").is_file():
            raise RuntimeError(f"save_adapter did not write {WEIGHTS} and adapter_config.json into {tmp}")
        if save_state is not None:
            (tmp / STATE_DIR).mkdir()
            save_state(tmp / STATE_DIR)
        version = AdapterVersion(
            name=version_name,
            id=next_id(output_root),
            path=str(target.resolve()),
            parent=parent.name if parent is not None else None,
            algorithm=algorithm,
            step=step,
            metrics=dict(metrics),
            sha256=sha256_file(tmp / WEIGHTS),
        )
        (tmp / METADATA).write_text(version.model_dump_json(indent=2))
        _test_pause()
        os.replace(tmp, target)  # atomic on one filesystem; fails if target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def _test_pause() -> None:
    """Crash tests only: RLHB_TEST_CHECKPOINT_PAUSE_S=<s> sleeps between the temp write and the
    rename, so a test can kill the process while a checkpoint is half-written."""
    pause = float(os.environ.get("RLHB_TEST_CHECKPOINT_PAUSE_S", "0") or 0)
    if pause > 0:
        import time

        time.sleep(pause)


def read_metadata(version_dir: Path) -> AdapterVersion:
    return AdapterVersion.model_validate_json((Path(version_dir) / METADATA).read_text())
