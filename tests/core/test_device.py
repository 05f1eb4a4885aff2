"""core/device.py: the RLHB_DEVICE / RLHB_DTYPE rules, on this CPU-only machine and with CUDA faked."""

from __future__ import annotations

import pytest
import torch

from core.device import resolve_device
from core.settings import TrainerSettings


def test_auto_on_a_machine_without_cuda_is_cpu_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu") == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_cuda_without_cuda_is_a_clear_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"RLHB_DEVICE={spec} but this machine has no usable CUDA.*RLHB_DEVICE=cpu"):
        resolve_device(spec)


def test_auto_with_cuda_is_cuda_and_bf16_only_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device() == (torch.device("cuda"), torch.bfloat16)
    assert resolve_device("auto", "float32") == (torch.device("cuda"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device() == (torch.device("cuda"), torch.float32)  # old GPU: no float16 without a scaler
    with pytest.raises(ValueError, match="RLHB_DTYPE=bfloat16 but this GPU does not support bfloat16"):
        resolve_device("cuda", "bfloat16")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1", "float16") == (torch.device("cuda", 1), torch.float16)
    with pytest.raises(ValueError, match="RLHB_DEVICE=cuda:2 but only 2 CUDA device"):
        resolve_device("cuda:2")


def test_dtype_overrides_and_bad_values(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device(torch.device("cpu"), torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="RLHB_DTYPE=float16 on the CPU"):
        resolve_device("cpu", "float16")
    with pytest.raises(ValueError, match="RLHB_DTYPE='float8' is not a dtype"):
        resolve_device("cpu", "float8")
    with pytest.raises(ValueError, match="RLHB_DEVICE='tpu' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_the_settings_read_rlhb_device_and_rlhb_dtype(monkeypatch):
    monkeypatch.setenv("RLHB_DEVICE", "cuda:1")
    monkeypatch.setenv("RLHB_DTYPE", "bfloat16")
    settings = TrainerSettings()
    assert (settings.device, settings.dtype) == ("cuda:1", "bfloat16")
    monkeypatch.setenv("RLHB_DEVICE", "gpu")
    with pytest.raises(ValueError, match="RLHB_DEVICE"):
        TrainerSettings()
