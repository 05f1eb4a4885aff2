"""The adapter-version folder format, shared by its writer (trainer/checkpoints.py) and its
reader (core/registry.py).

One version is one immutable folder ``root/<name>/``::

    adapter_config.json, adapter_model.safetensors   a standard PEFT adapter (peft, vLLM load it)
    metadata.json                                    schemas.adapters.AdapterVersion fields,
                                                     ``sha256`` = sha256 of the weights file
    trainer_state/                                   optional: value head, discriminator (resume)

A folder is written under a temp name (``temp_name``) next to its target and renamed into
place; a name starting with "." or containing a temp marker is never a version.

Ids only grow (``next_id``): a new id is above every id already used under the root, and
above the registry's counter.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from schemas.adapters import AdapterVersion

METADATA = "metadata.json"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
"""What the trainer writes."""
WEIGHT_FILES = (WEIGHTS, "adapter_model.bin")
"""What a reader accepts (older PEFT versions saved .bin)."""
STATE_DIR = "trainer_state"
TEMP_MARKERS = (".tmp", ".partial")
"""A name starting with "." or containing one of these is a temp dir, never a version."""


def weights_file(version_dir: Path) -> Path | None:
    """The adapter weights in ``version_dir``, or None."""
    for name in WEIGHT_FILES:
        if (Path(version_dir) / name).is_file():
            return Path(version_dir) / name
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_temp_name(name: str) -> bool:
    return name.startswith(".") or any(m in name for m in TEMP_MARKERS)


def temp_name(version_name: str) -> str:
    """A unique hidden temp folder name for writing ``version_name`` (``is_temp_name`` holds)."""
    return f".{version_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def looks_like_version(folder: Path) -> bool:
    return (folder / METADATA).exists() or (folder / ADAPTER_CONFIG).exists()


def largest_id(root: Path) -> int:
    """The largest id recorded in the metadata of the versions under ``root`` (0 if none)."""
    largest = 0
    for meta in Path(root).glob(f"*/{METADATA}"):
        try:
            largest = max(largest, int(json.loads(meta.read_text()).get("id", 0)))
        except (OSError, ValueError, TypeError):
            continue
    return largest


def next_id(largest_used: int, proposed: int = 0) -> int:
    """The id rule: ``proposed`` (e.g. the registry's Redis counter) if it is above every id
    already used, otherwise ``largest_used + 1``. Ids are never reused."""
    return proposed if proposed > largest_used else largest_used + 1


def read_metadata(version_dir: Path) -> AdapterVersion:
    return AdapterVersion.model_validate_json((Path(version_dir) / METADATA).read_text())
