"""LM Studio through its own REST API (stats, load, unload), over its OpenAI-compatible one.

``generate`` streams ``POST /api/v1/chat`` (LM Studio >= 0.4), the only LM Studio stream that
ends with LM Studio's ``stats`` (v0 and /v1 streams carry none: lmstudio-bug-tracker #676,
#547). It is chat-only, so a raw-completion prompt goes in as the chat input too; one delta
event is one token; there is no ignore_eos (measure.py marks early stops). Older LM Studio:
OpenAI-compatible endpoints (no timings), and the ``lms`` CLI for load and unload. An unknown
endpoint answers HTTP 200 ``{"error": "Unexpected endpoint or method. ..."}`` (issue #618).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Mapping
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
from lmgauge.backends.lean_http import stream_post
from lmgauge.backends.lmstudio_load import (
    CLI_LOAD_FLAGS,
    LMStudioLoadResult,
    asked_settings,
    is_entry_of,
    not_applied,
    rest_load_body,
    wrong_variant,
)
from lmgauge.backends.openai import OpenAIBackend, parse_sse_data
from lmgauge.backends.streams import LineSplitter
from lmgauge.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)


class _EndpointMissing(Exception):
    """This LM Studio has no such endpoint (older than the API it belongs to)."""


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def timings_from_stats(stats: Mapping[str, Any], load_s: float | None = None) -> ServerTimings:
    """ServerTimings from ``/api/v1/chat`` stats (seconds; LM Studio's TTFT includes prefill)."""
    output, rate = _int(stats.get("total_output_tokens")), _num(stats.get("tokens_per_second"))
    loaded = _num(stats.get("model_load_time_seconds"))
    return ServerTimings(
        prompt_tokens=_int(stats.get("input_tokens")),
        prompt_s=_num(stats.get("time_to_first_token_seconds")),
        output_tokens=output,
        decode_s=output / rate if output and rate else None,
        load_s=loaded if loaded is not None else load_s,
    )


def _missing(status: int, data: object) -> bool:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str) and error.startswith("Unexpected endpoint or method"):
        return True
    return status == 404 and "model_not_found" not in json.dumps(data)


