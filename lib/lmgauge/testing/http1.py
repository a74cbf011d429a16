"""The little HTTP/1.1 the token server needs, on asyncio streams: requests with a
Content-Length body, keep-alive, JSON answers and chunked streams."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
LAST_CHUNK = b"0\r\n\r\n"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise BadRequest(400, f"the body is not JSON: {exc}") from exc


def check_loopback(host: str) -> None:
    """ValueError unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the token server binds loopback only (127.0.0.1, ::1, localhost), not {host!r}: "
            "it exists to calibrate a client on the same host"
        )


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection; None once the client has closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest(400, "the connection closed inside a request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(431, "request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise BadRequest(400, f"bad request line {lines[0][:80]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(411, "send the body with a Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadRequest(400, "bad Content-Length") from exc
    if not 0 <= length <= MAX_BODY_BYTES:
        raise BadRequest(413, f"a body of {length} bytes is out of bounds")
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return Request(method, target.split("?", 1)[0], headers, body, keep_alive)


def response(
    status: int, body: bytes, content_type: str, *, keep_alive: bool = True, **headers: str
) -> bytes:
    """A whole response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, obj: Any, *, keep_alive: bool = True, **headers: str) -> bytes:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return response(status, body, "application/json", keep_alive=keep_alive, **headers)


def stream_head(content_type: str, **headers: str) -> bytes:
    """The head of a 200 answer streamed in chunked encoding."""
    lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Transfer-Encoding: chunked"]
    lines.extend(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never empty: the empty chunk ends the body)."""
    return b"%X\r\n%s\r\n" % (len(data), data)
