"""A lean HTTP/1.1 client for the one call that must keep up: the streamed POST.

httpx is kept for control calls. Streaming through it costs ~100 us of CPU a token and,
with 64 streams in one burst, held requests back for up to a quarter of a second before
they reached the wire (benchmarks/test_harness_fidelity.py; encode/httpx#3215). Here every
piece of bytes comes with its arrival time (stamped_socket.py: the kernel's receive time
where there is one), and bodies (chunked, Content-Length or up to EOF) come out as
``(bytes, arrival time)`` pieces. Connections are kept alive in a pool and a body is
always read to its end, so the next request does not pay a connect in its TTFT.

Failures are raised as httpx's exceptions (ConnectError, ConnectTimeout, ReadTimeout,
ReadError, RemoteProtocolError), so the backends translate both paths in one place.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from lmgauge.backends.gc_pause import gc_paused
from lmgauge.backends.stamped_socket import KERNEL_TIMESTAMPS, StampedConnection, connect

MAX_HEAD_BYTES = 64 * 1024
_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class _Chunked:
    """Incremental decoder of a chunked body."""

    def __init__(self) -> None:
        self.state, self.left, self.buffer = _SIZE, 0, b""

    def feed(self, data: bytes) -> bytes:
        """The payload bytes ``data`` completes; ``state`` is _DONE after the last chunk."""
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        at, end = 0, len(buffer)
        while at < end:
            if self.state == _DATA:
                take = min(self.left, end - at)
                out.append(buffer[at : at + take])
                at += take
                self.left -= take
                if not self.left:
                    self.state = _CRLF
                continue
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                if end - at > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("a chunk header line is too long")
                break
            line, at = buffer[at:line_end], line_end + 2
            if self.state == _CRLF:
                if line:
                    raise httpx.RemoteProtocolError(f"no CRLF after a chunk: {line[:40]!r}")
                self.state = _SIZE
            elif self.state == _SIZE:
                try:
                    self.left = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad chunk size {line[:40]!r}") from None
                self.state = _DATA if self.left else _TRAILER
            elif not line:  # the blank line that ends the trailers
                self.state = _DONE
                if at < end:
                    raise httpx.RemoteProtocolError("bytes after the end of a chunked body")
        self.buffer = buffer[at:]
        return b"".join(out) if len(out) != 1 else out[0]


class LeanResponse:
    """A response whose head has been read; its body comes out in stamped pieces."""

    def __init__(
        self, connection: StampedConnection, status: int, headers: httpx.Headers, timeout_s: float
    ) -> None:
        self.status_code, self.headers = status, headers
        self._connection, self._timeout_s = connection, timeout_s
        self._chunked: _Chunked | None = None
        self._left: int | None = None  # Content-Length still to read; None: up to EOF
        self.complete = False
        if status in (204, 304) or status < 200:
            self._left = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = _Chunked()
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise httpx.RemoteProtocolError("a bad Content-Length") from None
        self.complete = self._left == 0
        connection_header = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection_header and (
            self._chunked is not None or self._left is not None
        )

    async def pieces(self) -> AsyncIterator[tuple[bytes, float]]:
        """(bytes, perf_counter() when they were read off the socket), to the body's end."""
        read, timeout_s = self._connection.read, self._timeout_s
        while not self.complete:
            piece = await read(timeout_s)
            if piece is None:
                if self._chunked is None and self._left is None:
                    self.complete = True
                    return
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            data, at_s = piece
            if self._chunked is not None:
                data = self._chunked.feed(data)
                self.complete = self._chunked.state == _DONE
            elif self._left is not None:
                if len(data) > self._left:
                    raise httpx.RemoteProtocolError("more bytes than the Content-Length")
                self._left -= len(data)
                self.complete = self._left == 0
            if data:
                yield data, at_s

    async def aread(self) -> bytes:
        return b"".join([data async for data, _ in self.pieces()])

    async def as_httpx(self) -> httpx.Response:
        """The whole response, read, as an httpx.Response (for error statuses)."""
        content = await self.aread()
        return httpx.Response(self.status_code, headers=self.headers, content=content)


