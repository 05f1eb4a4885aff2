"""The one device/dtype rule for every model the trainer (and, later, the API) loads.

``resolve_device(spec, dtype)`` turns the two settings ``RLHB_DEVICE`` and ``RLHB_DTYPE``
(``CommonSettings.device`` / ``.dtype``) into a ``(torch.device, torch.dtype)`` pair:

- ``auto``: CUDA when ``torch.cuda.is_available()``, else the CPU.
- dtype ``auto``: bfloat16 on a CUDA device whose GPU supports it
  (``torch.cuda.is_bf16_supported()``), float32 everywhere else. float32 on the CPU because
  CPU bfloat16 matmuls are slower than float32 ones on most CPUs; float32 on old GPUs because
  float16 training without a loss scaler under- and overflows.
- explicit ``cpu``, ``cuda``, ``cuda:N`` and ``float32``/``bfloat16``/``float16``; a request the
  machine cannot serve is a ``ValueError`` that names the setting to change.

The dtype is the dtype of the frozen base weights; trainable heads (value head,
discriminator heads) stay float32 and read the trunk's features cast to float32.

torch is imported inside the function, so importing this module is cheap.
"""

from __future__ import annotations

import re
from typing import Any

DEVICE_VARIABLE = "RLHB_DEVICE"
DTYPE_VARIABLE = "RLHB_DTYPE"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_PATTERN = "^(" + "|".join(DTYPES) + ")$"


def resolve_device(spec: Any = "auto", dtype: Any = "auto") -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` for the settings ``spec`` (RLHB_DEVICE) and ``dtype`` (RLHB_DTYPE).

    Either may also be a ``torch.device`` / ``torch.dtype`` already (checked the same way)."""
    import torch

    spec = str(spec or "auto").strip().lower()
    dtype = dtype_name(dtype or "auto").strip().lower()
    if not re.match(DEVICE_PATTERN, spec):
        raise ValueError(f"{DEVICE_VARIABLE}={spec!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    if dtype not in DTYPES:
        raise ValueError(f"{DTYPE_VARIABLE}={dtype!r} is not a dtype; use one of {', '.join(DTYPES)}")

    if spec == "auto":
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{DEVICE_VARIABLE}={spec} but this machine has no usable CUDA device (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}); set {DEVICE_VARIABLE}=cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{DEVICE_VARIABLE}={spec} but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1}); "
                f"pick one of those or set {DEVICE_VARIABLE}=cuda"
            )

    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if dtype == "auto":
        resolved = torch.bfloat16 if device.type == "cuda" and bf16_ok else torch.float32
    else:
        resolved = getattr(torch, dtype)
    if resolved is torch.bfloat16 and not bf16_ok:
        raise ValueError(
            f"{DTYPE_VARIABLE}=bfloat16 but this GPU does not support bfloat16; set {DTYPE_VARIABLE}=float32 or auto"
        )
    if resolved is torch.float16 and device.type == "cpu":
        raise ValueError(
            f"{DTYPE_VARIABLE}=float16 on the CPU ({DEVICE_VARIABLE}={spec}): many CPU kernels lack float16; "
            f"use float32 (or bfloat16) on the CPU, or set {DEVICE_VARIABLE}=cuda"
        )
    return device, resolved


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for metadata and logs)."""
    return str(dtype).removeprefix("torch.")
