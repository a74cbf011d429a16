"""Any OpenAI-compatible server: llama-server, llama-cpp-python's server, LM Studio,
mlx_lm.server, vLLM.

Streams ``/v1/completions`` (or ``/v1/chat/completions``) over SSE and asks for
``stream_options.include_usage``. llama.cpp's servers add a ``timings`` object to the
last event and accept ``ignore_eos``; servers that ignore that get a logit bias against
the Qwen end-of-turn tokens so every sample has the requested length.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterable
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
    ServerTimings,
)
from lmgauge.backends.lean_http import LeanClient, stream_post
from lmgauge.backends.streams import LineSplitter
from lmgauge.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)

QWEN_EOS_TOKEN_IDS = (151643, 151645)  # <|endoftext|>, <|im_end|>


def parse_sse_data(line: str) -> dict[str, Any] | None:
    """The JSON of one SSE ``data:`` line; None for comments, blank lines and ``[DONE]``.

    Raises ProtocolError, quoting the line, for anything else.
    """
    line = line.rstrip("\r")
    if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
        return None
    if not line.startswith("data:"):
        raise ProtocolError(f"malformed SSE line (expected 'data: ...'): {line[:120]!r}")
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"SSE data is not JSON ({exc.msg}): {payload[:120]!r}") from exc
    if not isinstance(event, dict):
        raise ProtocolError(f"SSE data is not a JSON object: {payload[:120]!r}")
    if "error" in event:
        raise ServerError(f"server reported an error mid-stream: {event['error']}", 500)
    return event


def timings_from_event(event: dict[str, Any]) -> ServerTimings | None:
    """Server timings from llama.cpp's ``timings`` and the OpenAI ``usage`` object."""
    timings = event.get("timings")
    usage = event.get("usage")
    if not isinstance(timings, dict) and not isinstance(usage, dict):
        return None
    t = timings if isinstance(timings, dict) else {}
    u = usage if isinstance(usage, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = t.get("cache_n")
    if cached is None and isinstance(details, dict):
        cached = details.get("cached_tokens")
    prompt_ms, predicted_ms = t.get("prompt_ms"), t.get("predicted_ms")
    return ServerTimings(
        prompt_tokens=t.get("prompt_n", u.get("prompt_tokens")),
        cached_prompt_tokens=cached,
        prompt_s=prompt_ms / 1000 if isinstance(prompt_ms, int | float) else None,
        output_tokens=t.get("predicted_n", u.get("completion_tokens")),
        decode_s=predicted_ms / 1000 if isinstance(predicted_ms, int | float) else None,
    )


def chunk_from_event(event: dict[str, Any], at_s: float, *, chat: bool) -> Chunk | None:
    """The Chunk of one parsed SSE event (one event = one token); None for an empty one."""
    choices = event.get("choices")
    timings = timings_from_event(event) if "usage" in event or "timings" in event else None
    if not choices:
        return Chunk("", 0, at_s, timings=timings) if timings is not None else None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ProtocolError(f"a choice is not an object: {str(choice)[:120]!r}")
    reasoning = False
    if chat:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        # Thinking arrives as reasoning_content (llama-server, vLLM) or reasoning (LM Studio).
        thought = next((k for k in ("reasoning_content", "reasoning") if k in delta), None)
        reasoning = thought is not None and not content
        text = content or (delta.get(thought) if thought else None) or ""
        has_token = "content" in delta or thought is not None
    else:
        text = choice.get("text") or ""
        has_token = "text" in choice
    finish = choice.get("finish_reason")
    # A token may decode to no text (half a UTF-8 character); it is still a token.
    tokens = 1 if has_token and (text or finish is None) else 0
    return Chunk(text, tokens, at_s, finish_reason=finish, timings=timings, reasoning=reasoning)


def chunks_from_events(
    events: Iterable[tuple[dict[str, Any], float]], *, chat: bool
) -> Iterable[Chunk]:
    """Turn parsed SSE events (with their arrival times) into Chunks; one event = one token."""
    for event, at_s in events:
        chunk = chunk_from_event(event, at_s, chat=chat)
        if chunk is not None:
            yield chunk


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
        version = "unknown"
        if isinstance(response_models, dict) and "data" not in response_models:
            raise ProtocolError(f"{self.base_url}/v1/models has no 'data' list")
        try:
            props = await self._client.get("/props")  # llama-server's build info
            if props.status_code == 200:
                version = str(props.json().get("build_info", version))
        except (httpx.HTTPError, json.JSONDecodeError, AttributeError):
            pass
        return BackendInfo(self.name, version, self.base_url)

    async def list_models(self) -> list[ModelInfo]:
        data = await self._get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise ProtocolError(f"{self.base_url}/v1/models has no 'data' list")
        return [ModelInfo(str(m.get("id")), loaded=True) for m in models if isinstance(m, dict)]

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        """The OpenAI API cannot load a model: a one-token request makes the server ready."""
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
            "seed": request.seed,
            "cache_prompt": request.use_prompt_cache,
        }
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
                            chunk = chunk_from_event(event, at_s, chat=chat)
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
        if response.status_code == 404 and model is not None:
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
