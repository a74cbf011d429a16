"""In-process llama.cpp through llama-cpp-python: the embedded engine.

Runs where no server does (Linux CI, a laptop without Ollama), on any GGUF file,
synthetic ones included. Generation runs in a worker thread (llama.cpp releases the
GIL); each token is timestamped in that thread the moment it is sampled. llama.cpp's
own perf counters give the engine-side prefill and decode timings.

One model, one sequence at a time, like llama-server with a single slot: concurrent
``generate`` calls wait for each other.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lmgauge.backends.base import (
    BackendInfo,
    Chunk,
    GenerateRequest,
    LoadResult,
    LoadSettings,
    MemoryReport,
    ModelInfo,
    ServerTimings,
)
from lmgauge.backends.threaded import stream_from_thread
from lmgauge.catalog import kv_cache_bits
from lmgauge.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ContextTooLargeError,
    ModelFileError,
    ModelNotFoundError,
)

KV_CACHE_GGML_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # GGML_TYPE_* of llama.cpp
CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
SYNTHETIC_DESCRIPTION_PREFIX = "lmgauge synthetic weights"  # written by lmgauge.synthetic


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailableError(
            "the embedded engine needs llama-cpp-python: install it with "
            "`pip install -e '.[llamacpp]'` (it compiles llama.cpp: ~6 min on 2 cores)"
        ) from exc
    return llama_cpp


def read_gguf_header(path: Path) -> dict[str, str]:
    """The GGUF metadata of ``path`` (values as strings), without loading its weights.

    llama.cpp's own vocab-only load reads it in ~0.2 s; gguf's GGUFReader takes seconds
    parsing a 152K-token vocabulary in Python.
    """
    if not path.is_file():
        raise ModelNotFoundError(
            f"no model file at {path}; give the path of a GGUF file, or build a synthetic one "
            "with lmgauge.synthetic.synthetic_gguf(label, quantization)"
        )
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ModelFileError(
                f"{path} is not a GGUF file (no GGUF magic); regenerate it or "
                "point at a .gguf model"
            )
    llama_cpp = _import_llama_cpp()
    from llama_cpp._internals import LlamaModel  # the one way to read metadata without a context

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        model = LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError as exc:
        raise ModelFileError(
            f"{path} is a corrupt or unsupported GGUF file ({exc}); delete it "
            "and regenerate or re-download it"
        ) from exc
    try:
        return dict(model.metadata())
    finally:
        model.close()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it untyped


def cached_gguf_header(path: Path) -> dict[str, str]:
    """read_gguf_header, read once per version of the file (its size and mtime).

    The paired gate loads the model again at every switch of arms (24 times a case):
    the header read costs ~0.25 s of each load on the 0.6B file, the same bytes every time.
    """
    try:
        stat = path.stat()
    except OSError:
        return read_gguf_header(path)  # raises the error that names the fix
    return dict(_gguf_header_of_version(path, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _gguf_header_of_version(path: Path, size: int, mtime_ns: int) -> dict[str, str]:
    return read_gguf_header(path)


@dataclass
class _Loaded:
    path: Path
    settings: LoadSettings
    llm: Any
    header: dict[str, str]

    def _int(self, key: str) -> int | None:
        value = self.header.get(f"{self.header.get('general.architecture')}.{key}")
        return int(value) if value is not None and value.isdigit() else None

    def kv_cache_bytes(self) -> int | None:
        layers = self._int("block_count")
        kv_heads = self._int("attention.head_count_kv")
        head_dim = self._int("attention.key_length")
        if not (layers and kv_heads and head_dim):
            return None
        per_value = kv_cache_bits(self.settings.kv_cache_type) / 8
        context_tokens: int = self.llm.n_ctx()
        return round(2 * layers * kv_heads * head_dim * per_value * context_tokens)


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = models_dir
        self._loaded: _Loaded | None = None
        self._lock = asyncio.Lock()
        # One long-lived thread drives the llama.cpp context, as llama-server does.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmgauge-llamacpp")

    async def info(self) -> BackendInfo:
        llama_cpp = _import_llama_cpp()
        synthetic = False
        if self._loaded is not None:
            description = self._loaded.header.get("general.description", "")
            synthetic = description.startswith(SYNTHETIC_DESCRIPTION_PREFIX)
        return BackendInfo(
            self.name,
            f"llama-cpp-python {llama_cpp.__version__}",
            "in-process",
            synthetic_weights=synthetic,
        )

    async def list_models(self) -> list[ModelInfo]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        loaded = self._loaded.path if self._loaded else None
        return [
            ModelInfo(str(p), size_bytes=p.stat().st_size, loaded=p == loaded)
            for p in sorted(self.models_dir.rglob("*.gguf"))
        ]

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        path = Path(model)
        if (
            self._loaded is not None
            and self._loaded.path == path
            and self._loaded.settings == settings
        ):
            return LoadResult(model, 0.0, already_loaded=True)
        kv_type = settings.kv_cache_type.lower()
        if kv_type not in KV_CACHE_GGML_TYPES:
            raise ConfigError(
                f"unknown KV cache type {settings.kv_cache_type!r}; use one of: "
                f"{', '.join(KV_CACHE_GGML_TYPES)}"
            )
        start = time.perf_counter()
        header = await asyncio.to_thread(cached_gguf_header, path)
        arch = header.get("general.architecture")
        trained_text = header.get(f"{arch}.context_length", "")
        trained = int(trained_text) if trained_text.isdigit() else None
        if trained is not None and settings.context_tokens > trained:
            raise ContextTooLargeError(
                f"{path.name} supports at most {trained} tokens of context, "
                f"{settings.context_tokens} asked; load it with a context of {trained} or less"
            )
        await self.unload(model)
        llama_cpp = _import_llama_cpp()
        threads = settings.threads or os.cpu_count() or 1
        kwargs = dict(
            model_path=str(path),
            n_ctx=settings.context_tokens,
            n_batch=settings.batch_tokens,
            n_ubatch=settings.batch_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=bool(settings.flash_attention),
            type_k=KV_CACHE_GGML_TYPES[kv_type],
            type_v=KV_CACHE_GGML_TYPES[kv_type],
            use_mmap=settings.use_mmap,
            verbose=False,
            **settings.extra,
        )
        try:
            llm = await asyncio.to_thread(llama_cpp.Llama, **kwargs)
        except ValueError as exc:
            raise ModelFileError(
                f"llama.cpp could not load {path}: {exc}; the file may be "
                "truncated or of an architecture this llama.cpp does not know: "
                "regenerate or re-download it"
            ) from exc
        self._loaded = _Loaded(path, settings, llm, header)
        return LoadResult(model, time.perf_counter() - start)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as generate() will feed them (raw completion, no BOS)."""
        if self._loaded is None:
            raise ModelNotFoundError("no model is loaded; load one before counting tokens")
        return len(self._loaded.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def unload(self, model: str) -> None:
        async with self._lock:
            if self._loaded is not None:
                self._loaded.llm.close()
                self._loaded = None

    async def memory(self) -> MemoryReport:
        rss = psutil.Process().memory_info().rss
        if self._loaded is None:
            return MemoryReport(rss_bytes=rss, source="psutil rss of this process; no model")
        llama_cpp = _import_llama_cpp()
        return MemoryReport(
            rss_bytes=rss,
            model_bytes=int(llama_cpp.llama_model_size(self._loaded.llm.model)),
            kv_cache_bytes=self._loaded.kv_cache_bytes(),
            source="psutil rss of this process; llama_model_size; KV from the GGUF shape x n_ctx",
        )

    async def aclose(self) -> None:
        await self.unload("")
        self._worker.shutdown(wait=True)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        async with self._lock:
            loaded = self._loaded
            if loaded is None or Path(request.model) != loaded.path:
                raise ModelNotFoundError(
                    f"model {request.model!r} is not loaded; load it first "
                    f"(loaded: {loaded.path if loaded else 'nothing'})"
                )
            loop = asyncio.get_running_loop()
            chunks = stream_from_thread(
                lambda work: loop.run_in_executor(self._worker, work),
                lambda stop: _generate_tokens(loaded, request, stop),
                timeout_s=request.timeout_s,
                engine="llama.cpp",
                translate=_translate,
            )
            async for chunk in chunks:
                yield chunk


def _generate_tokens(
    loaded: _Loaded, request: GenerateRequest, stop: threading.Event
) -> Iterator[Chunk]:
    """Runs in the worker thread: prefill, then one Chunk per sampled token, then stats."""
    llama_cpp = _import_llama_cpp()
    llm = loaded.llm
    text = CHATML.format(prompt=request.prompt) if request.chat else request.prompt
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=request.chat)
    if len(tokens) + request.max_tokens > llm.n_ctx():
        raise ContextTooLargeError(
            f"{len(tokens)} prompt tokens + {request.max_tokens} to generate exceed the loaded "
            f"context of {llm.n_ctx()} tokens; load with a larger context or shorten the request"
        )
    eos_ids = {llm.token_eos(), *(t for t in (151643, 151645) if t < llm.n_vocab())}
    processors = None
    if request.ignore_eos:

        def ban_eos(_input_ids: Any, scores: Any) -> Any:
            for token in eos_ids:
                scores[token] = -float("inf")
            return scores

        processors = llama_cpp.LogitsProcessorList([ban_eos])
    if not request.use_prompt_cache:
        llm.reset()  # forget the previous prompt: every sample pays its own prefill
    llama_cpp.llama_perf_context_reset(llm.ctx)
    produced = 0
    finish = None
    for token in llm.generate(
        tokens,
        temp=request.temperature,
        top_k=40,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        logits_processor=processors,
    ):
        at_s = time.perf_counter()
        if token in eos_ids:
            finish = "stop"
            yield Chunk("", 0, at_s, finish_reason=finish)
            break
        produced += 1
        finish = "length" if produced >= request.max_tokens else None
        piece = llm.detokenize([token]).decode("utf-8", "replace")
        yield Chunk(piece, 1, at_s, finish_reason=finish)
        if finish is not None or stop.is_set():
            break
    perf = llama_cpp.llama_perf_context(llm.ctx)
    yield Chunk(
        "",
        0,
        time.perf_counter(),
        timings=ServerTimings(
            prompt_tokens=len(tokens),
            prompt_s=perf.t_p_eval_ms / 1000,
            cached_prompt_tokens=len(tokens) - perf.n_p_eval if perf.n_p_eval < len(tokens) else 0,
            output_tokens=produced,
            decode_tokens=perf.n_eval,
            decode_s=perf.t_eval_ms / 1000,
        ),
    )


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, BackendError | ConfigError):
        return exc
    if isinstance(exc, RuntimeError) and "llama_decode" in str(exc):
        return BackendError(
            f"llama.cpp failed to decode ({exc}); the context may be full: "
            "load with a larger context"
        )
    return BackendError(f"llama.cpp failed: {type(exc).__name__}: {exc}")
