"""Immutable checkpoints: a standard PEFT adapter directory plus ``metadata.json``.

The folder format (file names, the weights' sha256, the id rule) is core/checkpoint_format.py.
Everything is written to a hidden temp folder next to the target and renamed into place in
one ``os.replace``, so a reader sees either no version or a complete one. An existing
version is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from core.checkpoint_format import (
    ADAPTER_CONFIG,
    METADATA,
    STATE_DIR,
    WEIGHTS,
    largest_id,
    next_id,
    read_metadata,
    sha256_file,
    temp_name,
)
from schemas.adapters import AdapterVersion

__all__ = ["METADATA", "STATE_DIR", "WEIGHTS", "read_metadata", "sha256_file", "write_checkpoint"]


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
    tmp = output_root / temp_name(version_name)
    try:
        tmp.mkdir()
        save_adapter(tmp)
        if not (tmp / WEIGHTS).is_file() or not (tmp / ADAPTER_CONFIG).is_file():
            raise RuntimeError(f"save_adapter did not write {WEIGHTS} and {ADAPTER_CONFIG} into {tmp}")
        if save_state is not None:
            (tmp / STATE_DIR).mkdir()
            save_state(tmp / STATE_DIR)
        version = AdapterVersion(
            name=version_name,
            id=next_id(largest_id(output_root)),  # the registry may reassign it
            path=str(target.resolve()),
            parent=parent.name if parent is not None else None,
            algorithm=algorithm,
            step=step,
            metrics=dict(metrics),
            sha256=sha256_file(tmp / WEIGHTS),
        )
        (tmp / METADATA).write_text(version.model_dump_json(indent=2))
        os.replace(tmp, target)  # atomic on one filesystem; fails if target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version
