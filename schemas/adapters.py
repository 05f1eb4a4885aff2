"""Adapter versions: immutable values, as in vLLM's LoRA manager.

A version is (name, unique int id, path). The int id never repeats across versions, so
a prefix/KV cache keyed by adapter id can never serve text from a stale adapter."""

from __future__ import annotations

import hashlib
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


class ABTrial(BaseModel):
    """A gated candidate serving a share of live traffic next to the active version (the
    registry stores it next to the active pointer; the trainer's guardrail promotes or
    rejects it from the two arms' like rates over the same period)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    candidate: str = Field(description="The candidate version (the trial's name: version names are never reused).")
    active: str = Field(description="The active version when the trial started (the other arm).")
    share: float = Field(gt=0, lt=1, description="Share of new requests the candidate answers.")
    started_at: float = Field(default_factory=time.time)

    def arm_of(self, impression_id: str) -> str:
        """The arm an impression goes to: a hash of the trial and the impression id, so the
        split is reproducible and every API instance agrees ('candidate' or 'active')."""
        digest = hashlib.sha256(f"{self.candidate}\x00{impression_id}".encode()).digest()
        return "candidate" if int.from_bytes(digest[:8], "big") / 2**64 < self.share else "active"
