"""A protocol-faithful fake of LM Studio's server, for tests: LM Studio cannot run on this machine.

Written from LM Studio's documentation (github.com/lmstudio-ai/docs, 2026-04 snapshot):
- 1_developer/2_rest/chat.md, streaming-events.md: ``POST /api/v1/chat``; streamed as SSE
  ``event: <type>`` / ``data: <json>`` from ``chat.start`` to ``chat.end`` (whose ``result``
  carries ``stats``: input_tokens, total_output_tokens, reasoning_output_tokens,
  tokens_per_second, time_to_first_token_seconds, model_load_time_seconds only after a load);
  ``model_load.*`` events when the request had to load the model; ``reasoning``: "on" | "off".
- 1_developer/2_rest/list.md, load.md, unload.md (checked at lmstudio-ai/docs c6854fb):
  ``GET /api/v1/models`` (every model, with ``loaded_instances`` whose config has
  ``parallel``, and a multi-variant model's ``variants`` and ``selected_variant``);
  ``POST /api/v1/models/load`` (top-level context_length, eval_batch_size, flash_attention,
  num_experts, offload_kv_cache_to_gpu; ``load_time_seconds``; ``load_config`` only with
  ``echo_load_config``, holding only the fields that applied: an MLX model's has no
  eval_batch_size or flash_attention) and ``/unload`` (by ``instance_id``). Defaults as
  lmstudio-js 6ec11db packages/lms-kv-config/src/schema.ts: evalBatchSize 2048 (L354),
  numParallelSessions 4 (L336-340), flashAttention false (L365), offloadKVCacheToGpu true.
- 3_cli/0_local-models/get.md L18: a quantization variant is named ``key@q4_k_m``; the fake
  loads it (a variant that is not downloaded is ``model_not_found``). ``serves_variant`` on a
  FakeModel makes it load that variant whatever is asked, as the closed resolver might.
- 1_developer/2_rest/endpoints.mdx: the v0 API (``/api/v0/models`` with state loaded|not-loaded;
  chat/completions and completions whose non-streamed answers carry ``stats``).
- 1_developer/0_core/ttl-and-auto-evict.md: JIT loading, idle TTL (60 min default, ``ttl`` in
  v0/OpenAI requests), auto-evict keeps at most one JIT-loaded model.
- 1_developer/0_core/authentication.mdx: ``Authorization: Bearer $LM_API_TOKEN``.
- 1_developer/3_openai-compat/: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
  (``logit_bias`` supported; ``stream_options.include_usage`` since 0.3.18), ``/v1/embeddings``.
From LM Studio's bug tracker, where the docs are silent:
- #618, #1323: an unknown endpoint answers HTTP 200 ``{"error": "Unexpected endpoint or
  method. (METHOD /path)"}`` (so an LM Studio < 0.4 answers /api/v1/* that way).
- #676, #547 (and lmstudio-js #184): v0 streams end without ``stats``.
- 404 ``{"error": {"message": "Model \\"x\\" not found...", "type": "invalid_request_error",
  "param": "model", "code": "model_not_found"}}`` (quoted in letta-ai/letta #1876).
The fake's own choices where upstream says nothing: the 401 body; one token per delta event;
TTFT measured from the end of the model load; ``tokens_per_second`` = output tokens / (last token
sent - first token sent), as the v0 example's 9 tokens / 0.156 s = 57.69; the ``lms`` CLI (which
really talks to LM Studio over its SDK websocket) is stood in for by ``/__fake__/lms``.
Loopback only. Every timing reported is measured off the fake's real send schedule.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FakeModel:
    key: str
    type: str = "llm"  # "llm" | "embedding" (v0 says "embeddings")
    publisher: str = "qwen"
    arch: str = "qwen3"
    format: str = "gguf"
    quantization: str = "Q4_K_M"
    bits_per_weight: float = 4.89
    size_bytes: int = 5_030_000_000
    max_context_length: int = 40960
    reasoning_default: str | None = "on"  # None: the model has no reasoning setting
    answer_tokens: int = 4096  # natural answer length: it stops ("stop") after these
    variants: tuple[str, ...] | None = None  # downloaded variants; None: its quantization's
    serves_variant: str | None = None  # loads this variant whatever variant is asked for

    def variant_names(self) -> tuple[str, ...]:
        if self.variants is not None:
            return self.variants
        return (self.quantization.lower(),) if self.format == "gguf" else ()


@dataclass
class Instance:
    id: str
    model: FakeModel
    config: dict[str, Any]
    jit: bool
    ttl_s: float | None
    last_used: float = field(default_factory=time.monotonic)
    variant: str | None = None  # e.g. "q8_0"


DEFAULT_MODELS = (
    FakeModel("qwen/qwen3-8b"),
    FakeModel("qwen3-1.7b-mlx", format="mlx", quantization="4bit", bits_per_weight=4.5),
    FakeModel(
        "text-embedding-nomic-embed-text-v1.5",
        type="embedding",
        publisher="nomic-ai",
        arch="nomic-bert",
        quantization="Q4_0",
        size_bytes=84_000_000,
        max_context_length=2048,
        reasoning_default=None,
    ),
)
TEMPLATE_TOKENS = 9  # chat-template formatting counted in input_tokens ("includes formatting")
FAKE_LMS = '''#!{python}
"""A stand-in for LM Studio's `lms` CLI: forwards its arguments to the fake server."""
import json, sys, urllib.request
argv = sys.argv[1:]
port = argv[argv.index("--port") + 1] if "--port" in argv else "1234"
request = urllib.request.Request(
    f"http://127.0.0.1:{{port}}/__fake__/lms", data=json.dumps({{"argv": argv}}).encode(),
    headers={{"Content-Type": "application/json"}})
