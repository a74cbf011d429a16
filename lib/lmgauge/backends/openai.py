"""Any OpenAI-compatible server: llama-server, llama-cpp-python's server, LM Studio,
mlx_lm.server, vLLM.

Streams ``/v1/completions`` (or ``/v1/chat/completions``) over SSE and asks for
``stream_options.include_usage``. llama.cpp's servers add a ``timings`` object to the
last event and accept ``ignore_eos``; servers that ignore that get a logit bias against
the Qwen end-of-turn tokens so every sample has the requested length. The events become
Chunks in openai_stream.py.

Only llama-server reads ``cache_prompt`` (on by default there); it is not sent to a server
known to be another. Which server this is, GET /props tells (asked by info() and load()):
only llama-server answers it with ``default_generation_settings`` (llama.cpp
tools/server/server-context.cpp). On llama-server, load() also checks /props against the
case: the model file it serves (in single-model mode it ignores a request's ``model``), the
context per slot and the number of slots.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator
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
from lmgauge.backends.openai_stream import StreamAssembler
from lmgauge.backends.openai_stream import parse_sse_data as parse_sse_data  # lmstudio's
from lmgauge.backends.streams import LineSplitter
from lmgauge.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    ContextTooLargeError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)

QWEN_EOS_TOKEN_IDS = (151643, 151645)  # <|endoftext|>, <|im_end|>
# llama-server in router mode (several models) answers an unknown one so, with HTTP 400
# (tools/server/server-models.cpp).
ROUTER_MODEL_NOT_FOUND = re.compile(r"model '.*' not found")


class OpenAIBackend:
    """Client of an OpenAI-compatible server at ``base_url`` (no trailing ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        eos_token_ids: tuple[int, ...] = QWEN_EOS_TOKEN_IDS,
        connect_timeout_s: float = 5.0,
        server_pid: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject httpx.MockTransport
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.eos_token_ids = eos_token_ids
        self.server_pid = server_pid
        self._llama_server: bool | None = None  # None until GET /props has answered
        self.props: dict[str, Any] | None = None  # llama-server's last GET /props answer
        headers = {}
        api_key = os.environ.get(api_key_env)  # read from the environment, never stored
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(connect=connect_timeout_s, read=600.0, write=30.0, pool=30.0),
            transport=transport,
        )
        # Streamed answers go through the lean client unless a transport is injected.
        self._lean: LeanClient | None = None
        if transport is None and LeanClient.serves(self.base_url):
            self._lean = LeanClient(
                self.base_url, headers=headers, connect_timeout_s=connect_timeout_s
            )

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._lean is not None:
            await self._lean.aclose()

    async def _get_json(self, path: str) -> Any:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc
        await self._raise_for_status(response, path)
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise ProtocolError(
                f"GET {self.base_url}{path} did not return JSON: {response.text[:120]!r}"
            ) from exc

    async def info(self) -> BackendInfo:
        response_models = await self._get_json("/v1/models")
        if isinstance(response_models, dict) and "data" not in response_models:
            raise ProtocolError(f"{self.base_url}/v1/models has no 'data' list")
        props = await self._props()
        version = str(props.get("build_info", "unknown")) if props else "unknown"
        return BackendInfo(self.name, version, self.base_url)

    async def _props(self) -> dict[str, Any] | None:
        """llama-server's GET /props, which also settles whether this is llama-server; None
        from any other server (404, or LM Studio's 200 "Unexpected endpoint") or on failure."""
        try:
            response = await self._client.get("/props")
        except httpx.HTTPError:
            return None  # no answer: ask again next time
        if response.status_code == 503:  # llama-server answers every route so while loading
            return None
        try:
            props = response.json() if response.status_code == 200 else None
        except ValueError:  # not JSON, or not UTF-8
            props = None
        props = props if isinstance(props, dict) else None
        self._llama_server = props is not None and "default_generation_settings" in props
        if self._llama_server:
            self.props = props
        return props

    async def list_models(self) -> list[ModelInfo]:
        data = await self._get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise ProtocolError(f"{self.base_url}/v1/models has no 'data' list")
        return [ModelInfo(str(m.get("id")), loaded=True) for m in models if isinstance(m, dict)]

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        """The OpenAI API cannot load a model: a one-token request makes the server ready.
        On llama-server, GET /props must show the model and the settings of the case."""
        props = await self._props()  # which server it is, found out outside the timing
        if self._llama_server and props is not None:
            check_llama_server_props(props, model, settings, self.base_url)
        start = time.perf_counter()
        async for _ in self.generate(GenerateRequest(model, "Hello", max_tokens=1)):
            pass
        return LoadResult(model, time.perf_counter() - start)

    async def unload(self, model: str) -> None:
        """The OpenAI API has no unload; the server keeps its model."""

    async def memory(self) -> MemoryReport:
        if self.server_pid is None:
            return MemoryReport(source="not reported by an OpenAI-compatible server")
        import psutil

        try:
            rss = psutil.Process(self.server_pid).memory_info().rss
        except psutil.Error as exc:
            raise BackendError(
                f"cannot read the memory of server pid {self.server_pid}: {exc}"
            ) from exc
        return MemoryReport(rss_bytes=rss, source=f"psutil rss of server pid {self.server_pid}")

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": request.temperature,
        }
        # Greedy decoding ignores a seed; and mlx_lm.server serves a seeded request alone,
        # never in a batch (mlx_lm/server.py _is_batchable), so only an asked-for seed goes.
        if request.seed is not None and request.temperature > 0:
            body["seed"] = request.seed
        # Only llama-server reads cache_prompt, and its default is on. Until info() or load()
        # has found out which server this is (no request is spent on that inside a timed
        # one), it goes too: the others ignore it.
        if self._llama_server is not False:
            body["cache_prompt"] = request.use_prompt_cache
        if request.chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
            if request.thinking is not None:  # Qwen3's template switch (llama-server, vLLM, mlx)
                body["chat_template_kwargs"] = {"enable_thinking": request.thinking}
        else:
            body["prompt"] = request.prompt
        if request.ignore_eos:
            body["ignore_eos"] = True
            body["logit_bias"] = {str(t): -100 for t in self.eos_token_ids}
        return body

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        path, chat = ("/v1/chat/completions" if request.chat else "/v1/completions"), request.chat
        body, timeout_s = self._body(request), request.timeout_s
        assembler = StreamAssembler(chat=chat)
        try:
            async with stream_post(
                self._client, self._lean, path, body, timeout_s=timeout_s
            ) as response:
                if response.status_code >= 400:
                    await self._raise_for_status(await response.as_httpx(), path, request.model)
                splitter = LineSplitter()  # not aiter_lines: it also cuts at U+0085
                async for data, at_s in response.pieces():  # stamped as they were read
                    for raw in splitter.feed(data):
                        if not raw:  # the blank line after each event
                            continue
                        try:
                            line = raw.decode("utf-8")
                        except UnicodeDecodeError as exc:
                            raise ProtocolError(f"SSE line is not UTF-8: {raw[:80]!r}") from exc
                        event = parse_sse_data(line)
                        if event is not None:
                            chunk = assembler.add(event, at_s)
                            if chunk is not None:
                                yield chunk
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc

    async def _raise_for_status(
        self, response: httpx.Response, path: str, model: str | None = None
    ) -> None:
        if response.status_code < 400:
            return
        body = (await response.aread()).decode("utf-8", "replace").strip()
        first_line = body.splitlines()[0][:200] if body else "(empty body)"
        url = f"{self.base_url}{path}"
        error = _error_object(body)
        if error.get("type") == "exceed_context_size_error":
            raise ContextTooLargeError(
                f"{url}: the prompt ({error.get('n_prompt_tokens', '?')} tokens) exceeds the "
                f"server's context of {error.get('n_ctx', '?')} tokens per slot (n_ctx): start "
                "llama-server with a larger --ctx-size (each of its --parallel slots gets "
                "ctx-size / parallel), or shorten the prompt"
            )
        router_miss = response.status_code == 400 and ROUTER_MODEL_NOT_FOUND.search(first_line)
        if (response.status_code == 404 or router_miss) and model is not None:
            raise ModelNotFoundError(
                f"{url} answered 404 for model {model!r}: {first_line}; "
                "check the name with GET /v1/models"
            )
        raise ServerError(
            f"{url} answered HTTP {response.status_code}: {first_line}", response.status_code
        )

    def _translate(self, exc: httpx.HTTPError, path: str) -> BackendError:
        url = f"{self.base_url}{path}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return BackendUnavailableError(
                f"cannot connect to {url}: {exc}; is the server running there? "
                "Start it, or point lmgauge at it with its base URL"
            )
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeoutError(
                f"{url} sent nothing within the timeout ({exc!r}); "
                "raise the request timeout or check the server"
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return ProtocolError(f"{url}: the connection broke mid-response ({exc})")
        return BackendError(f"{url}: {type(exc).__name__}: {exc}")


def _error_object(body: str) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body; empty when there is none."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _names(path: str) -> set[str]:
    """How a model file may be asked for: its file name, with and without ``.gguf``."""
    name = os.path.basename(path.rstrip("/")).lower()
    return {name, name.removesuffix(".gguf")} - {""}


def check_llama_server_props(
    props: dict[str, Any], model: str, settings: LoadSettings, base_url: str
) -> None:
    """GET /props of llama-server against the case: ModelNotFoundError when it serves another
    model file, ConfigError when its context per slot or its slot count differ from what
    ``settings`` asks for. A router (several models, ``model_path`` "none") is not checked:
    it picks the model by the request's name, and each model's server has its own slots."""
    served = props.get("model_path")
    if props.get("role") == "router" or served == "none":
        return
    if isinstance(served, str) and served:
        alias = props.get("model_alias")
        aliases = {alias.lower()} if isinstance(alias, str) else set()
        if not (_names(model) & _names(served)) and model.lower() not in aliases:
            raise ModelNotFoundError(
                f"{base_url} is llama-server serving {served}, not {model!r}; it serves one "
                "model and ignores a request's model name. Start it with --model <the case's "
                "file> (or --alias), or ask for the model it serves"
            )
    generation = props.get("default_generation_settings")
    n_ctx = generation.get("n_ctx") if isinstance(generation, dict) else None
    slots = props.get("total_slots")
    if isinstance(slots, int) and slots > 0 and slots != settings.parallel_slots:
        raise ConfigError(
            f"{base_url} is llama-server with {slots} slots (total_slots), but the case asks "
            f"for {settings.parallel_slots}: start it with --parallel "
            f"{settings.parallel_slots}, or set the case's parallel slots to {slots}"
        )
    if isinstance(n_ctx, int) and n_ctx > 0 and n_ctx != settings.context_tokens:
        total = settings.context_tokens * settings.parallel_slots
        raise ConfigError(
            f"{base_url} is llama-server with a context of {n_ctx} tokens per slot "
            f"(n_ctx), but the case asks for {settings.context_tokens}: start it with "
            f"--ctx-size {total} (the total over its {settings.parallel_slots} --parallel "
            "slots: each gets ctx-size / parallel)"
        )
