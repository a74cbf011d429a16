"""Misbehaving servers: every failure is a recorded sample with a clear message, and
nothing measured is lost.

The misbehaving server is lmgauge's token server (``lmgauge.testing``): a loopback server
speaking Ollama's NDJSON and the OpenAI-compatible SSE protocol, misbehaving on command.
Requests go through the suite's own backends and ``measure_one``, as in a benchmark run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from lmgauge.backends.base import Backend, GenerateRequest
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.measure import measure_one
from lmgauge.report import load_report
from lmgauge.testing.schedule import Schedule
from lmgauge.testing.serving import control, serve_in_process, serve_in_thread

PROTOCOLS: dict[str, Callable[[str], Backend]] = {
    "ollama": OllamaBackend,
    "openai": OpenAIBackend,
}
MODEL = "lmgauge/token-server"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(Schedule(ttft_s=0.005, itl_s=0.002)) as server:
        yield server.url


@pytest_asyncio.fixture(params=sorted(PROTOCOLS))
async def client(request: pytest.FixtureRequest, url: str) -> AsyncIterator[Backend]:
    control(url, "fault", {})
    backend = PROTOCOLS[request.param](url)
    yield backend
    await backend.aclose()
    control(url, "fault", {})


def ask(tokens: int = 8, timeout_s: float = 5.0) -> GenerateRequest:
    return GenerateRequest(MODEL, f"prompt {time.monotonic_ns()}", tokens, timeout_s=timeout_s)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_1_connection_refused(protocol: str) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    backend = PROTOCOLS[protocol](base)
    try:
        sample = await measure_one(backend, ask(), backoff_s=())
    finally:
        await backend.aclose()
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith(f"BackendUnavailableError: cannot connect to {base}/")
    assert "running" in sample.error  # and how to start it


@pytest.mark.asyncio
async def test_2_http_500_shows_the_first_line_of_its_body(client: Backend, url: str) -> None:
    control(url, "fault", {"status": 500, "body": "runner crashed: out of memory\ngoroutine 1"})
    sample = await measure_one(client, ask(), backoff_s=())
    assert sample.error is not None
    assert "answered HTTP 500: " in sample.error
    assert "runner crashed: out of memory" in sample.error
    assert "goroutine" not in sample.error
    assert (await measure_one(client, ask(), backoff_s=())).ok  # the next one is served


@pytest.mark.asyncio
async def test_3_queue_full_is_retried_with_backoff_then_recorded(
    client: Backend, url: str
) -> None:
    control(url, "fault", {"status": 503, "count": 2})
    served = await measure_one(client, ask(), backoff_s=(0.01, 0.02, 0.04))
    assert served.ok
    assert len(served.metadata["retries"]) == 2
    control(url, "fault", {"status": 503, "count": 10})
    refused = await measure_one(client, ask(), backoff_s=(0.01, 0.02))
    assert not refused.ok
    assert refused.error is not None
    assert "answered" in refused.error
    assert "503" in refused.error
    assert refused.error.endswith(
        "(gave up after 2 retries: HTTP 503, waited 0.01 s; HTTP 503, waited 0.02 s)"
    )


@pytest.mark.asyncio
async def test_4_a_malformed_line_keeps_the_tokens_before_it(client: Backend, url: str) -> None:
    control(url, "fault", {"malformed_after": 3})
    sample = await measure_one(client, ask(), backoff_s=())
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith("ProtocolError: ")
    assert sample.output_tokens == 3  # measured before the garbage: kept
    assert sample.ttft_s is not None


@pytest.mark.asyncio
async def test_5_a_disconnect_mid_stream(client: Backend, url: str) -> None:
    control(url, "fault", {"disconnect_after": 4})
    sample = await measure_one(client, ask(), backoff_s=())
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith("ProtocolError: ")
    assert "broke" in sample.error or "closed" in sample.error
    assert sample.output_tokens == 4


@pytest.mark.asyncio
async def test_6_a_stall_past_the_read_timeout(client: Backend, url: str) -> None:
    control(url, "fault", {"stall_after": 2, "stall_s": 3.0})
    started = time.monotonic()
    sample = await measure_one(client, ask(timeout_s=0.5), backoff_s=())
    assert time.monotonic() - started < 2.5  # the timeout ended it, not the server
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith("BackendTimeoutError: ")
    assert "within" in sample.error
    assert sample.output_tokens == 2


SUITE = """
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")


def test_error_rate(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "error_rate_ratio")
"""


def _samples(reports: Path) -> int:
    for path in reports.glob("*.json"):
        data = json.loads(path.read_text())
        return sum(len(c.get("samples", [])) for c in data["cases"].values())
    return 0


def test_7_a_server_killed_mid_run(tmp_path: Path) -> None:
    """The server process is killed while the first of two cases is being measured: that
    case records the failed requests, the second fails to load with the reason, the run
    ends, and the report holds what happened."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    reports = tmp_path / "reports"
    with serve_in_process("--ttft-ms", "20", "--itl-ms", "20") as url:
        pid = httpx.get(f"{url}/_lmgauge/status").json()["pid"]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--lmgauge-backend=ollama",
                f"--lmgauge-url={url}",
                "--lmgauge-models=qwen3-7b",
                "--lmgauge-quants=Q4_K_M",
                "--lmgauge-contexts=4096,8192",
                "--lmgauge-samples=40",
                "--lmgauge-max-tokens=8",
                f"--lmgauge-report-dir={reports}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        try:
            deadline = time.monotonic() + 60
            while _samples(reports) < 5:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            output = process.communicate(timeout=120)[0].decode()
        finally:
            process.kill()
    assert process.returncode == pytest.ExitCode.TESTS_FAILED, output
    report = load_report(next(reports.glob("*.json")))
    assert report["status"] == "complete"
    first, second = report["cases"].values()
    errors = [s for s in first["samples"] if not s["ok"]]
    assert [s for s in first["samples"] if s["ok"]], "the samples before the kill are kept"
    assert errors
    assert "cannot connect" in errors[-1]["error"]
    assert "cannot connect" in second["error"]
    assert "error_rate_ratio" in output
    assert "threshold breach" in output  # seed 001's 2% error rate
