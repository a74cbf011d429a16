"""A calibrated token server: OpenAI-compatible SSE and Ollama NDJSON on a known schedule.

It emits each token at an absolute deadline (``schedule.py``) and records, per request, the
``time.perf_counter()`` at which each chunk's bytes were written (stamped both just before
the write and after it had drained), so a client's TTFT, ITL and E2E can be checked against
ground truth (``GET /_lmgauge/schedule``). Run it in its own
process (``python -m lmgauge.testing.token_server --port 0 ...`` prints its URL, and
``serving.serve_in_process`` runs it so), since a server sharing the client's event loop or
GIL distorts both; ``serving.serve_in_thread`` is for functional tests only. Loopback only.

Control endpoints: ``GET /_lmgauge/schedule`` (the send records), ``GET /_lmgauge/status``
(its pid and CPU time so far), ``POST /_lmgauge/reset``
(clears them and restarts the request index), ``POST /_lmgauge/config`` (a new schedule:
``ttft_ms``, ``itl_ms``, ``jitter_ms``, ``tokens``, ``seed``, ``slowdown``, ``drift_amplitude``,
``drift_period_s``, ``drift_epoch``, ``drift_phase``, ``noise_sd``; also resets),
``POST /_lmgauge/fault`` (a Fault as JSON for the next generation requests; ``{}`` clears).
A request is matched to its record by its prompt (the last message of a chat) or by the
``X-Request-Id`` header, which is also the OpenAI ``id``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import time
from typing import Any

from lmgauge.testing.encoders import Encoder, OllamaEncoder, OpenAIEncoder
from lmgauge.testing.http1 import (
    LAST_CHUNK,
    BadRequest,
    Request,
    check_loopback,
    chunk,
    json_response,
    read_request,
    response,
    stream_head,
)
from lmgauge.testing.schedule import Fault, Schedule, SendRecord

MODEL = "lmgauge/token-server"
VERSION = "0.33.0"  # the Ollama API level it speaks
BUSY = "server busy, please try again.  maximum pending requests exceeded"
GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions", "/api/generate", "/api/chat")


class _Disconnect(Exception):
    """A fault: drop the connection now."""


def _prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return str(body.get("prompt") or "")


class TokenServer:
    """``await server.start()`` gives the base URL; ``await server.close()`` stops it."""

    def __init__(
        self,
        schedule: Schedule | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fault: Fault | None = None,
    ) -> None:
        check_loopback(host)
        self.started_s = time.perf_counter()  # the drift's epoch unless the schedule names one
        self.schedule = schedule or Schedule()
        self.fault = fault
        self.host, self.port = host, port
        self.records: list[SendRecord] = []
        self.loaded: dict[str, int] = {}  # Ollama model -> context length
        self._index = 0
        self._server: asyncio.Server | None = None

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, schedule: Schedule) -> None:
        if schedule.drift_epoch is None:
            schedule = dataclasses.replace(schedule, drift_epoch=self.started_s)
        self._schedule = schedule

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> None:
        self.records.clear()
        self._index = 0

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    writer.write(json_response(exc.status, {"error": str(exc)}, keep_alive=False))
                    break
                if request is None:
                    break
                await self._dispatch(request, writer)
                if not request.keep_alive:
                    break
        except (_Disconnect, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, request: Request, writer: asyncio.StreamWriter) -> None:
        keep = request.keep_alive
        try:
            if request.method == "POST" and request.path in GENERATE_PATHS:
                await self._generate(request, writer)
                return
            answer = self._control(request)
        except BadRequest as exc:
            answer = exc.status, {"error": str(exc)}
        except (ValueError, TypeError) as exc:
            answer = 400, {"error": f"{type(exc).__name__}: {exc}"}
        status, obj = answer
        if isinstance(obj, str):
            writer.write(response(status, obj.encode(), "text/plain", keep_alive=keep))
        else:
            writer.write(json_response(status, obj, keep_alive=keep))
        await writer.drain()

    def _control(self, request: Request) -> tuple[int, Any]:
        """Every endpoint but generation: (status, JSON object or plain text)."""
        route, body = (request.method, request.path), request.json()
        body = body if isinstance(body, dict) else {}
        model = str(body.get("model") or MODEL)
        if route == ("GET", "/_lmgauge/schedule"):
            clock = time.get_clock_info("perf_counter").implementation
            return 200, {"clock": clock, "requests": [r.to_json() for r in self.records]}
        if route == ("GET", "/_lmgauge/status"):  # so a client can tell its CPU from others'
            return 200, {"pid": os.getpid(), "cpu_s": time.process_time(), "url": self.url}
        if route == ("POST", "/_lmgauge/reset"):
            self.reset()
            return 200, {"reset": True}
        if route == ("POST", "/_lmgauge/config"):
            self.schedule = Schedule.from_json(body, self.schedule)
            self.reset()
            return 200, dataclasses.asdict(self.schedule)
        if route == ("POST", "/_lmgauge/fault"):
            self.fault = Fault.from_json(body) if body else None
            return 200, dataclasses.asdict(self.fault) if self.fault else {}
        if route in (("GET", "/v1/models"), ("GET", "/api/tags")):
            names = sorted({MODEL, *self.loaded})
            if request.path == "/v1/models":
                models = [{"id": n, "object": "model", "owned_by": "lmgauge"} for n in names]
                return 200, {"object": "list", "data": models}
            return 200, {"models": [self._ollama_model(n) for n in names]}
        if route == ("GET", "/api/ps"):
            running = [
                {**self._ollama_model(name), "size_vram": 1_000_000, "context_length": context}
                for name, context in self.loaded.items()
            ]
            return 200, {"models": running}
        if route == ("GET", "/api/version"):
            return 200, {"version": VERSION}
        if route == ("GET", "/props"):
            return 200, {"build_info": "lmgauge token server"}
        if route == ("POST", "/api/show"):
            info = {"general.architecture": "qwen3", "qwen3.context_length": 40960}
            details = self._ollama_model(model)["details"]
            return 200, {"details": details, "model_info": info, "capabilities": ["completion"]}
        if route == ("GET", "/"):
            return 200, "Ollama is running"
        return 404, "404 page not found"

    @staticmethod
    def _ollama_model(name: str) -> dict[str, Any]:
        details = {"format": "gguf", "family": "qwen3", "parameter_size": "0.6B"}
        details["quantization_level"] = "Q4_K_M"
        return {
            "name": name,
            "model": name,
            "size": 1_000_000,
            "digest": "0" * 64,
            "details": details,
        }

    def _take_fault(self) -> Fault | None:
        """The fault for this request, if any is left (one of its ``count``)."""
        fault = self.fault
        if fault is None:
            return None
        fault.count -= 1
        if fault.count <= 0:
            self.fault = None
        return dataclasses.replace(fault, count=1)

    async def _generate(self, request: Request, writer: asyncio.StreamWriter) -> None:
        received = time.perf_counter()
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object")
        ollama, chat = request.path.startswith("/api/"), "chat" in request.path
        model, prompt = str(body.get("model") or MODEL), _prompt(body)
        options: dict[str, Any] = body["options"] if isinstance(body.get("options"), dict) else {}
        if ollama and not prompt and not body.get("messages"):  # Ollama's load / unload call
            unload = body.get("keep_alive") in (0, "0", "0s")
            if unload:
                self.loaded.pop(model, None)
            else:
                self.loaded[model] = int(options.get("num_ctx", 4096))
            reason = "unload" if unload else "load"
            answer = OllamaEncoder("", model, 0, chat=chat).final(done_reason=reason)
            writer.write(json_response(200, answer))
            return await writer.drain()
        if ollama:
            self.loaded.setdefault(model, int(options.get("num_ctx", 4096)))
        if body.get("stream") is False:
            raise BadRequest(400, "the token server only streams: send stream=true")
        asked = options.get("num_predict") if ollama else body.get("max_tokens")
        index, self._index = self._index, self._index + 1
        request_id = f"lmgauge-{index}"
        n = self.schedule.tokens(asked if isinstance(asked, int) else None)
        factor = self.schedule.factor(index, received)
        due = [received + offset for offset in self.schedule.offsets(index, n, factor)]
        record = SendRecord(request_id, request.path, model, prompt, received, due)
        record.factor = factor
        self.records.append(record)
        fault, prompt_tokens = self._take_fault(), len(prompt.split())
        if fault is not None:
            record.fault = json.dumps(dataclasses.asdict(fault))
        if fault is not None and fault.status is not None:
            writer.write(self._fault_answer(fault, ollama, request.keep_alive))
            return await writer.drain()
        encoder: Encoder
        if ollama:
            encoder = OllamaEncoder(request_id, model, prompt_tokens, chat=chat)
        else:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            encoder = OpenAIEncoder(request_id, model, prompt_tokens, chat=chat, usage=usage)
        writer.write(stream_head(encoder.content_type, X_Request_Id=request_id))
        await self._stream(writer, encoder, record, fault)
        finish = "length" if isinstance(asked, int) and n >= asked else "stop"
        record.finish_reason = finish
        sent = record.sent_s or [received]
        times = {"received": received, "loaded": received, "first": sent[0], "last": sent[-1]}
        times["end"] = time.perf_counter()
        data = chunk(encoder.end(n, finish, times)) + LAST_CHUNK
        record.end_write_s = time.perf_counter()
        writer.write(data)
        await writer.drain()
        record.done_s = time.perf_counter()

    @staticmethod
    def _fault_answer(fault: Fault, ollama: bool, keep_alive: bool) -> bytes:
        """Ollama wraps every error as ``{"error": "..."}`` (503: its queue-full text); an
        OpenAI-compatible answer carries ``body`` as it is: JSON if it parses, else text."""
        status, body = fault.status or 500, fault.body
        if ollama:
            error = BUSY if status == 503 else body
            return json_response(status, {"error": error}, keep_alive=keep_alive)
        try:
            json.loads(body)
            kind = "application/json"
        except ValueError:
            kind = "text/plain; charset=utf-8"
        return response(status, body.encode(), kind, keep_alive=keep_alive)

    @staticmethod
    async def _stream(
        writer: asyncio.StreamWriter, encoder: Encoder, record: SendRecord, fault: Fault | None
    ) -> None:
        clock, sent, due, writing = time.perf_counter, record.sent_s, record.due_s, record.write_s
        for k in range(len(due)):
            if fault is not None:
                if k == fault.disconnect_after:
                    writer.transport.abort()
                    raise _Disconnect
                if k == fault.malformed_after:
                    writer.write(chunk(encoder.malformed()))
                if k == fault.stall_after:
                    due[k:] = [t + fault.stall_s for t in due[k:]]
            delay = due[k] - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            data = chunk(encoder.token(k))
            writing.append(clock())
            writer.write(data)
            await writer.drain()
            sent.append(clock())


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=None, help="cap on tokens per request")
    parser.add_argument("--seed", type=int, default=0)
    factor = parser.add_argument_group("every timing of a request multiplied by a factor")
    factor.add_argument("--slowdown", type=float, default=1.0, help="1.05: 5%% slower")
    factor.add_argument("--drift-amplitude", type=float, default=0.0, help="0.2: +-20%%")
    factor.add_argument("--drift-period-s", type=float, default=180.0)
    factor.add_argument(
        "--drift-epoch",
        type=float,
        default=None,
        help="a perf_counter() time (CLOCK_MONOTONIC): servers given one drift together; "
        "default: this server's start",
    )
    factor.add_argument("--drift-phase", type=float, default=0.0, help="radians")
    factor.add_argument("--noise-sd", type=float, default=0.0, help="per request, in log space")
    faults = parser.add_argument_group("faults, for the first --fault-count generation requests")
    faults.add_argument("--fault-count", type=int, default=1)
    faults.add_argument("--fault-status", type=int, default=None, help="answer this status")
    faults.add_argument("--fault-body", default="injected fault")
    for name in ("malformed-after", "disconnect-after", "stall-after"):
        faults.add_argument(f"--{name}", type=int, default=None, metavar="TOKENS")
    faults.add_argument("--stall-s", type=float, default=1.0)
    return parser


def schedule_from_args(args: argparse.Namespace) -> Schedule:
    return Schedule(
        args.ttft_ms / 1000,
        args.itl_ms / 1000,
        args.jitter_ms / 1000,
        max_tokens=args.tokens,
        seed=args.seed,
        slowdown=args.slowdown,
        drift_amplitude=args.drift_amplitude,
        drift_period_s=args.drift_period_s,
        drift_epoch=args.drift_epoch,
        drift_phase=args.drift_phase,
        noise_sd=args.noise_sd,
    )


async def _serve(args: argparse.Namespace, schedule: Schedule) -> None:
    fault = Fault(
        args.fault_count,
        args.fault_status,
        args.fault_body,
        args.malformed_after,
        args.disconnect_after,
        args.stall_after,
        args.stall_s,
    )
    chosen = (fault.status, fault.malformed_after, fault.disconnect_after, fault.stall_after)
    armed = fault if any(value is not None for value in chosen) else None
    server = TokenServer(schedule, host=args.host, port=args.port, fault=armed)
    print(await server.start(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    try:
        check_loopback(args.host)
        schedule = schedule_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    asyncio.run(_serve(args, schedule))


if __name__ == "__main__":
    main()
