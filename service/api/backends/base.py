"""The interface every generation backend implements, and the values that cross it.

A backend turns a rendered prompt into text with a given adapter version (or the base
model). It never builds prompts (routes use core.prompts.render_prompt) and never
decides which adapter is active (service.api.hot_swap does): it only loads, pins and
runs the immutable versions it is given, so a request always finishes on the adapter it
started with.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from schemas.adapters import BASE_VERSION, AdapterVersion


class BackendError(RuntimeError):
    """The backend cannot serve right now (not loaded, engine down); routes answer 503."""


class AdapterLoadError(RuntimeError):
    """An adapter version could not be loaded (missing, unreadable, incompatible)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete. ``adapter`` None means the base model."""

    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    """0 means greedy decoding (deterministic)."""
    top_p: float = 1.0
    adapter: AdapterVersion | None = None
    prefix: str = ""
    """A leading part of ``prompt`` that many requests share (the system prompt); a backend may
    cache its keys/values per adapter version. Empty: nothing shared."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def version_name(self) -> str:
        return self.adapter.name if self.adapter is not None else BASE_VERSION


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (end of sequence), "length" (hit max_new_tokens) or "cancelled" (client left)."""
    adapter_version: str
    """Name of the version that produced the text ("base" for the base model)."""


@dataclass
class Cancellation:
    """Set ``cancelled`` to stop generating for one request (e.g. its client disconnected)."""

    cancelled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """What the API needs from a generation engine."""

    kind: str = "abstract"
    model_id: str = ""
    """Identifier of the base model (folder name or served model name)."""
    tokenizer: Any = None
    """The HF tokenizer of the base model; render_prompt needs its chat template."""
    max_context: int = 2048
    """Most tokens (prompt + answer) one sequence may hold."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model / connect to the engine. Raises BackendError when it cannot."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @abc.abstractmethod
    async def load_adapter(self, version: AdapterVersion) -> None:
        """Make ``version`` servable (idempotent). Raises AdapterLoadError; on failure nothing changes."""

    @abc.abstractmethod
    def loaded_adapters(self) -> list[str]:
        """Names of the versions loaded now."""

    async def unload_adapter(self, version: AdapterVersion) -> bool:
        """Free ``version``'s memory now if no request holds it and it is not the active one; True if
        it is gone. Optional: a backend without it (False) relies on its own eviction."""
        return False

    def set_protected(self, version: AdapterVersion | None, *also: AdapterVersion | None) -> None:  # noqa: B027
        """The active version (and ``also``: an A/B trial's candidate): never evicted while served. Optional hook."""

    def acquire(self, version: AdapterVersion | None) -> bool:
        """Pin ``version`` for one request (it cannot be evicted until ``release``).
        False when it is not loaded (load it, then acquire again). The base model is always there."""
        return True

    def release(self, version: AdapterVersion | None) -> None:  # noqa: B027 - optional hook
        """Undo one ``acquire``."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest, cancel: Cancellation | None = None) -> GenerationResult:
        """Complete one prompt. Concurrent calls may be batched together."""

    @abc.abstractmethod
    def stream(
        self, request: GenerationRequest, cancel: Cancellation | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield text deltas as they are generated, then one GenerationResult (whose text is the
        concatenation of the deltas)."""