with urllib.request.urlopen(request) as response:
    answer = json.load(response)
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["code"])
'''


def write_fake_lms(folder: Path) -> Path:
    """An executable ``lms`` in ``folder`` that drives the fake (put ``folder`` on PATH)."""
    path = folder / "lms"
    path.write_text(FAKE_LMS.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _elapsed(seconds: float) -> str:
    """lms's formatElapsedTime (lmstudio-ai/lms src/formatElapsedTime.ts), under a minute."""
    return f"{seconds:.2f}s" if seconds >= 1 else f"{seconds * 1000:.2f}ms"


def _not_found(name: str, v1: bool) -> dict[str, Any]:
    message = f'Model "{name}" not found. Please specify a valid model.'
    if v1:
        return {"error": {"type": "model_not_found", "message": message, "param": "model"}}
    kind = "invalid_request_error"
    return {
        "error": {"message": message, "type": kind, "param": "model", "code": "model_not_found"}
    }


class _Answer(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class FakeLMStudio:
    """Start with ``with FakeLMStudio() as fake:``; ``fake.url`` is its base URL."""

    def __init__(
        self,
        models: tuple[FakeModel, ...] = DEFAULT_MODELS,
        *,
        ttft_s: float = 0.05,
        itl_s: float = 0.003,
        load_s: float = 0.3,
        reasoning_tokens: int = 6,
        api_key: str | None = None,
        rest_v1: bool = True,  # False: an LM Studio < 0.4, without /api/v1
        jit: bool = True,
        jit_ttl_s: float = 3600.0,
        auto_evict: bool = True,
    ) -> None:
        self.models = {m.key: m for m in models}
        self.ttft_s, self.itl_s, self.load_s = ttft_s, itl_s, load_s
        self.reasoning_tokens, self.api_key, self.rest_v1 = reasoning_tokens, api_key, rest_v1
        self.jit, self.jit_ttl_s, self.auto_evict = jit, jit_ttl_s, auto_evict
        self.instances: dict[str, Instance] = {}
        self.selected: dict[str, str] = {}  # model key -> its selected variant
        self.requests: list[
            tuple[str, str, dict[str, str], Any]
        ] = []  # method, path, headers, body
        self.cli_calls: list[list[str]] = []
        self.send_times: list[list[float]] = []  # per generation, perf_counter() of each token
        self.lock = threading.RLock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeLMStudio:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- model state -----------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.monotonic()
        for key, inst in list(self.instances.items()):
            if inst.ttl_s is not None and now - inst.last_used > inst.ttl_s:
                del self.instances[key]

    def _find(self, name: str, v1: bool) -> tuple[FakeModel, Instance | None]:
        model, _ = self._resolve(name, v1)
        with self.lock:
            self._expire()
            if name in self.instances:
                return self.instances[name].model, self.instances[name]
            inst = next((i for i in self.instances.values() if i.model is model), None)
            return model, inst

    def _resolve(self, name: str, v1: bool) -> tuple[FakeModel, str | None]:
        """The model a name means, and the variant it asks for (None: the selected one)."""
        with self.lock:
            if name in self.instances:
                return self.instances[name].model, self.instances[name].variant
        key, _, variant = name.partition("@")
        model = self.models.get(key)
        if model is None or (variant and variant.lower() not in model.variant_names()):
            raise _Answer(404, _not_found(name, v1))
        return model, variant.lower() or None

    def variant_of(self, model: FakeModel) -> str | None:
        names = model.variant_names()
        return self.selected.get(model.key, names[0] if names else None)

    def load(
        self,
        model: FakeModel,
        config: dict[str, Any],
        *,
        jit: bool,
        ttl_s: float | None,
        variant: str | None = None,
    ) -> tuple[Instance, float]:
        """Load an instance (a second one gets ``key:2``, as LM Studio names them)."""
        start = time.perf_counter()
        time.sleep(self.load_s)
        with self.lock:
            if jit and self.auto_evict:
                for key in [k for k, i in self.instances.items() if i.jit]:
                    del self.instances[key]
            ids, n = model.key, 1
            while ids in self.instances:
                n += 1
                ids = f"{model.key}:{n}"
            config = {"context_length": 4096, **config}
            if model.type == "llm" and model.format == "gguf":
                defaults = {"eval_batch_size": 2048, "flash_attention": False}
                config = {**defaults, "offload_kv_cache_to_gpu": True, **config}
            elif model.type == "llm":  # the MLX engine applies the context length only
                config = {"context_length": config["context_length"]}
            if model.type == "llm":
                config["parallel"] = config.get("parallel", 4)
            variant = model.serves_variant or variant or self.variant_of(model)
            if variant is not None:
                self.selected[model.key] = variant
            inst = Instance(ids, model, config, jit, ttl_s, variant=variant)
            self.instances[ids] = inst
        return inst, time.perf_counter() - start

    def _ready(self, name: str, v1: bool, ttl: object = None) -> tuple[Instance, float | None]:
        """The instance serving ``name``, JIT-loading it where needed; and the load time."""
        model, inst = self._find(name, v1)
        load_time = None
        if inst is None:
            if not self.jit:
                raise _Answer(404, _not_found(f"{name} (not loaded; JIT loading is off)", v1))
            ttl_s = float(ttl) if isinstance(ttl, int | float) else self.jit_ttl_s
            variant = self._resolve(name, v1)[1]
            inst, load_time = self.load(model, {}, jit=True, ttl_s=ttl_s, variant=variant)
        inst.last_used = time.monotonic()
        return inst, load_time

    # --- generation ------------------------------------------------------------------------

    def plan(
        self, inst: Instance, max_tokens: object, reasoning: object, bias: object
    ) -> list[bool]:
        """For each token to send, whether it is a reasoning token."""
        limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 10**9
        no_eos = isinstance(bias, dict) and any(v <= -100 for v in bias.values())
        count = min(limit, 10**6 if no_eos else inst.model.answer_tokens)
        setting = reasoning if isinstance(reasoning, str) else inst.model.reasoning_default
        thinking = min(count, self.reasoning_tokens) if setting not in (None, "off") else 0
        return [i < thinking for i in range(count)]

    def stream_tokens(
        self, plan: list[bool], send: Any, start: float | None = None
    ) -> tuple[float, list[float]]:
        """Send each token on schedule: ``ttft_s`` after ``start``, then one per ``itl_s``."""
        start = time.perf_counter() if start is None else start
        times: list[float] = []
        for i, reasoning in enumerate(plan):
            time.sleep(max(0.0, start + self.ttft_s + i * self.itl_s - time.perf_counter()))
            send(i, reasoning)
            times.append(time.perf_counter())
        with self.lock:
            self.send_times.append(times)
        return start, times

    @staticmethod
    def stats(prompt: str, plan: list[bool], start: float, times: list[float]) -> dict[str, Any]:
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "input_tokens": len(prompt.split()) + TEMPLATE_TOKENS,
            "total_output_tokens": len(plan),
            "reasoning_output_tokens": sum(plan),
            "tokens_per_second": len(plan) / span if span > 0 else 0.0,
            "time_to_first_token_seconds": round(times[0] - start, 6) if times else 0.0,
        }

    # --- the lms CLI stand-in --------------------------------------------------------------

    def lms(self, argv: list[str]) -> tuple[int, str, str]:
        """``lms load|unload|ps`` as lmstudio-ai/lms src/subcommands/{load,unload,list}.ts."""
        with self.lock:
            self.cli_calls.append(argv)
        flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
        if argv[:1] == ["ps"]:
            with self.lock:
                listed = [
                    {"identifier": i.id, "modelKey": i.model.key} for i in self.instances.values()
                ]
            return 0, json.dumps(listed) + "\n", ""
        if argv[:1] == ["load"] and len(argv) > 1:
            try:
                model, variant = self._resolve(argv[1], v1=True)
            except _Answer:
                return 1, "", f"Error: Cannot find a model matching {argv[1]!r}\n"
            config = {"context_length": int(flags.get("--context-length", 4096))}
            if "--parallel" in flags:
                config["parallel"] = int(flags["--parallel"])
            ttl = float(flags["--ttl"]) if "--ttl" in flags else None
            inst, took = self.load(model, config, jit=False, ttl_s=ttl, variant=variant)
            size = model.size_bytes / 2**30
            return (
                0,
                "",
                (
                    f"Model loaded successfully in {_elapsed(took)}.\n({size:.2f} GiB)\n"
                    f'To use the model in the API/SDK, use the identifier "{inst.id}".\n'
                ),
            )
        if argv[:1] == ["unload"] and len(argv) > 1:
            with self.lock:
                gone = [k for k, i in self.instances.items() if argv[1] in (k, i.model.key)]
                for key in gone:
                    del self.instances[key]
            if argv[1] != "--all" and not gone:
                return 1, "", f"Error: Cannot find a loaded model with identifier {argv[1]!r}\n"
            return 0, "", "".join(f'Model "{k}" unloaded.\n' for k in gone)
        return 1, "", f"Error: unknown command {argv!r}\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams as Express sends them
    timeout = 10
    server: Any

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeLMStudio:
        fake: FakeLMStudio = self.server.fake
        return fake

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    received = 0.0  # perf_counter() when the request was read

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.received = time.perf_counter()
        path = self.path.split("?")[0]
        try:
            body = json.loads(raw) if raw else {}
            with self.fake.lock:
                self.fake.requests.append((method, path, dict(self.headers), body))
            if path.startswith("/__fake__/"):
                code, out, err = self.fake.lms(body["argv"])
                raise _Answer(200, {"code": code, "stdout": out, "stderr": err})
            key = self.fake.api_key
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                message = "Invalid or missing API token (Authorization: Bearer <token>)"
                raise _Answer(401, {"error": {"type": "unauthorized", "message": message}})
            route = getattr(self, f"_{method}_{path.strip('/').replace('/', '_')}", None)
            if path.startswith("/api/v1/") and not self.fake.rest_v1:
                route = None
            if route is None and method == "GET" and path.startswith("/api/v0/models/"):
                route = self._model_v0
            if route is None:
                raise _Answer(200, {"error": f"Unexpected endpoint or method. ({method} {path})"})
            route(body)
        except _Answer as answer:
            self._json(answer.status, answer.body)
        except json.JSONDecodeError:
            self._json(400, {"error": {"type": "invalid_request", "message": "invalid JSON"}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _send(self, data: str) -> None:
        raw = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # --- GET ---------------------------------------------------------------------------------

    def _v0_entry(self, m: FakeModel) -> dict[str, Any]:
        variant = self.fake.variant_of(m)
        with self.fake.lock:
            self.fake._expire()
            inst = next((i for i in self.fake.instances.values() if i.model is m), None)
        entry = {
            "id": m.key,
            "object": "model",
            "type": "embeddings" if m.type == "embedding" else m.type,
            "publisher": m.publisher,
            "arch": m.arch,
            "compatibility_type": m.format,
            "quantization": m.quantization if variant is None else variant.upper(),
            "state": "loaded" if inst else "not-loaded",
            "max_context_length": m.max_context_length,
        }
        if inst is not None:
            entry["loaded_context_length"] = inst.config["context_length"]
        return entry

    def _GET_api_v0_models(self, body: Any) -> None:
        data = [self._v0_entry(m) for m in self.fake.models.values()]
        self._json(200, {"object": "list", "data": data})

    def _model_v0(self, body: Any) -> None:
        name = self.path.split("?")[0].removeprefix("/api/v0/models/")
        model, _ = self.fake._find(name, v1=False)
        self._json(200, self._v0_entry(model))

    def _GET_v1_models(self, body: Any) -> None:
        data = [
            {"id": k, "object": "model", "owned_by": m.publisher}
            for k, m in self.fake.models.items()
        ]
        self._json(200, {"object": "list", "data": data})

    def _GET_api_v1_models(self, body: Any) -> None:
        with self.fake.lock:
            self.fake._expire()
            instances = list(self.fake.instances.values())
        models = []
        for m in self.fake.models.values():
            variant = self.fake.variant_of(m)
            quantization = m.quantization if variant is None else variant.upper()
            entry: dict[str, Any] = {
                "type": m.type,
                "publisher": m.publisher,
                "key": m.key,
                "display_name": m.key.rsplit("/", 1)[-1],
                "quantization": {"name": quantization, "bits_per_weight": m.bits_per_weight},
                "size_bytes": m.size_bytes,
                "params_string": None,
                "loaded_instances": [
                    {"id": i.id, "config": dict(i.config)} for i in instances if i.model is m
                ],
                "max_context_length": m.max_context_length,
                "format": m.format,
            }
            if m.type == "llm":
                entry["architecture"] = m.arch
                reasoning = {"allowed_options": ["off", "on"], "default": m.reasoning_default}
                entry["capabilities"] = {
                    "vision": False,
                    "trained_for_tool_use": True,
                    **({"reasoning": reasoning} if m.reasoning_default else {}),
                }
            if variant is not None:
                entry["variants"] = [f"{m.key}@{v}" for v in m.variant_names()]
                entry["selected_variant"] = f"{m.key}@{variant}"
            models.append(entry)
        self._json(200, {"models": models})

    # --- model management --------------------------------------------------------------------

    def _POST_api_v1_models_load(self, body: Any) -> None:
        model, variant = self.fake._resolve(str(body.get("model")), v1=True)
        known = {"context_length", "eval_batch_size", "flash_attention", "num_experts"}
        known |= {"offload_kv_cache_to_gpu"}
        unknown = set(body) - known - {"model", "echo_load_config"}
        if unknown:  # LM Studio validates its request bodies (error type "invalid_request")
            message = f"Unrecognized key(s) in object: {', '.join(sorted(unknown))}"
            raise _Answer(400, {"error": {"type": "invalid_request", "message": message}})
        config = {k: v for k, v in body.items() if k in known}
        inst, took = self.fake.load(model, config, jit=False, ttl_s=None, variant=variant)
        answer = {"type": model.type, "instance_id": inst.id, "load_time_seconds": round(took, 3)}
        answer["status"] = "loaded"
        if body.get("echo_load_config"):  # the load fields that applied; not "parallel"
            answer["load_config"] = {k: v for k, v in inst.config.items() if k in known}
        self._json(200, answer)

    def _POST_api_v1_models_unload(self, body: Any) -> None:
        name = str(body.get("instance_id"))
        with self.fake.lock:
            if self.fake.instances.pop(name, None) is None:
                message = f'No loaded model instance with identifier "{name}"'
                raise _Answer(404, {"error": {"type": "model_not_found", "message": message}})
        self._json(200, {"instance_id": name})

    # --- inference ---------------------------------------------------------------------------

    def _POST_api_v1_chat(self, body: Any) -> None:
        prompt = body.get("input")
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        model, inst = self.fake._find(str(body.get("model")), v1=True)
        setting = body.get("reasoning")
        if setting is not None and model.reasoning_default is None:
            message = f"Model {model.key} does not support the reasoning setting {setting!r}"
            raise _Answer(400, {"error": {"type": "invalid_request", "message": message}})
        if not body.get("stream"):
            inst, load_time = self.fake._ready(model.key, v1=True)
            plan = self.fake.plan(inst, body.get("max_output_tokens"), setting, None)
            start = self.received if load_time is None else time.perf_counter()
            start, times = self.fake.stream_tokens(plan, lambda i, r: None, start)
            self._json(200, self._result(inst, prompt, plan, start, times, load_time))
            return
        self._start_stream()

        def event(kind: str, **data: Any) -> None:
            self._send(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n")

        event("chat.start", model_instance_id=inst.id if inst else model.key)
        load_time, start = None, self.received
        if inst is None:
            event("model_load.start", model_instance_id=model.key)
            inst, load_time = self.fake._ready(model.key, v1=True)
            event("model_load.progress", model_instance_id=inst.id, progress=1.0)
            event("model_load.end", model_instance_id=inst.id, load_time_seconds=load_time)
            start = time.perf_counter()  # TTFT excludes the load (chat.md's example)
        inst.last_used = time.monotonic()
        plan = self.fake.plan(inst, body.get("max_output_tokens"), setting, None)
        event("prompt_processing.start")

        def send(i: int, reasoning: bool) -> None:
            if i == 0:
                event("prompt_processing.progress", progress=1.0)
                event("prompt_processing.end")
                event("reasoning.start" if reasoning else "message.start")
            elif reasoning != plan[i - 1]:
                event("reasoning.end")
                event("message.start")
            event("reasoning.delta" if reasoning else "message.delta", content=f"t{i} ")

        start, times = self.fake.stream_tokens(plan, send, start)
        if plan:
            event("reasoning.end" if plan[-1] else "message.end")
        event("chat.end", result=self._result(inst, prompt, plan, start, times, load_time))
        self._end_stream()

    def _result(
        self,
        inst: Instance,
        prompt: str,
        plan: list[bool],
        start: float,
        times: list[float],
        load_time: float | None,
    ) -> dict[str, Any]:
        stats = self.fake.stats(prompt, plan, start, times)
        if load_time is not None:
            stats["model_load_time_seconds"] = round(load_time, 3)
        output = []
        if any(plan):
            thought = "".join(f"t{i} " for i, r in enumerate(plan) if r)
            output.append({"type": "reasoning", "content": thought})
        answer = "".join(f"t{i} " for i, r in enumerate(plan) if not r)
        output.append({"type": "message", "content": answer})
        return {"model_instance_id": inst.id, "output": output, "stats": stats}

    def _openai(self, body: Any, *, chat: bool, v0: bool) -> None:
        """/v1 and /api/v0 chat/completions and completions; v0 adds stats when not streamed."""
        messages = body.get("messages") or []
        prompt = (
            " ".join(str(m.get("content", "")) for m in messages)
            if chat
            else str(body.get("prompt", ""))
        )
        inst, load_time = self.fake._ready(str(body.get("model")), v1=False, ttl=body.get("ttl"))
        start = self.received if load_time is None else time.perf_counter()
        plan = self.fake.plan(inst, body.get("max_tokens"), None, body.get("logit_bias"))
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "created": int(time.time())}
        head["model"] = inst.id

        def choice(i: int, reasoning: bool, finish: str | None) -> dict[str, Any]:
            text = f"t{i} " if i >= 0 else ""
            if not chat:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            delta = {} if i < 0 else {"reasoning_content" if reasoning else "content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

        max_tokens = body.get("max_tokens")
        finish = "length" if isinstance(max_tokens, int) and len(plan) >= max_tokens else "stop"
        usage = {"prompt_tokens": len(prompt.split()) + TEMPLATE_TOKENS}
        usage |= {
            "completion_tokens": len(plan),
            "total_tokens": usage["prompt_tokens"] + len(plan),
        }
        if not body.get("stream"):
            start, times = self.fake.stream_tokens(plan, lambda i, r: None, start)
            text = "".join(f"t{i} " for i in range(len(plan)))
            answer: dict[str, Any] = {**head, "object": kind, "usage": usage}
            message = {"role": "assistant", "content": text}
            answer["choices"] = [
                {
                    "index": 0,
                    "finish_reason": finish,
                    **({"message": message} if chat else {"text": text}),
                }
            ]
            if v0:
                stats = self.fake.stats(prompt, plan, start, times)
                span = times[-1] - times[0] if len(times) > 1 else 0.0
                answer["stats"] = {
                    "tokens_per_second": stats["tokens_per_second"],
                    "time_to_first_token": stats["time_to_first_token_seconds"],
                    "generation_time": round(span, 6),
                    "stop_reason": "maxPredictedTokensReached"
                    if finish == "length"
                    else "eosFound",
                }
                answer["model_info"] = {"arch": inst.model.arch, "quant": inst.model.quantization}
                answer["runtime"] = {"name": "llama.cpp-fake", "version": "0.0.0"}
            self._json(200, answer)
            return
        self._start_stream()
        chunk_kind = f"{kind}.chunk" if chat else kind

        def data(choices: list[dict[str, Any]], **more: Any) -> None:
            chunk = {**head, "object": chunk_kind, "choices": choices, **more}
            self._send(f"data: {json.dumps(chunk)}\n\n")

        def send(i: int, reasoning: bool) -> None:
            last = i == len(plan) - 1
            data([choice(i, reasoning, finish if last and not chat else None)])

        self.fake.stream_tokens(plan, send, start)
        if chat:
            data([choice(-1, False, finish)])
        if (body.get("stream_options") or {}).get("include_usage") and not v0:
            data([], usage=usage)
        self._send("data: [DONE]\n\n")
        self._end_stream()

    def _POST_v1_chat_completions(self, body: Any) -> None:
        self._openai(body, chat=True, v0=False)

    def _POST_v1_completions(self, body: Any) -> None:
        self._openai(body, chat=False, v0=False)

    def _POST_api_v0_chat_completions(self, body: Any) -> None:
        self._openai(body, chat=True, v0=True)

    def _POST_api_v0_completions(self, body: Any) -> None:
        self._openai(body, chat=False, v0=True)

    def _POST_v1_embeddings(self, body: Any) -> None:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        inst, _ = self.fake._ready(str(body.get("model")), v1=False)
        rows = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()
            vector = [(b - 128) / 128 for b in digest[:8]]
            rows.append({"object": "embedding", "embedding": vector, "index": index})
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        self._json(200, {"object": "list", "data": rows, "model": inst.id, "usage": usage})

    _POST_api_v0_embeddings = _POST_v1_embeddings
