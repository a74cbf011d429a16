"""The lean streaming client (lmgauge.backends.lean_http) on real sockets: body framings cut
anywhere, keep-alive and its pitfalls, timeouts and broken connections, as the backends
translate them."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgauge.backends.base import GenerateRequest
from lmgauge.backends.lean_http import LeanClient, _Chunked
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.backends.stamped_socket import KERNEL_TIMESTAMPS
from lmgauge.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)
from lmgauge.measure import measure_one
from lmgauge.testing import records, serve_in_process

sys.path.insert(0, str(Path(__file__).parent))
from fake_ollama import FakeModel, FakeOllama
from waiting import wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
SSE = (
    b"".join(
        b"data: " + json.dumps({"choices": [{"text": t, "finish_reason": None}]}).encode() + b"\n\n"
        for t in ("a", "b\u0085", "c")
    )
    + b'data: {"choices": [{"text": "", "finish_reason": "length"}]}\n\ndata: [DONE]\n\n'
)


def chunked(body: bytes, size: int = 40) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-T: 1\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler(reader, writer, connection_index)`` per connection;
    yields its URL and the list of connections it accepted."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        writers.append(writer)
        try:
            await handler(reader, writer, accepted[-1])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def keep_alive_sse(pieces: list[bytes] | None = None, delay_s: float = 0.0) -> Handler:
    """Answers every request on the connection with SSE, written in ``pieces``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        while await read_request(reader) is not None:
            for piece in [head, *(pieces or [chunked(SSE)])]:
                writer.write(piece)
                await writer.drain()
                if delay_s:
                    await asyncio.sleep(delay_s)

    return handler


