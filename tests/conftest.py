"""Fixtures for tests against real engines: a tiny synthetic model and a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server (the real one) on a free loopback port.

    Its log is printed at teardown, so pytest shows it when a test fails.
    """
    pytest.importorskip("uvicorn", reason="the server needs llama-cpp-python[server]")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(tiny_gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                "2",
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {process.returncode}:\n"
                    f"{log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"--- llama_cpp.server log ({log_path}) ---\n{log_path.read_text()[-5000:]}")
