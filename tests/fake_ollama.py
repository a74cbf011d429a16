"""A protocol-faithful fake Ollama server, for tests: Ollama cannot run on this machine.

Written from Ollama's API reference, docs/api.md of ollama/ollama (v0.33), with
docs/api/streaming.mdx and docs/api/errors.mdx, and from server/routes.go, server/sched.go
and llm/llama_server.go where the docs are silent. What it reproduces:

- a real HTTP/1.1 server on 127.0.0.1 (``ThreadingHTTPServer`` in a thread); streamed
  answers are NDJSON (``application/x-ndjson``) in chunked encoding, JSON encoded as Go
  does (``<>&``, U+2028 and U+2029 escaped, U+0085 left raw);
- objects as ollama/ollama fb30760 sends them: only with text (llm/llama_server.go L1705,
  L2036; server/routes.go L726, L2832), so a thinking tag makes no object, except on
  /api/generate with ``raw`` and thinking, whose generic thinking parser sends them empty
  (routes.go L697-700, L733); a token that ends inside a UTF-8 character (the answer's
  " ☀" is two tokens) is held back and sent in one object with the next;
- the final object: ``done_reason`` ("length" at num_predict, "stop" at end of sequence)
  and durations in ns, zero ones left out (Go's omitempty). load_duration runs from the
  request's arrival until the model is ready (a cold load takes ``load_s``, a warm one a
  few ms); prompt_eval_duration until the first token; eval_duration from the first token
  to the last, as llama.cpp times them, measured on the real send schedule; eval_count
  includes the end-of-sequence token of a model that stops on its own; the prompt cache
  is always on (Ollama hard-codes ``cache_prompt: true``, llm/llama_server.go L1562): the
  longest common prefix with the model's last prompt, or with an earlier one kept in
  llama-server's RAM prompt cache, is reused; prompt_eval_count counts it (cache_n +
  prompt_n, L1503-1513) and prompt_eval_duration does not;
- an empty prompt (no messages for /api/chat) loads the model and answers one JSON object
  with done_reason "load" and no timings; with keep_alive 0 it unloads ("unload") and the
  model leaves /api/ps a moment later; runner options other than the loaded model's
  (num_ctx, num_batch, num_thread, use_mmap, num_gpu, main_gpu) reload it;
- ``think`` left out means on for a thinking model, whose thinking comes first in
  ``thinking`` fields (its tags are tokens with no text); ``think`` on a model without
  thinking is 400;
- errors are ``{"error": "..."}``: 404 ``model 'x' not found``, 500 ``option "stop" must
  be of type array`` for an option of the wrong JSON type (api/types.go Options.FromMap,
  L1017-1062, after the model check), 503 when more than ``max_queue`` requests are in
  flight (OLLAMA_MAX_QUEUE), and mid-stream one error line under the 200 already sent.

Simplifications: it generates words from a list, a prompt token is a word, and requests
run side by side (no OLLAMA_NUM_PARALLEL slots). Misbehaviour switches for tests:
``malformed_after``, ``disconnect_after`` and ``error_after`` (an object index).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The answer's tokens as bytes: " ☀" (E2 98 80) is two, the first ending mid-character.
ANSWER_TOKENS = (
    b" The",
    b" sky",
    b" is",
    b" blue",
    b" \xe2\x98",
    b"\x80",
    " déjà".encode(),
    " 天空".encode(),
    "\u0085".encode(),
    b"\n",
)
THINKING_WORDS = (" Let", " me", " think", " about", " it", ".")
# api/types.go Options and Runner fields by JSON type, as Options.FromMap checks them.
INTEGER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep")
INTEGER_OPTIONS += ("draft_num_predict", "seed", "num_predict", "top_k", "repeat_last_n")
FLOAT_OPTIONS = ("top_p", "min_p", "typical_p", "temperature", "repeat_penalty")
FLOAT_OPTIONS += ("presence_penalty", "frequency_penalty")
OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(INTEGER_OPTIONS, "integer"),
    **dict.fromkeys(FLOAT_OPTIONS, "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}
TEMPLATE_TOKENS = 9  # what a chat template adds around the prompt
RUNNER_DEFAULTS: dict[str, Any] = {
    "num_ctx": 4096,
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": None,
    "num_thread": 0,
}
KV_BYTES_PER_TOKEN = 144 * 1024  # Qwen3-8B at f16
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@dataclass(frozen=True)
class FakeModel:
    size: int = 5_225_000_000  # bytes on disk (/api/tags)
    family: str = "qwen3"
    parameter_size: str = "8.2B"
    quantization: str = "Q4_K_M"
    context_length: int = 40960  # the trained context; num_ctx is capped to it
    thinking: bool = False  # has the "thinking" capability
    thinking_tokens: int = 8  # tokens of thinking before the answer, tags included
    answer_tokens: int | None = None  # stops on its own after this many; None: num_predict
    embedding_length: int | None = None  # an embedding model
    vram_fraction: float = 1.0


@dataclass
class _Loaded:
    runner: dict[str, Any]
    expires_at: float  # unix time; math.inf: never
    size: int
    size_vram: int
    prompt_words: list[str] = field(default_factory=list)  # the slot's prompt
    saved: list[list[str]] = field(default_factory=list)  # llama-server's --cache-ram states


def go_json(obj: Any) -> bytes:
    """JSON as Go's encoding/json writes it."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def parse_keep_alive(value: Any) -> float:
    """Seconds (math.inf: forever), as api.Duration reads a number or a Go duration."""
    if value is None:
        return 300.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return math.inf if value < 0 else float(value)
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.fullmatch(r"-?(\d+(\.\d+)?(ns|us|ms|s|m|h))+|-?0", str(value))
    if parts is None:
        raise ValueError(f'time: invalid duration "{value}"')
    seconds = sum(
        float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|ms|s|m|h)", str(value))
    )
    return math.inf if str(value).startswith("-") else seconds