class LeanClient:
    """Streamed POSTs to one ``http://host:port`` origin over a pool of kept-alive sockets."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float,
        kernel_timestamps: bool = KERNEL_TIMESTAMPS,
    ) -> None:
        url = httpx.URL(base_url)
        self.kernel_timestamps = kernel_timestamps
        self.base_url = str(url).rstrip("/")
        self.host, self.port = url.host, url.port or 80
        self._prefix = url.raw_path.rstrip(b"/").decode("ascii")
        self.connect_timeout_s = connect_timeout_s
        host_header = url.netloc.decode("ascii")
        fixed = {"Host": host_header, "Accept": "*/*", "User-Agent": "lmgauge"}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {**fixed, **(headers or {})}.items())
        self._idle: list[StampedConnection] = []
        self._closed = False

    @staticmethod
    def serves(base_url: str) -> bool:
        """Whether this client can stand in for httpx: plain http, and no proxy on the way."""
        url = httpx.URL(base_url)
        if url.scheme != "http":
            return False
        proxies = urllib.request.getproxies_environment()
        if not (proxies.get("http") or proxies.get("all")):
            return True
        return bool(urllib.request.proxy_bypass(url.host))

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> StampedConnection:
        return await connect(
            self.host, self.port, self.connect_timeout_s, kernel_timestamps=self.kernel_timestamps
        )

    def _release(self, connection: StampedConnection, response: LeanResponse | None) -> None:
        connection.idle()
        reusable = response is not None and response.complete and response.keep_alive
        if reusable and not self._closed and connection.usable:
            connection.reused = True
            self._idle.append(connection)
        else:
            connection.close()

    async def _head_of(
        self, connection: StampedConnection, timeout_s: float
    ) -> LeanResponse | None:
        """The response head; None if the connection closed before sending a byte."""
        buffer = b""
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large")
            piece = await connection.read(timeout_s)
            if piece is None:
                if not buffer:
                    return None
                raise httpx.RemoteProtocolError("server disconnected inside the response head")
            buffer, at_s = buffer + piece[0], piece[1]
        if end + 4 < len(buffer):
            connection.unread(buffer[end + 4 :], at_s)
        status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        try:
            status = int(rest[:3])
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad status line {status_line[:80]!r}") from None
        fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        response = LeanResponse(connection, status, httpx.Headers(fields), timeout_s)
        if version != "HTTP/1.1" and "keep-alive" not in response.headers.get("connection", ""):
            response.keep_alive = False
        return response

    @contextlib.asynccontextmanager
    async def stream_post(
        self, path: str, body: Any, *, timeout_s: float
    ) -> AsyncIterator[LeanResponse]:
        """POST ``body`` as JSON; the response once its head is in. Read its body to the end
        to give the connection back to the pool."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        data = payload.encode()
        head = f"POST {self._prefix}{path} HTTP/1.1\r\n{self._head}"
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        message = head.encode("latin-1") + data
        while True:
            if self._idle:
                connection = self._idle.pop()
                if not connection.usable:
                    connection.close()
                    continue
            else:
                connection = await self._connect()
            response: LeanResponse | None = None
            try:
                try:
                    await connection.send(message)
                except httpx.WriteError:
                    if not connection.reused:
                        raise
                    continue  # a kept-alive socket the server had closed: retry
                response = await self._head_of(connection, timeout_s)
                if response is None:
                    if connection.reused:  # a kept-alive socket the server had closed: retry
                        continue
                    raise httpx.RemoteProtocolError("server disconnected without a response")
                yield response
                return
            finally:
                self._release(connection, response)


class HttpxStream:
    """The same surface over an httpx streamed response (tests inject httpx.MockTransport)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code, self.headers = response.status_code, response.headers
        self._response = response

    async def pieces(self) -> AsyncIterator[tuple[bytes, float]]:
        async for data in self._response.aiter_bytes():  # to its end: keeps the connection
            yield data, time.perf_counter()

    async def as_httpx(self) -> httpx.Response:
        await self._response.aread()
        return self._response


@contextlib.asynccontextmanager
async def stream_post(
    client: httpx.AsyncClient, lean: LeanClient | None, path: str, body: Any, *, timeout_s: float
) -> AsyncIterator[LeanResponse | HttpxStream]:
    """POST ``body`` as JSON and stream the answer: through ``lean`` where there is one,
    else through ``client`` (read timeout ``timeout_s``, its other timeouts as they are).
    No garbage collection runs while it is open (gc_pause.py)."""
    with gc_paused():
        if lean is not None:
            async with lean.stream_post(path, body, timeout_s=timeout_s) as response:
                yield response
            return
        timeout = httpx.Timeout(client.timeout.connect, read=timeout_s, write=30.0, pool=30.0)
        async with client.stream("POST", path, json=body, timeout=timeout) as streamed:
            yield HttpxStream(streamed)
