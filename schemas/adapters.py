"""Adapter versions: immutable values, as in vLLM's LoRA manager.

A version is (name, unique int id, path). The int id never repeats across versions, so
a prefix/KV cache keyed by adapter id can never serve text from a stale adapter."""

from __future__ import annotations

import time
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
BASE_VERSION = "base"


class AdapterStatus(str, Enum):
    candidate = "candidate"
    published = "published"
    rejected = "rejected"


class AdapterVersion(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    id: int = Field(ge=1, description="Unique int id (vLLM lora_int_id); never reused.")
    path: str = Field(description="PEFT adapter directory (adapter_config.json + weights).")
    parent: str | None = None
    algorithm: str = ""
    step: int = 0
    status: AdapterStatus = AdapterStatus.candidate
    reason: str = Field(default="", description="Why a candidate was rejected, if it was.")
    sha256: str = Field(default="", description="sha256 of the adapter weights file.")
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
