"""Ollama's native REST API (ollama/ollama docs/api.md).

Streams ``/api/generate`` (``raw``: no template) or ``/api/chat`` as NDJSON, one object
per line, one or more tokens per object (ollama_stream.py); the final ``done: true``
object carries eval_count and the timings (ns). No ignore_eos: measure.py flags a short
answer. Per server/routes.go and sched.go: a request whose runner options (num_ctx,
num_batch, num_thread, ...) differ from the loaded model's reloads it, so ``load``'s
options go with every request. The prompt cache is always on: Ollama sends its runner
(llama-server) ``cache_prompt: true`` whatever the request says (llm/llama_server.go
@fb30760 L1562, L2155), and prompt_eval_count includes the reused tokens while
prompt_eval_duration does not; lmgauge's prompts start with a nonce (workload.py), and
the server's prefill time is left out on /api/chat, whose template head is always reused.
Flash attention, KV cache type and parallel slots are server settings
(OLLAMA_FLASH_ATTENTION, OLLAMA_KV_CACHE_TYPE, OLLAMA_NUM_PARALLEL), not sent here.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from lmgauge.backends.base import (
    BackendInfo,
    Chunk,
    GenerateRequest,
    LoadResult,
    LoadSettings,
    MemoryReport,
    ModelInfo,
)
from lmgauge.backends.lean_http import LeanClient, stream_post
from lmgauge.backends.ollama_stream import (
    ChunkAssembler,
    NDJSONSplitter,
    canonical_name,
    json_count,
    json_dict,
    json_seconds,
    json_str,
)
from lmgauge.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)

UNLOAD_WAIT_S = 10.0  # how long /api/ps may go on listing a model after its unload
# Options.FromMap's type errors, which Ollama answers with HTTP 500 (api/types.go@fb30760
# L1026-1058; server/routes.go handleScheduleError, L3118).
OPTION_TYPE_ERROR = re.compile(r'option "([^"]+)" must be (?:of type|of an array)')


class OllamaBackend:
    """Client of an Ollama server at ``base_url``."""

    name = "ollama"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        *,
        connect_timeout_s: float = 5.0,
        keep_alive: str | int | None = None,  # None: the server's OLLAMA_KEEP_ALIVE
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.keep_alive = keep_alive
        self._connect_timeout_s = connect_timeout_s
        self._load_options: dict[str, dict[str, Any]] = {}  # by canonical model name
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(connect=connect_timeout_s, read=600.0, write=30.0, pool=30.0),
        )
        # Streamed answers go through the lean client unless a transport is injected.
        self._lean: LeanClient | None = None
        if transport is None and LeanClient.serves(self.base_url):
            self._lean = LeanClient(self.base_url, connect_timeout_s=connect_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._lean is not None:
            await self._lean.aclose()

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, model: str | None = None
    ) -> dict[str, Any]:
        if body is not None and self.keep_alive is not None:
            body.setdefault("keep_alive", self.keep_alive)
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc
        await self._raise_for_status(response, path, model)
        try:
            answer = response.json()
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise ProtocolError(
                f"{method} {self.base_url}{path} did not return a JSON object: "
                f"{response.text[:120]!r}"
            )
        return answer

    async def _models(self, path: str) -> dict[str, dict[str, Any]]:
        """/api/tags or /api/ps: the models by canonical name."""
        models = (await self._call("GET", path)).get("models")
        if not isinstance(models, list):
            raise ProtocolError(f"{self.base_url}{path} has no 'models' list")
        return {
            canonical_name(str(m.get("name") or m.get("model"))): m
            for m in models
            if isinstance(m, dict)
        }

    async def info(self) -> BackendInfo:
        version = json_str((await self._call("GET", "/api/version")).get("version"))
        if version is None:
            raise ProtocolError(f"{self.base_url}/api/version has no 'version'")
        return BackendInfo(self.name, f"ollama {version}", self.base_url)

    async def list_models(self) -> list[ModelInfo]:
        tags, running = await self._models("/api/tags"), await self._models("/api/ps")
        models = []
        untagged = {k: v for k, v in running.items() if k not in tags}  # e.g. remote models
        for key, entry in (tags | untagged).items():
            details = json_dict(entry.get("details"))
            loaded = running.get(key)
            models.append(
                ModelInfo(
                    str(entry.get("name") or key),
                    size_bytes=json_count(entry.get("size")) if key in tags else None,
                    digest=json_str(entry.get("digest")),
                    quantization=json_str(details.get("quantization_level")),
                    context_tokens=json_count(loaded.get("context_length")) if loaded else None,
                    loaded=loaded is not None,
                )
            )
        return models

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        """An empty prompt loads the model with these runner options (docs/api.md)."""
        threads = {} if settings.threads is None else {"num_thread": settings.threads}
        options: dict[str, Any] = dict(num_ctx=settings.context_tokens, use_mmap=settings.use_mmap)
        options.update(num_batch=settings.batch_tokens, **threads, **settings.extra)
        key = canonical_name(model)
        before = (await self._models("/api/ps")).get(key)
        same = before is not None and before.get("context_length") == settings.context_tokens
        same = same and self._load_options.get(key, options) == options  # else Ollama reloads
        body = {"model": model, "prompt": "", "stream": False, "options": options}
        start = time.perf_counter()
        answer = await self._call("POST", "/api/generate", body, model)
        load_s = time.perf_counter() - start
        self._load_options[key] = options
        server_load_s = json_seconds(answer.get("load_duration"))  # real servers send none
        return LoadResult(model, load_s, server_load_s, already_loaded=same)

    async def unload(self, model: str) -> None:
        """An empty prompt with keep_alive 0 unloads; wait until /api/ps no longer lists it."""
        body = {"model": model, "keep_alive": 0}
        await self._call("POST", "/api/generate", body, model)
        self._load_options.pop(canonical_name(model), None)
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while canonical_name(model) in await self._models("/api/ps"):
            if time.monotonic() > deadline:
                raise BackendTimeoutError(
                    f"{self.base_url}/api/ps still lists {model!r} {UNLOAD_WAIT_S:.0f} s after "
                    "it was asked to unload; check the server log (OLLAMA_DEBUG=1)"
                )
            await asyncio.sleep(0.05)

    async def memory(self) -> MemoryReport:
        """/api/ps ``size`` is a runner's whole footprint; the weights are /api/tags' size."""
        running = await self._models("/api/ps")
        source = f"{self.base_url}/api/ps"
        if not running:
            return MemoryReport(source=f"{source}: no model loaded")
        tags = await self._models("/api/tags")
        parts: list[str] = []
        weights: int | None = 0
        for key, entry in running.items():
            total, vram = json_count(entry.get("size")), json_count(entry.get("size_vram"))
            share = f"{100 * vram / total:.0f}%" if total and vram is not None else "unknown"
            parts.append(f"{key} {total} bytes with KV cache and buffers, {share} in GPU memory")
            size = json_count(json_dict(tags.get(key)).get("size"))
            weights = None if weights is None or size is None else weights + size
        return MemoryReport(
            model_bytes=weights, source=f"{source}: {'; '.join(parts)}; weights: /api/tags sizes"
        )

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        body = {"model": model, "input": list(texts)}
        rows = (await self._call("POST", "/api/embed", body, model)).get("embeddings")
        try:
            if not isinstance(rows, list) or len(rows) != len(texts):
                raise TypeError(f"not a list of {len(texts)} embeddings")
            return [[float(x) for x in row] for row in rows]
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{self.base_url}/api/embed: {exc}: {str(rows)[:120]}") from exc

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        seed = {} if request.seed is None else {"seed": request.seed}
        options = {
            **self._load_options.get(canonical_name(request.model), {}),
            "num_predict": request.max_tokens,
            "temperature": request.temperature,
            **seed,
            **request.options,
        }
        body: dict[str, Any] = {"model": request.model, "stream": True, "options": options}
        if request.chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body.update(prompt=request.prompt, raw=True)
        if request.thinking is not None:
            body["think"] = request.thinking
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        path = "/api/chat" if request.chat else "/api/generate"
        assembler = ChunkAssembler(chat=request.chat, max_tokens=request.max_tokens)
        splitter = NDJSONSplitter()
        body, timeout_s = self._body(request), request.timeout_s
        try:
            async with stream_post(
                self._client, self._lean, path, body, timeout_s=timeout_s
            ) as response:
                if response.status_code >= 400:
                    await self._raise_for_status(await response.as_httpx(), path, request.model)
                async for data, at_s in response.pieces():  # stamped as they were read
                    for obj in splitter.objects(data):
                        for chunk in assembler.add(obj, at_s):
                            yield chunk
                for obj in splitter.objects(b"\n"):  # a last line with no newline
                    for chunk in assembler.add(obj, time.perf_counter()):
                        yield chunk
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc
        assembler.finish()

    async def _raise_for_status(
        self, response: httpx.Response, path: str, model: str | None = None
    ) -> None:
        status = response.status_code
        if status < 400:
            return
        body = (await response.aread()).decode("utf-8", "replace").strip()
        try:
            message = str(json.loads(body)["error"])  # Ollama's {"error": "..."}
        except (ValueError, RecursionError, LookupError, TypeError):
            message = body
        first_line = message.splitlines()[0][:200] if message.strip() else "(empty body)"
        url = f"{self.base_url}{path}"
        if status == 404 and model is not None:
            raise ModelNotFoundError(
                f"{url} has no model {model!r} ({first_line}); run `ollama pull {model}`"
            )
        if status == 503:
            fix = "Ollama's queue is full (OLLAMA_MAX_QUEUE, default 512): send fewer at once"
            raise ServerError(f"{url} answered 503 ({first_line}); {fix}", 503)
        wrong_type = OPTION_TYPE_ERROR.search(first_line) if status == 500 else None
        if wrong_type is not None:
            name = wrong_type.group(1)
            example = ' (a list of strings: stop = ["</s>"])' if name == "stop" else ""
            raise ConfigError(
                f"{url} refused the option {name!r} ({first_line}): fix its value in the "
                f"config's [load] or [options]{example}; `lmgauge lint-config` checks types"
            )
        raise ServerError(f"{url} answered HTTP {status}: {first_line}", status)

    def _translate(self, exc: httpx.HTTPError, path: str) -> BackendError:
        url = f"{self.base_url}{path}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            fix = "start it, or give lmgauge the address it listens on (OLLAMA_HOST)"
            return BackendUnavailableError(
                f"cannot connect to {url}: {exc}; is `ollama serve` running? {fix}"
            )
        if isinstance(exc, httpx.TimeoutException):
            fix = "raise the request timeout or check the server"
            return BackendTimeoutError(f"{url} sent nothing within the timeout ({exc!r}); {fix}")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return ProtocolError(f"{url}: the connection broke mid-response ({exc})")
        return BackendError(f"{url}: {type(exc).__name__}: {exc}")