def _elapsed_s(text: str) -> float | None:
    """Seconds from lms's "Model loaded successfully in 1m 2.50s." (formatElapsedTime)."""
    found = re.search(r"loaded successfully.*? in ((?:\d+h )?(?:\d+m )?[\d.]+m?s)\.", text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", found.group(1)) if found else []
    return sum(float(value) * units[unit] for value, unit in parts) if found else None


class LMStudioBackend(OpenAIBackend):
    """Client of an LM Studio server; the API token is read from ``LM_API_TOKEN``.

    Other keyword arguments are OpenAIBackend's; ``transport`` replaces httpx's (for tests).
    """

    name = "lmstudio"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:1234",
        *,
        api_key_env: str = "LM_API_TOKEN",
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, api_key_env=api_key_env, **kwargs)
        if transport is not None:  # the parent's client never connected: nothing to close
            old = self._client
            self._client = httpx.AsyncClient(
                base_url=old.base_url, headers=old.headers, timeout=old.timeout, transport=transport
            )
            self._lean = None  # every call goes through the injected transport
        self._native_chat = True  # until /api/v1/chat turns out to be missing

    def __repr__(self) -> str:
        return f"LMStudioBackend({self.base_url!r})"  # never the headers: they hold the token

    async def _check(self, response: httpx.Response, path: str, model: str | None) -> Any:
        """The JSON body; raises _EndpointMissing, or the error of an error status."""
        try:
            data = json.loads(await response.aread())
        except json.JSONDecodeError:
            data = None
        if _missing(response.status_code, data):
            raise _EndpointMissing(path)
        await self._raise_for_status(response, path, model)
        return data

    async def _native(
        self, method: str, path: str, body: dict[str, Any] | None = None, model: str | None = None
    ) -> Any:
        """The JSON answer of one of LM Studio's own endpoints."""
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc
        data = await self._check(response, path, model)
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.base_url}{path} answered {response.text[:120]!r}")
        return data

    async def _v1_models(self) -> list[dict[str, Any]] | None:
        """/api/v1/models (every model, with its loaded instances); None before LM Studio 0.4."""
        try:
            models = (await self._native("GET", "/api/v1/models")).get("models")
        except _EndpointMissing:
            return None
        if not isinstance(models, list):
            raise ProtocolError(f"{self.base_url}/api/v1/models has no 'models' list")
        return [m for m in models if isinstance(m, dict)]

    async def info(self) -> BackendInfo:
        # LM Studio reports no version over HTTP: the API level is what can be known.
        v1 = await self._v1_models() is not None
        can_unload = v1 or shutil.which("lms") is not None
        api = "REST API v1" if v1 else "no REST API v1 (LM Studio < 0.4)"
        return BackendInfo(self.name, api, self.base_url, can_unload=can_unload)

    async def list_models(self) -> list[ModelInfo]:
        """/api/v0/models, else /api/v1/models, else /v1/models (which cannot tell loaded)."""
        try:
            listed = (await self._native("GET", "/api/v0/models")).get("data") or []
            return [
                ModelInfo(
                    str(m.get("id")),
                    quantization=m.get("quantization"),
                    context_tokens=_int(m.get("max_context_length")),
                    loaded=m.get("state") == "loaded",
                )
                for m in listed
            ]
        except _EndpointMissing:
            pass
        models = await self._v1_models()
        if models is None:
            return [dataclasses.replace(m, loaded=False) for m in await super().list_models()]
        return [
            ModelInfo(
                str(m.get("key")),
                size_bytes=_int(m.get("size_bytes")),
                quantization=(m.get("quantization") or {}).get("name"),
                context_tokens=_int(m.get("max_context_length")),
                loaded=bool(m.get("loaded_instances")),
            )
            for m in models
        ]

    @staticmethod
    def _instances(models: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
        return [
            instance
            for m in models
            for instance in m.get("loaded_instances") or []
            if is_entry_of(m, model) or model == instance.get("id")
        ]

    @staticmethod
    def _entry_of(models: list[dict[str, Any]], instance_id: object) -> dict[str, Any] | None:
        for m in models:
            if any(i.get("id") == instance_id for i in m.get("loaded_instances") or []):
                return m
        return None

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        """Load with the settings asked for; an instance already loaded with them is kept.

        What LM Studio applied is checked and recorded: the echoed ``load_config`` must hold
        every value asked for, and the loaded variant must be the one the name asks for
        (``key@q4_k_m``): LM Studio answers a name it resolves to another variant, or
        answers with the one model loaded whatever name comes (lmstudio-bug-tracker #619).
        """
        start = time.perf_counter()
        models = await self._v1_models()
        if models is None:
            return await self._cli_load(model, settings, start)
        wanted = rest_load_body(settings)
        instances = self._instances(models, model)
        kept = [
            i
            for i in instances
            if not not_applied(wanted, i.get("config") or {})
            and wrong_variant(model, self._entry_of(models, i.get("id")) or {}) is None
        ]
        if instances and len(kept) == len(instances):
            return self._loaded(model, start, models, kept[0].get("id"), already_loaded=True)
        for instance in instances:  # loaded with other settings: LM Studio would add an instance
            await self._native("POST", "/api/v1/models/unload", {"instance_id": instance["id"]})
        body = {"model": model, "echo_load_config": True, **wanted}
        data = await self._native("POST", "/api/v1/models/load", body, model)
        echoed = data.get("load_config")
        if isinstance(echoed, dict) and (wrong := not_applied(wanted, echoed)):
            raise ConfigError(
                f"LM Studio at {self.base_url} loaded {model!r} with other settings than "
                f"asked: {'; '.join(wrong)}; the run would measure a configuration it does "
                "not name. Check the values against the model (and LM Studio's engine for it)"
            )
        server_load_s = _num(data.get("load_time_seconds"))
        models = await self._v1_models() or []
        instance_id = data.get("instance_id")
        return self._loaded(model, start, models, instance_id, server_load_s, echoed)

    def _loaded(
        self,
        model: str,
        start: float,
        models: list[dict[str, Any]],
        instance_id: object,
        server_load_s: float | None = None,
        echoed: object = None,
        *,
        already_loaded: bool = False,
    ) -> LMStudioLoadResult:
        """The load's result, from /api/v1/models; BackendError for another variant."""
        entry = self._entry_of(models, instance_id) or next(
            (m for m in models if is_entry_of(m, model)), {}
        )
        instances: list[dict[str, Any]] = entry.get("loaded_instances") or []
        instance = next((i for i in instances if i.get("id") == instance_id), {})
        config = instance.get("config") or {}
        wrong = wrong_variant(model, entry)
        if wrong is not None:
            raise BackendError(
                f"LM Studio at {self.base_url} was asked for {model!r} and loaded {wrong}: "
                f"the case would measure another quantization. Download the variant "
                f"(`lms get {model}`), or check `lms ls --variants`"
            )
        quantization = (entry.get("quantization") or {}).get("name")
        return LMStudioLoadResult(
            model,
            time.perf_counter() - start,
            server_load_s=server_load_s,
            already_loaded=already_loaded,
            load_config=dict(echoed if isinstance(echoed, dict) else config),
            variant=entry.get("selected_variant"),
            quantization=quantization if isinstance(quantization, str) else None,
            parallel=_int(config.get("parallel")),
        )

    async def unload(self, model: str) -> None:
        """Unload every instance of ``model``; nothing to do where none is loaded."""
        models = await self._v1_models()
        if models is None:
            await self._lms("unload", model)
        for instance in self._instances(models or [], model):
            body = {"instance_id": instance["id"]}
            await self._native("POST", "/api/v1/models/unload", body, model)

    async def _cli_load(self, model: str, settings: LoadSettings, start: float) -> LoadResult:
        how = "LM Studio < 0.4 has no REST load API; `lms load`"
        # parallel: LM Studio's 4 unless asked
        flags = asked_settings(settings, CLI_LOAD_FLAGS, how)
        if settings.extra:
            asked = ", ".join(f"{key}={value!r}" for key, value in settings.extra.items())
            raise ConfigError(
                f"{how} cannot set {asked}: update LM Studio (0.4 has the REST load API), or "
                "set it in LM Studio's per-model load settings"
            )
        args = [str(arg) for pair in flags.items() for arg in pair]
        output = await self._lms("load", model, "--yes", *args)
        return LoadResult(model, time.perf_counter() - start, server_load_s=_elapsed_s(output))

    async def _lms(self, *args: str) -> str:
        """Run the ``lms`` CLI against this server; its output (stdout and stderr)."""
        exe, verb = shutil.which("lms"), args[0]
        if exe is None:
            raise BackendError(
                f"LM Studio at {self.base_url} has no /api/v1/models/{verb} (LM Studio < 0.4) "
                f"and the `lms` CLI is not on PATH: {verb} the model by hand "
                f"(`lms {verb} {args[1]}`, or the app's Developer tab), or update LM Studio"
            )
        url = httpx.URL(self.base_url)
        target = ["--port", str(url.port or 1234)]
        if url.host not in ("127.0.0.1", "localhost", "::1"):
            target += ["--host", url.host]
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            exe, *args, *target, stdout=pipe, stderr=pipe
        )
        out, err = await process.communicate()
        text = (out + err).decode("utf-8", "replace")
        if process.returncode != 0:
            first = next((line for line in text.splitlines() if line.strip()), "(no output)")
            raise BackendError(f"`lms {' '.join(args)}` failed ({process.returncode}): {first}")
        return text

    async def memory(self) -> MemoryReport:
        loaded = [m for m in await self._v1_models() or [] if m.get("loaded_instances")]
        if loaded:
            total = sum(
                (_int(m.get("size_bytes")) or 0) * len(m["loaded_instances"]) for m in loaded
            )
            return MemoryReport(
                model_bytes=total,
                source="LM Studio /api/v1/models: file size of each loaded instance's model "
                "(LM Studio reports no resident memory)",
            )
        if self.server_pid is not None:
            return await super().memory()
        return MemoryReport(source="not reported by LM Studio")

    async def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """Embedding vectors through /v1/embeddings, in the order of ``texts``."""
        body = {"model": model, "input": texts}
        rows = (await self._native("POST", "/v1/embeddings", body, model)).get("data")
        if not isinstance(rows, list) or len(rows) != len(texts):
            raise ProtocolError(f"{self.base_url}/v1/embeddings: expected {len(texts)} vectors")
        ordered = sorted(rows, key=lambda row: int(row.get("index", 0)))
        return [[float(x) for x in row["embedding"]] for row in ordered]

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        if self._native_chat:
            try:
                async for chunk in self._native_generate(request):
                    yield chunk
                return
            except _EndpointMissing:  # raised before any chunk
                self._native_chat = False
        if request.chat and request.thinking is not None:  # Qwen3's soft switch
            switch = " /think" if request.thinking else " /no_think"
            request = dataclasses.replace(request, prompt=request.prompt + switch)
        async for chunk in super().generate(request):
            yield chunk

    async def _native_generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        path, model = "/api/v1/chat", request.model
        body: dict[str, Any] = {
            "model": model,
            "input": request.prompt,
            "stream": True,
            "store": False,
            "max_output_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.thinking is not None:
            body["reasoning"] = "on" if request.thinking else "off"
        body.update(request.options)
        load_s: float | None = None
        try:
            async with stream_post(
                self._client, self._lean, path, body, timeout_s=request.timeout_s
            ) as response:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    answer = await response.as_httpx()
                    await self._check(answer, path, model)
                    raise ProtocolError(f"{self.base_url}{path} did not stream: {answer.text!r}")
                splitter = LineSplitter()  # not aiter_lines: it also cuts at U+0085
                async for data, at_s in response.pieces():  # stamped as they were read
                    for raw in splitter.feed(data):
                        line = raw.decode("utf-8", "replace")
                        try:
                            event = parse_sse_data(line)
                        except ServerError:  # an "error" event
                            raise self._stream_error(line, path, model) from None
                        if event is None:
                            continue
                        kind = event.get("type")
                        if kind in ("message.delta", "reasoning.delta"):
                            text = str(event.get("content") or "")
                            yield Chunk(text, 1, at_s, reasoning=kind == "reasoning.delta")
                        elif kind == "model_load.end":
                            load_s = _num(event.get("load_time_seconds"))
                        elif kind == "chat.end":
                            result = event.get("result") or {}
                            timings = timings_from_stats(result.get("stats") or {}, load_s)
                            full = (timings.output_tokens or 0) >= request.max_tokens
                            yield Chunk("", 0, at_s, "length" if full else "stop", timings)
        except httpx.HTTPError as exc:
            raise self._translate(exc, path) from exc

    def _stream_error(self, line: str, path: str, model: str) -> BackendError:
        """The error of an ``error`` event: ``{"type": "error", "error": {"type", "message"}}``."""
        error = json.loads(line[5:])["error"]
        detail = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if isinstance(error, dict) and "model_not_found" in (error.get("type"), error.get("code")):
            return ModelNotFoundError(self._not_found(f"{self.base_url}{path}", model, detail))
        return ServerError(f"LM Studio reported an error mid-stream: {detail}", 500)

    @staticmethod
    def _not_found(url: str, model: str, detail: str) -> str:
        return (
            f"{url}: LM Studio has no model {model!r} ({detail}); download it with "
            f"`lms get {model}` or load it with `lms load {model}` (`lms ls` lists the keys)"
        )

    async def _raise_for_status(
        self, response: httpx.Response, path: str, model: str | None = None
    ) -> None:
        if response.status_code < 400:
            return
        body = (await response.aread()).decode("utf-8", "replace").strip()
        first_line = body.splitlines()[0][:200] if body else "(empty body)"
        url, status = f"{self.base_url}{path}", response.status_code
        if status == 404 and model is not None:
            raise ModelNotFoundError(self._not_found(url, model, first_line))
        hint = ""
        if status in (401, 403):
            hint = "; set LM_API_TOKEN to one of its API tokens (Developer > Server Settings)"
        raise ServerError(f"{url} answered HTTP {status}: {first_line}{hint}", status)

    def _translate(self, exc: httpx.HTTPError, path: str) -> BackendError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return BackendUnavailableError(
                f"cannot connect to LM Studio at {self.base_url}{path} ({exc}); start the "
                "server: `lms server start` (or the app's Developer tab), or give its base URL"
            )
        return super()._translate(exc, path)
