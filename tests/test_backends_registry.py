"""backends.get() by name and ``auto`` detection on loopback."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from lmgauge import backends
from lmgauge.backends.llamacpp import LlamaCppBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.errors import ConfigError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


class _VersionOnly(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/api/version"
        body = json.dumps({"version": "0.33.0"} if found else {"error": "not found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answers_api_version() -> Iterator[str]:
    """A stub that answers only GET /api/version, as Ollama does (not a fake of Ollama)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VersionOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'olama'; use one of: auto, llamacpp"):
        backends.get("olama")


@pytest.mark.asyncio
async def test_backends_by_name() -> None:
    assert isinstance(backends.get("llamacpp"), LlamaCppBackend)
    client = backends.get("openai", base_url="http://127.0.0.1:9")
    assert isinstance(client, OpenAIBackend)
    assert client.base_url == "http://127.0.0.1:9"
    await client.aclose()
    with pytest.raises(ConfigError, match="runs in-process and takes no base URL"):
        backends.get("llamacpp", base_url="http://127.0.0.1:9")


@pytest.mark.asyncio
async def test_auto_falls_back_to_the_embedded_engine_and_says_why() -> None:
    urls = {
        "ollama": f"http://127.0.0.1:{_closed_port()}",
        "lmstudio": f"http://127.0.0.1:{_closed_port()}",
    }
    detection = await backends.detect(urls=urls)
    assert detection.name == "llamacpp"
    assert detection.reason.startswith("no server answered")
    assert "ConnectError" in detection.probes["ollama"]
    assert "embedded llama.cpp engine" in detection.reason


@pytest.mark.asyncio
async def test_auto_picks_a_server_that_answers(answers_api_version: str) -> None:
    detection = await backends.detect(
        urls={"ollama": answers_api_version, "lmstudio": f"http://127.0.0.1:{_closed_port()}"}
    )
    assert detection.name == "ollama"
    assert detection.base_url == answers_api_version
    assert detection.reason == f"ollama answered {answers_api_version}/api/version"