def option_error(options: Mapping[str, Any]) -> str | None:
    """Options.FromMap's error for a value of the wrong JSON type, or None."""
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if value is None or kind is None:
            continue  # unknown options are logged and ignored
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "array":
            if not isinstance(value, list):
                return f'option "{key}" must be of type array'
            if not all(isinstance(item, str) for item in value):
                return f'option "{key}" must be of an array of strings'
        elif (kind == "boolean") != isinstance(value, bool) or (kind != "boolean" and not number):
            return f'option "{key}" must be of type {kind}'
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class FakeOllama:
    """``with FakeOllama({"qwen3:8b": FakeModel()}) as fake: ... fake.url ...``"""

    def __init__(
        self,
        models: Mapping[str, FakeModel],
        *,
        ttft_s: float = 0.02,
        itl_s: float = 0.005,
        load_s: float = 0.3,
        warm_load_s: float = 0.003,
        unload_delay_s: float = 0.05,
        max_queue: int = 512,
        version: str = "0.33.0",
        malformed_after: int | None = None,
        disconnect_after: int | None = None,
        error_after: int | None = None,
    ) -> None:
        self.models = {self._key(name): model for name, model in models.items()}
        self.ttft_s, self.itl_s = ttft_s, itl_s
        self.load_s, self.warm_load_s, self.unload_delay_s = load_s, warm_load_s, unload_delay_s
        self.max_queue, self.version = max_queue, version
        self.malformed_after = malformed_after
        self.disconnect_after = disconnect_after
        self.error_after = error_after
        self.loaded: dict[str, _Loaded] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body) as received
        self.in_flight = 0
        self.loads = 0  # cold loads so far
        self._state = threading.Lock()  # loaded, requests, in_flight
        self._scheduler = threading.Lock()  # one load at a time, as Ollama's scheduler
        self._timers: list[threading.Timer] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for timer in self._timers:
            timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @staticmethod
    def _key(name: str) -> str:
        name = name.lower()
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    def _details(self, model: FakeModel) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": model.family,
            "families": [model.family],
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization,
        }

    def _digest(self, name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    def _running(self) -> dict[str, _Loaded]:
        with self._state:
            now = time.time()
            for name in [n for n, entry in self.loaded.items() if entry.expires_at <= now]:
                del self.loaded[name]
            return dict(self.loaded)

    def tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-05-10T08:06:48.639712648-07:00",
                    "size": model.size,
                    "digest": self._digest(name),
                    "details": self._details(model),
                }
                for name, model in self.models.items()
            ]
        }

    def ps(self) -> dict[str, Any]:
        running = sorted(self._running().items(), key=lambda item: -item[1].expires_at)
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "size": entry.size,
                    "digest": self._digest(name),
                    "details": self._details(self.models[name]),
                    "expires_at": datetime.fromtimestamp(min(entry.expires_at, 2**33), UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "size_vram": entry.size_vram,
                    "context_length": entry.runner["num_ctx"],
                }
                for name, entry in running
            ]
        }

    def show(self, name: str) -> dict[str, Any]:
        model = self.models[name]
        capabilities = (
            ["embedding"]
            if model.embedding_length
            else ["completion", *(["thinking"] if model.thinking else [])]
        )
        return {
            "modelfile": f"FROM {name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": self._details(model),
            "model_info": {
                "general.architecture": model.family,
                f"{model.family}.context_length": model.context_length,
            },
            "capabilities": capabilities,
            "modified_at": "2025-05-10T08:06:48.639712648-07:00",
        }

    def schedule(self, name: str, options: Mapping[str, Any], keep_alive: float) -> None:
        """Make ``name`` ready with these runner options: load it, or reload it, or not."""
        model = self.models[name]
        runner = {key: options.get(key, default) for key, default in RUNNER_DEFAULTS.items()}
        runner["num_ctx"] = min(int(runner["num_ctx"]), model.context_length)
        with self._scheduler:
            entry = self._running().get(name)
            if entry is None or entry.runner != runner:
                time.sleep(self.load_s)
                size = model.size + runner["num_ctx"] * KV_BYTES_PER_TOKEN
                entry = _Loaded(runner, 0.0, size, int(size * model.vram_fraction))
                self.loads += 1
            else:
                time.sleep(self.warm_load_s)
            with self._state:
                entry.expires_at = time.time() + keep_alive
                self.loaded[name] = entry

    def unload(self, name: str) -> None:
        def expire() -> None:
            with self._state:
                self.loaded.pop(name, None)

        timer = threading.Timer(self.unload_delay_s, expire)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def prefill(self, name: str, words: list[str]) -> float:
        """Seconds to evaluate ``words`` after the reused prefix. As llama-server, which
        Ollama starts without --cache-ram (so with its 8192 MiB default): the slot's last
        prompt is saved in a RAM cache, and the saved prompt that keeps the most of itself
        (at least a quarter) is restored if it beats the slot's (llama.cpp 0c1e57098
        tools/server/server-task.cpp L1793-1823)."""

        def common(old: list[str]) -> int:
            shared = 0
            for a, b in zip(old, words, strict=False):
                if a != b:
                    break
                shared += 1
            return shared

        with self._state:
            entry = self.loaded[name]
            best = entry.prompt_words
            for state in entry.saved:
                shared = common(state) if state else 0
                if shared >= len(state) / 4 and shared > common(best):
                    best = state
            cached = common(best) if best else 0
            if entry.prompt_words:
                entry.saved = [*entry.saved[-63:], entry.prompt_words]
            entry.prompt_words = words
        cached = min(cached, len(words) - 1)  # the last prompt token is always evaluated
        return self.ttft_s * (len(words) - cached) / len(words)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections end
    fake: FakeOllama

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake = self.server.fake  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any, content_type: str = "application/json") -> None:
        data = go_json(obj) if content_type == "application/json" else str(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def do_GET(self) -> None:
        fake = self.fake
        with fake._state:
            fake.requests.append(("GET", self.path, None))
        routes: dict[str, Callable[[], Any]] = {
            "/api/version": lambda: {"version": fake.version},
            "/api/tags": fake.tags,
            "/api/ps": fake.ps,
        }
        if self.path == "/":
            self._send(200, "Ollama is running", "text/plain; charset=utf-8")
        elif self.path in routes:
            self._send(200, routes[self.path]())
        else:
            self._send(404, "404 page not found", "text/plain")

    def do_POST(self) -> None:
        fake = self.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            body = exc
        with fake._state:
            fake.requests.append(("POST", self.path, body))
        handlers = {
            "/api/generate": self._generate,
            "/api/chat": self._generate,
            "/api/embed": self._embed,
            "/api/show": self._show,
        }
        if self.path not in handlers:
            return self._send(404, "404 page not found", "text/plain")
        if body is None:
            return self._error(400, "missing request body")
        if not isinstance(body, dict):
            return self._error(400, f"invalid request body: {body}")
        name = fake._key(str(body.get("model", "")))
        if name not in fake.models:
            return self._error(404, f"model '{body.get('model', '')}' not found")
        if self.path == "/api/show":
            return self._show(name, body)
        with fake._state:
            fake.in_flight += 1
            busy = fake.in_flight > fake.max_queue
        try:
            if busy:
                return self._error(503, BUSY)
            handlers[self.path](name, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with fake._state:
                fake.in_flight -= 1

    def _show(self, name: str, body: dict[str, Any]) -> None:
        self._send(200, self.fake.show(name))

    def _embed(self, name: str, body: dict[str, Any]) -> None:
        start = time.perf_counter()
        texts = body.get("input") or []
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._error(400, "invalid input type")
        self.fake.schedule(
            name, body.get("options") or {}, parse_keep_alive(body.get("keep_alive"))
        )
        loaded = time.perf_counter()
        dims = self.fake.models[name].embedding_length or 8
        vectors = []
        for text in texts:
            seed = hashlib.sha256(text.encode()).digest()
            raw = [seed[i % len(seed)] / 255 - 0.5 for i in range(dims)]
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        self._send(
            200,
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": _ns(time.perf_counter() - start),
                "load_duration": _ns(loaded - start),
                "prompt_eval_count": sum(len(t.split()) for t in texts),
            },
        )

    def _generate(self, name: str, body: dict[str, Any]) -> None:
        fake, model = self.fake, self.fake.models[name]
        start = time.perf_counter()
        chat = self.path == "/api/chat"
        if chat:
            messages = body.get("messages") or []
            prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
            empty = not messages
        else:
            prompt = str(body.get("prompt") or "")
            empty = prompt == ""
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            return self._error(400, str(exc))

        def reply(text: str = "", thinking: str = "", **extra: Any) -> dict[str, Any]:
            obj: dict[str, Any] = {"model": body["model"], "created_at": _now()}
            if chat:
                message = {"role": "assistant", "content": text}
                obj["message"] = {**message, "thinking": thinking} if thinking else message
            else:
                obj["response"] = text
                if thinking:
                    obj["thinking"] = thinking
            return {**obj, "done": False, **extra}

        if empty and keep_alive == 0:
            fake.unload(name)
            return self._send(200, reply(done=True, done_reason="unload"))
        if model.embedding_length:
            return self._error(400, f'"{body["model"]}" does not support generate')
        think = body.get("think")
        if think not in (None, False) and not model.thinking:
            return self._error(400, f'"{body["model"]}" does not support thinking')
        options = body.get("options") or {}
        wrong = option_error(options) if isinstance(options, dict) else None
        if wrong is not None:
            return self._error(500, wrong)
        fake.schedule(name, options, keep_alive)
        loaded = time.perf_counter()
        if empty:
            return self._send(200, reply(done=True, done_reason="load"))
        words = prompt.split() or [""]
        if chat or not body.get("raw"):
            words = ["<|im_start|>"] * TEMPLATE_TOKENS + words
        prefill_s = fake.prefill(name, words)
        n_think = model.thinking_tokens if model.thinking and think is not False else 0
        empty_tags = not chat and bool(body.get("raw")) and n_think > 0
        num_predict = int(options.get("num_predict", -1))
        limit = num_predict if num_predict >= 0 else 10 * RUNNER_DEFAULTS["num_ctx"]
        natural = None if model.answer_tokens is None else n_think + model.answer_tokens
        n = limit if natural is None else min(limit, natural)
        stopped = natural is not None and natural < limit

        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(max(0.0, loaded + prefill_s - time.perf_counter()))
        first = last = time.perf_counter()
        sent = 0  # objects
        for i, obj in self._tokens(reply, n, n_think, empty_tags=empty_tags):
            if i > 0:
                time.sleep(max(0.0, first + i * fake.itl_s - time.perf_counter()))
            last = time.perf_counter()  # when the token was made, as llama.cpp stamps it
            if i == 0:
                first = last
            if obj is None:
                continue  # a token with no text of its own (yet)
            if sent == fake.disconnect_after:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            if sent == fake.error_after:
                self._chunk(go_json({"error": "an error was encountered while running the model"}))
                return self._chunk(b"", end=True)
            if sent == fake.malformed_after:
                self._chunk(b'{"model":"' + name.encode() + b'","response":\n')
            self._chunk(go_json(obj) + b"\n")
            sent += 1
        eval_count = n
        if stopped:  # sampling the end-of-sequence token is one more decode step
            time.sleep(max(0.0, first + n * fake.itl_s - time.perf_counter()))
            last = time.perf_counter()
            eval_count += 1
        metrics = {
            "total_duration": _ns(time.perf_counter() - start),
            "load_duration": _ns(loaded - start),
            "prompt_eval_count": len(words),
            "prompt_eval_duration": _ns(first - loaded),
            "eval_count": eval_count,
            "eval_duration": _ns(last - first),
        }
        final = reply(done=True, done_reason="stop" if stopped else "length")
        final.update({key: value for key, value in metrics.items() if value})  # omitempty
        self._chunk(go_json(final) + b"\n")
        self._chunk(b"", end=True)
        return None

    @staticmethod
    def _tokens(
        reply: Callable[..., dict[str, Any]], n: int, n_think: int, *, empty_tags: bool
    ) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Each token's index and the object it completes (None: it completes none)."""
        held = b""  # bytes of an unfinished UTF-8 character, sent with the next token
        for i in range(n):
            if i < n_think:
                if i in (0, n_think - 1):  # <think> and </think>: no text of their own
                    yield i, reply() if empty_tags else None
                else:
                    yield i, reply(thinking=THINKING_WORDS[i % len(THINKING_WORDS)])
                continue
            held += ANSWER_TOKENS[(i - n_think) % len(ANSWER_TOKENS)]
            try:
                text = held.decode()
            except UnicodeDecodeError:
                yield i, None
                continue
            held = b""
            yield i, reply(text)

    def _chunk(self, data: bytes, *, end: bool = False) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data) if data else b"")
        if end:
            self.wfile.write(b"0\r\n\r\n")