def cut(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(12, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def texts(backend: OpenAIBackend, prompt: str = "p") -> list[str]:
    request = GenerateRequest("m", prompt, max_tokens=3, timeout_s=2)
    return [c.text async for c in backend.generate(request)]


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", range(5))
async def test_a_chunked_body_cut_anywhere_reads_the_same(seed: int) -> None:
    async with scripted(keep_alive_sse(cut(chunked(SSE), seed), delay_s=0.001)) as (url, _):
        backend = OpenAIBackend(url)
        try:
            assert await texts(backend) == ["a", "b\u0085", "c", ""]
        finally:
            await backend.aclose()


@given(st.binary(max_size=300), st.integers(1, 50), st.lists(st.integers(0, 400), max_size=10))
def test_the_chunked_decoder_is_indifferent_to_cuts(
    body: bytes, size: int, cuts: list[int]
) -> None:
    wire = chunked(body, size)
    points = sorted({min(c, len(wire)) for c in cuts})
    decoder, out = _Chunked(), b""
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        out += decoder.feed(wire[a:b])
    assert out == body
    assert decoder.state == 4  # done


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\n", b"3\r\nabcX\r\n", b"3\r\nabc\r\n0\r\n\r\nextra"],
    ids=["size", "crlf", "tail"],
)
def test_a_broken_chunked_body_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        _Chunked().feed(wire)


@pytest.mark.asyncio
async def test_connections_are_kept_alive_and_reused() -> None:
    async with scripted(keep_alive_sse()) as (url, accepted):
        backend = OpenAIBackend(url)
        try:
            for i in range(3):
                assert await texts(backend, f"p{i}") == ["a", "b\u0085", "c", ""]
            assert accepted == [0]
            together = await asyncio.gather(*(texts(backend, f"q{i}") for i in range(4)))
            assert all(t == ["a", "b\u0085", "c", ""] for t in together)
            assert len(accepted) == 4  # three more for the ones in flight together
        finally:
            await backend.aclose()


@pytest.mark.asyncio
async def test_an_idle_socket_the_server_closed_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pooled_now, closed = asyncio.Event(), asyncio.Event()

    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        body = chunked(SSE)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        await writer.drain()
        await pooled_now.wait()
        writer.close()  # then it closes the idle connection, as servers do
        await writer.wait_closed()
        closed.set()

    async with scripted(one_answer_then_close) as (url, accepted):
        backend = OpenAIBackend(url)
        lean = backend._lean
        assert lean is not None
        try:
            assert len(await texts(backend)) == 4
            [pooled] = lean._idle
            pooled_now.set()
            await asyncio.wait_for(closed.wait(), 5)
            await wait_until(lambda: not pooled.usable, what="the client seeing the close")
            sent_on_it: list[bytes] = []

            async def record(data: bytes) -> None:
                sent_on_it.append(data)

            monkeypatch.setattr(pooled, "send", record)
            assert len(await texts(backend)) == 4
            assert sent_on_it == []  # dropped from the pool, not tried and retried
            assert pooled.closed
            assert accepted == [0, 1]
        finally:
            pooled_now.set()  # never leave the handler waiting
            await backend.aclose()


def answer_requests(seen: list[int], *, unanswered: Callable[[int], bool]) -> Handler:
    """Answers each request with SSE, but closes the connection, unanswered, on a request
    for which ``unanswered(connection_index)`` holds; ``seen`` gets each request's
    connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        while await read_request(reader) is not None:
            seen.append(i)
            if unanswered(i):
                return
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(chunked(SSE))
            await writer.drain()

    return handler


@pytest.mark.asyncio
async def test_a_kept_alive_socket_the_server_closed_is_retried_once() -> None:
    """The race a pool cannot see coming: the request is sent on a kept-alive socket that the
    server closes (its idle timeout) before answering. It is sent again on a new one."""
    seen: list[int] = []
    second_on_first = answer_requests(seen, unanswered=lambda i: seen.count(0) == 2 and i == 0)
    async with scripted(second_on_first) as (url, accepted):
        backend = OpenAIBackend(url)
        try:
            assert await texts(backend) == ["a", "b\u0085", "c", ""]
            assert await texts(backend, "again") == ["a", "b\u0085", "c", ""]
        finally:
            await backend.aclose()
    assert seen == [0, 0, 1]  # the second request went out on socket 0, then on a new one
    assert accepted == [0, 1]


@pytest.mark.asyncio
async def test_a_new_socket_the_server_closes_is_not_retried() -> None:
    seen: list[int] = []
    async with scripted(answer_requests(seen, unanswered=lambda i: len(seen) > 1)) as (
        url,
        accepted,
    ):
        backend = OpenAIBackend(url)
        try:
            assert len(await texts(backend)) == 4
            with pytest.raises(ProtocolError, match="disconnected without a response"):
                await texts(backend)
        finally:
            await backend.aclose()
    assert seen == [0, 0, 1]  # retried once on a new socket, and not again
    assert accepted == [0, 1]


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["content-length", "close"])
async def test_other_framings(framing: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            length = f"Content-Length: {len(SSE)}" if framing == "content-length" else "X-A: b"
            connection = "Connection: close\r\n" if framing == "close" else ""
            writer.write(f"HTTP/1.1 200 OK\r\n{connection}{length}\r\n\r\n".encode())
            for piece in cut(SSE, 1):
                writer.write(piece)
                await writer.drain()
            if framing == "close":
                return

    async with scripted(answer) as (url, accepted):
        backend = OpenAIBackend(url)
        try:
            for _ in range(2):
                assert await texts(backend) == ["a", "b\u0085", "c", ""]
            assert len(accepted) == (2 if framing == "close" else 1)
        finally:
            await backend.aclose()


@pytest.mark.asyncio
async def test_errors_are_translated_as_for_httpx() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = OpenAIBackend(f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnavailableError, match=f"cannot connect to .*:{port}"):
        await texts(nowhere)
    await nowhere.aclose()

    async def status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        text = b"no model m\nsecond line"
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 404 X\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))

    async with scripted(status) as (url, _):
        backend = OpenAIBackend(url)
        try:
            with pytest.raises(ModelNotFoundError, match=r"404 for model 'm': no model m;"):
                await texts(backend)
            with pytest.raises(ModelNotFoundError):  # the same connection, reused
                await texts(backend)
        finally:
            await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["stall", "reset", "eof"])
async def test_a_stream_that_stops_is_a_timeout_or_a_protocol_error(how: str) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SSE)[:60])
        await writer.drain()
        if how == "stall":
            await reader.read()  # nothing more until the client gives up and hangs up
        elif how == "reset":
            writer.transport.abort()
        else:
            writer.write_eof()

    async with scripted(half) as (url, _):
        backend = OpenAIBackend(url)
        try:
            request = GenerateRequest("m", "p", max_tokens=3, timeout_s=0.2)
            sample = await measure_one(backend, request)
        finally:
            await backend.aclose()
    assert sample.error is not None
    expected = BackendTimeoutError if how == "stall" else ProtocolError
    assert sample.error.startswith(expected.__name__), sample.error


@pytest.mark.asyncio
async def test_pieces_are_stamped_when_read_off_the_socket() -> None:
    async with scripted(keep_alive_sse(cut(chunked(SSE), 2), delay_s=0.01)) as (url, _):
        client = LeanClient(url, connect_timeout_s=1)
        try:
            stamps = []
            async with client.stream_post("/v1/completions", {"a": 1}, timeout_s=2) as response:
                assert response.status_code == 200
                async for _, at_s in response.pieces():
                    stamps.append(at_s)
                    assert at_s <= time.perf_counter()
                    await asyncio.sleep(0.02)  # a busy consumer: the stamp is the arrival
            assert stamps == sorted(stamps)
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            assert min(gaps) < 0.02  # pieces arrived while the consumer slept
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_an_abandoned_stream_does_not_go_back_to_the_pool() -> None:
    async with scripted(keep_alive_sse(cut(chunked(SSE), 3), delay_s=0.01)) as (url, accepted):
        backend = OpenAIBackend(url)
        try:
            stream = backend.generate(GenerateRequest("m", "p", max_tokens=3))
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
            assert await texts(backend) == ["a", "b\u0085", "c", ""]
            assert accepted == [0, 1]
        finally:
            await backend.aclose()


def test_the_lean_path_stands_in_only_where_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert LeanClient.serves("http://127.0.0.1:8080")
    assert not LeanClient.serves("https://example.com")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not LeanClient.serves("http://10.0.0.2:8080")
    monkeypatch.setenv("NO_PROXY", "10.0.0.2")
    assert LeanClient.serves("http://10.0.0.2:8080")
    mocked = OpenAIBackend("http://x", transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    assert mocked._lean is None
    assert OllamaBackend("http://127.0.0.1:1")._lean is None  # proxied, as httpx would
    monkeypatch.delenv("HTTP_PROXY")
    assert OllamaBackend("http://127.0.0.1:1")._lean is not None


@pytest.mark.asyncio
async def test_ollama_over_the_lean_path_with_a_path_prefix() -> None:
    """Ollama streams through the lean path, and a base URL with a path (a reverse proxy)
    keeps its prefix on the streamed POST."""
    with FakeOllama({"qwen3:8b": FakeModel()}, ttft_s=0.01, itl_s=0.001) as fake:
        backend = OllamaBackend(fake.url)
        assert backend._lean is not None
        try:
            sample = await measure_one(backend, GenerateRequest("qwen3:8b", "hi there", 6))
        finally:
            await backend.aclose()
    assert (sample.output_tokens, sample.finish_reason) == (6, "length")

    heads: list[bytes] = []

    async def no_such_model(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        while (got := await read_request(reader)) is not None:
            heads.append(got[0])
            body = b'{"error":"model not found"}'
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()

    async with scripted(no_such_model) as (url, _):
        prefixed = OllamaBackend(f"{url}/ollama/")
        assert prefixed._lean is not None
        try:
            with pytest.raises(ModelNotFoundError):
                async for _ in prefixed.generate(GenerateRequest("m", "p", max_tokens=2)):
                    pass
        finally:
            await prefixed.aclose()
    assert heads[0].startswith(b"POST /ollama/api/generate HTTP/1.1\r\n")


@pytest.mark.asyncio
async def test_server_error_status_keeps_the_first_line() -> None:
    async def fail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        body = b'{"error":"model runner crashed\\nstack"}'
        writer.write(
            b"HTTP/1.1 500 X\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)

    async with scripted(fail) as (url, _):
        backend = OllamaBackend(url)
        try:
            with pytest.raises(ServerError, match=r"HTTP 500: model runner crashed$"):
                async for _ in backend.generate(GenerateRequest("m", "p", max_tokens=2)):
                    pass
        finally:
            await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel-stamps", "read-stamps"])
async def test_a_blocked_loop_does_not_delay_the_kernel_stamp(kernel: bool) -> None:
    """A token that arrives while the event loop is busy keeps its arrival time (Linux)."""
    if kernel and not KERNEL_TIMESTAMPS:
        pytest.skip("no kernel receive timestamps on this platform")
    args = ("--ttft-ms", "20", "--itl-ms", "30", "--tokens", "3")
    with serve_in_process(*args) as url:
        client = LeanClient(url, connect_timeout_s=5, kernel_timestamps=kernel)
        body = {"model": "m", "prompt": "p", "max_tokens": 3, "stream": True}
        stamps: list[float] = []
        unblocked = 0.0
        try:
            async with client.stream_post("/v1/completions", body, timeout_s=5) as response:
                async for _, at_s in response.pieces():
                    stamps.append(at_s)
                    if len(stamps) == 1:  # the next token is due in 30 ms: block for 45
                        time.sleep(0.045)  # noqa: ASYNC251 -- blocks the loop on purpose
                        unblocked = time.perf_counter()
        finally:
            await client.aclose()
        [record] = records(url)
    sent = record.write_s[1]  # the server's stamp, on the same clock
    if kernel:
        assert sent - 0.001 < stamps[1] < sent + 0.005
    else:
        assert stamps[1] >= unblocked
