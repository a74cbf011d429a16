"""Fixtures for tests against real engines: a tiny synthetic model and a real server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmgauge.catalog import Architecture

# The real Qwen3 vocabulary and tokenizer on a tiny body: loads in milliseconds, decodes fast.
TINY_QWEN3 = Architecture(
    name="lmgauge-tiny-qwen3",
    gguf_arch="qwen3",
    n_layers=2,
    hidden_size=256,
    intermediate_size=512,
    n_heads=4,
    n_kv_heads=2,
    head_dim=64,
    vocab_size=151936,
    tied_embeddings=True,
    native_context=4096,
    max_context=4096,
    published_params=0.0,
)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], Path]:
    """Build (once, cached under ~/.cache/lmgauge/models) a GGUF of TINY_QWEN3 at a quant."""
    pytest.importorskip(
        "llama_cpp", reason="the embedded engine is not installed: run scripts/setup.sh"
    )
    from lmgauge.synthetic import synthetic_gguf

    return lambda quantization: synthetic_gguf(TINY_QWEN3, quantization)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model: Callable[[str], Path]) -> Path:
    """The tiny model at Q8_0."""
    return tiny_model("Q8_0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _server_process(
    name: str,
    command: list[str],
    ready_path: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start a real server on a free loopback port and yield its URL once ``ready_path``
    answers 200. ``command`` holds ``{port}``. Its log is printed at teardown, so pytest
    shows it when a test fails."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not ready in 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"--- {name} log ({log_path}) ---\n{log_path.read_text()[-5000:]}")


@pytest.fixture(scope="session")
def server_process() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``server_process(name, command, ready_path, log_path, env=...)``: see _server_process."""
    return _server_process


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server (the real one) on a free loopback port."""
    pytest.importorskip("uvicorn", reason="the server needs llama-cpp-python[server]")
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(tiny_gguf),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--n_threads",
        "2",
        "--n_ctx",
        "2048",
    ]
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    with _server_process("llama_cpp.server", command, "/v1/models", log_path) as url:
        yield url


@pytest.fixture(autouse=True)
def _no_github_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytest runs these tests start would append their verdict tables to GitHub's job
    summary; keep that for the real benchmark runs."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session")
def postgres() -> Any:
    """A real PostgreSQL server for the session (lmgauge.testing.postgres), or a skip that
    says why none could start."""
    from lmgauge.testing.postgres import PostgresUnavailableError, shared_server

    try:
        return shared_server()
    except PostgresUnavailableError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty results store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    url: str = request.getfixturevalue("postgres").new_database()
    return url
