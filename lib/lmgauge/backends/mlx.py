"""In-process mlx-lm: the MLX engine behind mlx_lm.server and LM Studio's MLX models.

``mlx_lm.load`` of a model folder (or a Hugging Face repo id), ``mlx_lm.stream_generate``
per request, all on one worker thread (MLX streams are per thread); each token is
timestamped there and reaches the event loop through an asyncio queue. One sequence at a
time. Settings: ``kv_cache_type`` is mlx-lm's KV-cache quantization (f16: none, the
model's dtype; q8_0: 8 bits; q4_0: 4 bits; group 64, from the first token as llama.cpp
does); ``batch_tokens`` the prefill step; ``context_tokens`` bounds prompt + output;
threads, mmap and flash attention have no MLX equivalent. No prompt cache. On Linux MLX
runs on the CPU (``mlx[cpu]``): a smoke test of mlx-lm, not a Mac's speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
from lmgauge.errors import (
    BackendError,
    ConfigError,
    ContextTooLargeError,
    ModelFileError,
    ModelNotFoundError,
    OutOfMemoryError,
)
from lmgauge.synthetic_mlx import SYNTHETIC_MARKER, import_mlx

KV_CACHE_BITS: dict[str, int | None] = {"f16": None, "q8_0": 8, "q4_0": 4}
KV_GROUP_SIZE = 64
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class _Loaded:
    name: str  # as given to load()
    path: Path  # the local folder
    settings: LoadSettings
    model: Any
    tokenizer: Any  # mlx_lm's TokenizerWrapper
    config: dict[str, Any]
    model_bytes: int
    kv_cache_bytes: int | None = None  # allocated by the last request
    peak_bytes: int | None = None  # MLX peak memory during the last request


def _load(model: str, settings: LoadSettings) -> _Loaded:
    """Runs in the worker thread: mlx_lm.load (which fetches a repo id), then the checks."""
    _, mlx_lm = import_mlx()
    from mlx.utils import tree_flatten

    path = Path(model).expanduser()
    if not path.exists() and not _REPO_ID.match(model):
        raise ModelNotFoundError(
            f"no MLX model folder at {path}; give an mlx-lm folder, a Hugging Face repo id, or "
            "build one with lmgauge.synthetic_mlx.synthetic_mlx_model(label, quantization)"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise ModelFileError(f"{path} has no config.json: it is not an mlx-lm model folder")
    try:
        loaded_model, tokenizer, config = mlx_lm.load(str(path), return_config=True)
    except Exception as exc:  # ValueError, KeyError, RuntimeError, OSError, hub errors...
        if not path.exists():  # a repo id: offline, no such repo, gated
            raise ModelNotFoundError(
                f"{model!r} is no local folder and could not be fetched from Hugging Face "
                f"({type(exc).__name__}: {exc}); check the name, or download it first"
            ) from exc
        raise ModelFileError(
            f"mlx-lm could not load {path} ({type(exc).__name__}: {exc}); the folder is "
            "incomplete, corrupt, or of an architecture this mlx-lm does not know: "
            "regenerate or re-download it"
        ) from exc
    trained = config.get("max_position_embeddings")
    if isinstance(trained, int) and settings.context_tokens > trained:
        raise ContextTooLargeError(
            f"{path.name} supports at most {trained} tokens of context, "
            f"{settings.context_tokens} asked; load it with a context of {trained} or less"
        )
    arrays = cast("list[tuple[str, Any]]", tree_flatten(loaded_model.parameters()))
    model_bytes = sum(int(a.nbytes) for _, a in arrays)
    return _Loaded(model, path, settings, loaded_model, tokenizer, config, model_bytes)


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


class MLXBackend:
    name = "mlx"

    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = models_dir
        self._loaded: _Loaded | None = None
        self._lock = asyncio.Lock()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    def _submit(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        if self._worker is None:  # one thread for all MLX work: MLX streams are per thread
            self._worker = concurrent.futures.ThreadPoolExecutor(1, "lmgauge-mlx")
        return asyncio.wrap_future(self._worker.submit(fn, *args))

    async def info(self) -> BackendInfo:
        mx, mlx_lm = import_mlx()
        device = "Metal" if mx.metal.is_available() else "CPU only, no Metal"
        synthetic = self._loaded is not None and SYNTHETIC_MARKER in self._loaded.config
        version = f"mlx-lm {mlx_lm.__version__}, mlx {mx.__version__} ({device})"
        return BackendInfo(self.name, version, "in-process", synthetic_weights=synthetic)

    async def list_models(self) -> list[ModelInfo]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        loaded = self._loaded.path if self._loaded else None
        folders = sorted(config.parent for config in self.models_dir.rglob("config.json"))
        return [ModelInfo(str(d), _weight_bytes(d), loaded=d == loaded) for d in folders]

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        if self._loaded and self._loaded.name == model and self._loaded.settings == settings:
            return LoadResult(model, 0.0, already_loaded=True)
        if settings.kv_cache_type.lower() not in KV_CACHE_BITS:
            raise ConfigError(
                f"unknown KV cache type {settings.kv_cache_type!r}; use one of: "
                f"{', '.join(KV_CACHE_BITS)} (mlx-lm quantizes its cache to 8 or 4 bits)"
            )
        start = time.perf_counter()
        await self.unload(model)
        self._loaded = await self._submit(_load, model, settings)
        return LoadResult(model, time.perf_counter() - start)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as generate() feeds a raw completion (no special tokens added)."""
        if self._loaded is None:
            raise ModelNotFoundError("no model is loaded; load one before counting tokens")
        return len(self._loaded.tokenizer.encode(text, add_special_tokens=False))

    async def unload(self, model: str) -> None:
        async with self._lock:
            if self._loaded is not None:
                self._loaded = None
                gc.collect()
                import_mlx()[0].clear_cache()  # give MLX's buffer pool back to the system

    async def memory(self) -> MemoryReport:
        rss = psutil.Process().memory_info().rss
        if self._loaded is None:
            return MemoryReport(rss_bytes=rss, source="psutil rss of this process; no model")
        mx, peak = import_mlx()[0], self._loaded.peak_bytes
        return MemoryReport(
            rss_bytes=rss,
            model_bytes=self._loaded.model_bytes,
            kv_cache_bytes=self._loaded.kv_cache_bytes,
            source="psutil rss of this process; weights: nbytes of the loaded arrays; KV: the "
            f"last request's cache; mlx active {mx.get_active_memory()} B, cache "
            f"{mx.get_cache_memory()} B, peak during the last request {peak} B (reset at start)",
        )

    @property
    def last_request_peak_bytes(self) -> int | None:
        """MLX peak memory during the last request (reset at its start)."""
        return self._loaded.peak_bytes if self._loaded is not None else None

    async def aclose(self) -> None:
        """Always call it: MLX may abort the process at exit unless the thread that used it
        frees its streams first (``mx.clear_streams()``, ml-explore/mlx#4327)."""
        await self.unload("")
        if self._worker is not None:
            await self._submit(import_mlx()[0].clear_streams)
            self._worker.shutdown(wait=True)  # idle: unload waited for any generation
            self._worker = None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        async with self._lock:
            loaded = self._loaded
            if loaded is None or request.model not in (loaded.name, str(loaded.path)):
                raise ModelNotFoundError(
                    f"model {request.model!r} is not loaded; load it first "
                    f"(loaded: {loaded.name if loaded else 'nothing'})"
                )
            chunks = stream_from_thread(
                self._submit,
                lambda stop: _generate_tokens(loaded, request, stop),
                timeout_s=request.timeout_s,
                engine="mlx-lm",
                translate=_translate,
            )
            async for chunk in chunks:
                yield chunk


