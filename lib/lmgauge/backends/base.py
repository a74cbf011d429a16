"""The Backend protocol and the data it returns.

A backend is one file: an in-process engine or a client of one server's API. It
reports what happened, timestamped where it happened; measure.py turns that into
Samples. Timestamps are ``time.perf_counter()`` seconds, taken the moment a token
was produced (in-process) or its bytes were parsed off the wire (HTTP).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "llamacpp", "openai", "ollama", ...
    version: str  # of the engine or server, as it reports itself
    endpoint: str  # base URL, or "in-process"
    synthetic_weights: bool = False  # output text is meaningless; say so in reports
    can_unload: bool = True  # False where the API cannot unload (plain OpenAI servers)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    size_bytes: int | None = None
    digest: str | None = None  # sha256 of the file or the server's digest
    quantization: str | None = None
    context_tokens: int | None = None
    loaded: bool = False


@dataclass(frozen=True)
class LoadSettings:
    """How to load a model. ``None`` means the engine's own default."""

    context_tokens: int = 4096
    threads: int | None = None
    batch_tokens: int = 512
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    use_mmap: bool = True
    parallel_slots: int = 1
    extra: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LoadResult:
    model: str
    load_s: float  # measured by the client around the whole load call
    server_load_s: float | None = None  # what the engine reports, where it does
    already_loaded: bool = False


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None  # None: unseeded; mlx_lm.server cannot batch a seeded request
    ignore_eos: bool = True  # generate exactly max_tokens where the engine allows it
    use_prompt_cache: bool = False  # False: every sample pays its own prefill
    chat: bool = False  # chat endpoint and template instead of raw completion
    thinking: bool | None = None  # Qwen3 thinking on/off; None leaves the model's default
    timeout_s: float = 600.0  # limit on the wait for any one token, not the whole request
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """Per-request engine options passed through as they are (e.g. Ollama's num_batch)."""


@dataclass(frozen=True)
class ServerTimings:
    """The engine's own account of a request; any field it does not report is None."""

    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None  # tokens served from a prompt cache
    prompt_s: float | None = None  # prefill time
    output_tokens: int | None = None
    decode_tokens: int | None = None  # tokens timed in decode_s, where that is not output_tokens
    decode_s: float | None = None
    load_s: float | None = None  # time spent loading the model inside this request
    total_s: float | None = None


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed answer."""

    text: str
    tokens: int  # generated tokens in this chunk (0 for a chunk that only carries stats)
    at_s: float  # perf_counter() when the chunk was produced or received
    finish_reason: str | None = None  # "length", "stop", ... on the last chunk
    timings: ServerTimings | None = None  # on the last chunk, where the server reports them
    reasoning: bool = False  # thinking tokens (Qwen3 <think>...</think>), not the answer


@dataclass(frozen=True)
class MemoryReport:
    rss_bytes: int | None = None  # resident memory of the serving process
    model_bytes: int | None = None  # weights, as the engine counts them
    kv_cache_bytes: int | None = None
    source: str = ""  # where the figures come from, e.g. "psutil rss of pid 1234"


@runtime_checkable
class Backend(Protocol):
    name: str

    async def info(self) -> BackendInfo: ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def load(self, model: str, settings: LoadSettings) -> LoadResult: ...

    async def unload(self, model: str) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Stream the answer. Raises a BackendError subclass on failure."""
        ...

    async def memory(self) -> MemoryReport: ...

    async def aclose(self) -> None: ...