def _prompt_tokens(loaded: _Loaded, request: GenerateRequest) -> list[int]:
    tokenizer = loaded.tokenizer
    text = request.prompt
    if request.chat:
        kwargs = {} if request.thinking is None else {"enable_thinking": request.thinking}
        messages = [{"role": "user", "content": request.prompt}]
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
    tokens: list[int] = tokenizer.encode(text, add_special_tokens=False)
    if not tokens:  # mlx-lm cannot start from nothing
        raise ConfigError("the prompt is empty: give at least one token")
    if len(tokens) + request.max_tokens > loaded.settings.context_tokens:
        raise ContextTooLargeError(
            f"{len(tokens)} prompt tokens + {request.max_tokens} to generate exceed the loaded "
            f"context of {loaded.settings.context_tokens} tokens; load with a larger context "
            "or shorten the request"
        )
    return tokens


def _generate_tokens(
    loaded: _Loaded, request: GenerateRequest, stop: threading.Event
) -> Iterator[Chunk]:
    """Runs in the worker thread: one Chunk per token mlx-lm yields, then its timings."""
    mx, mlx_lm = import_mlx()
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    tokenizer = loaded.tokenizer
    tokens = _prompt_tokens(loaded, request)
    processors = None
    if request.ignore_eos:  # mlx-lm has no ignore_eos: EOS ids get -inf, so never sampled
        processors = make_logits_processors({t: float("-inf") for t in tokenizer.eos_token_ids})
    if request.temperature > 0 and request.seed is not None:
        mx.random.seed(request.seed)
    # Single-token markers (Qwen's <think>, </think>); a template may open the block itself.
    think_start, think_end = _one(tokenizer.think_start_tokens), _one(tokenizer.think_end_tokens)
    last_start = max((i for i, t in enumerate(tokens) if t == think_start), default=-1)
    thinking = last_start > max((i for i, t in enumerate(tokens) if t == think_end), default=-1)
    cache = make_prompt_cache(loaded.model)  # ours, so its size can be read afterwards
    mx.reset_peak_memory()
    kwargs = dict(
        sampler=make_sampler(temp=request.temperature),
        logits_processors=processors,
        prompt_cache=cache,
        prefill_step_size=loaded.settings.batch_tokens,
        kv_bits=KV_CACHE_BITS[loaded.settings.kv_cache_type.lower()],
        kv_group_size=KV_GROUP_SIZE,
        quantized_kv_start=0,
    )
    responses = mlx_lm.stream_generate(
        loaded.model, tokenizer, tokens, request.max_tokens, **kwargs
    )
    produced, last = 0, None
    with contextlib.closing(responses):
        for last in responses:
            at_s = time.perf_counter()
            if last.finish_reason == "stop":  # this response is the EOS token itself
                yield Chunk(last.text, 0, at_s, finish_reason="stop")
                break
            produced += 1
            reasoning = thinking or last.token == think_start
            thinking = reasoning and last.token != think_end
            yield Chunk(last.text, 1, at_s, finish_reason=last.finish_reason, reasoning=reasoning)
            if stop.is_set():
                break
    loaded.peak_bytes = int(mx.get_peak_memory())
    loaded.kv_cache_bytes = sum(int(c.nbytes) for c in cache)
    if last is None:
        return
    # mlx-lm's rates (generate.py, stream_generate): prompt_tps = prompt tokens / the time
    # from the first call into the generator to the first token out (prefill plus sampling
    # the first token: the engine's TTFT). generation_tps = generation_tokens / the time
    # since that first token, which covers generation_tokens - 1 tokens: mlx-lm's figure
    # reads n/(n-1) high (3% at 32 tokens). We keep the time and the tokens it really
    # covers, so decode_tokens / decode_s is comparable with the client's inter-token rate.
    decode_tokens = last.generation_tokens - 1
    yield Chunk(
        "",
        0,
        time.perf_counter(),
        timings=ServerTimings(
            prompt_tokens=last.prompt_tokens,
            cached_prompt_tokens=0,
            prompt_s=last.prompt_tokens / last.prompt_tps,
            output_tokens=produced,
            decode_tokens=decode_tokens,
            decode_s=last.generation_tokens / last.generation_tps if decode_tokens else None,
        ),
    )


def _one(ids: tuple[int, ...] | None) -> int | None:
    return ids[0] if ids and len(ids) == 1 else None


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, BackendError | ConfigError):
        return exc
    if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
        return OutOfMemoryError(f"MLX could not allocate memory ({exc}); use a smaller model")
    return BackendError(f"mlx-lm failed: {type(exc).__name__}: {exc}")
