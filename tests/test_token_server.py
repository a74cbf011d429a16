"""The calibrated token server: both protocols as lmgauge's own backends read them, the
schedule it keeps and records, its faults, and its loopback-only rule."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import pytest_asyncio

from lmgauge.backends.base import Backend, GenerateRequest, LoadSettings
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.errors import ModelNotFoundError, ServerError
from lmgauge.measure import Sample, measure_one
from lmgauge.testing import Fault, Schedule, TokenServer, control, records, serve_in_thread
from lmgauge.testing.encoders import word
from lmgauge.testing.fidelity import Burst, StampedBackend, compare
from lmgauge.testing.serving import serve_in_process
from lmgauge.testing.token_server import main

MODEL = "qwen3:0.6b"
SCHEDULE = Schedule(ttft_s=0.030, itl_s=0.010, jitter_s=0.002, max_tokens=None, seed=7)
PROTOCOLS = [("openai", False), ("openai", True), ("ollama", False), ("ollama", True)]
IDS = ["completions", "chat-completions", "api-generate", "api-chat"]


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with serve_in_thread(SCHEDULE) as running:
        yield running


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Callable[[str, str], Backend]]:
    opened: list[Backend] = []

    def make(kind: str, url: str) -> Backend:
        backend = OpenAIBackend(url) if kind == "openai" else OllamaBackend(url)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.aclose()


async def _sample(backend: Backend, prompt: str, tokens: int = 12, chat: bool = False) -> Sample:
    request = GenerateRequest(MODEL, prompt, max_tokens=tokens, timeout_s=10, chat=chat)
    return await measure_one(backend, request)


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "chat"), PROTOCOLS, ids=IDS)
async def test_both_protocols_read_by_the_suites_backends(
    server: TokenServer, connect: Callable[[str, str], Backend], kind: str, chat: bool
) -> None:
    backend = connect(kind, server.url)
    sample = await _sample(backend, "count these four words", chat=chat)
    assert sample.valid, sample.invalid_reason
    assert (sample.output_tokens, sample.finish_reason, len(sample.itl_s)) == (12, "length", 11)
    assert sample.server is not None
    assert sample.server.prompt_tokens == 4
    assert sample.server.output_tokens == 12
    [record] = server.records
    assert (record.prompt, record.model, record.finish_reason) == (
        "count these four words",
        MODEL,
        "length",
    )
    assert len(record.sent_s) == 12
    if kind == "ollama":  # durations measured on the real send schedule
        decode_s = record.sent_s[-1] - record.sent_s[0]
        assert sample.server.decode_s == pytest.approx(decode_s, abs=1e-6)
        assert sample.server.decode_tokens == 11


@pytest.mark.asyncio
async def test_client_timings_match_the_send_records() -> None:
    """In its own process (in a thread, the GIL would delay its stamps by up to 5 ms), the
    server's send times and the client's timings agree; bounds are loose: CI is noisy."""
    args = ("--ttft-ms", "30", "--itl-ms", "10", "--jitter-ms", "2", "--seed", "7")
    with serve_in_process(*args) as url:
        for kind, chat in PROTOCOLS:
            backend = StampedBackend(OpenAIBackend(url) if kind == "openai" else OllamaBackend(url))
            try:
                sample = await _sample(backend, f"{kind} {chat}", chat=chat)
            finally:
                await backend.aclose()
            assert sample.valid, sample.invalid_reason
            [record] = [
                r for r in await asyncio.to_thread(records, url) if r.prompt == f"{kind} {chat}"
            ]
            assert record.done_s is not None
            one = Burst([sample], backend.starts, [record.prompt], 0.0, 0.0)
            fidelity = compare([one], [record])
            assert fidelity.unmatched == 0
            assert 0 < fidelity.dispatch_ms[0] < 50
            assert -1 < fidelity.ttft_error_ms[0] < 50
            assert -1 < fidelity.e2e_error_ms[0] < 50
            assert fidelity.itl_error_ms[1] < 50


@pytest.mark.asyncio
async def test_text_of_the_tokens_and_the_request_id(server: TokenServer) -> None:
    backend = OpenAIBackend(server.url)
    try:
        chunks = [c async for c in backend.generate(GenerateRequest(MODEL, "p", max_tokens=16))]
    finally:
        await backend.aclose()
    assert "".join(c.text for c in chunks) == "".join(word(k) for k in range(16))  # U+0085 too
    async with httpx.AsyncClient() as client:
        body = {"model": MODEL, "prompt": "q", "max_tokens": 2, "stream": True}
        answer = await client.post(f"{server.url}/v1/completions", json=body)
    assert answer.headers["content-type"] == "text/event-stream"
    request_id = answer.headers["x-request-id"]
    assert f'"id":"{request_id}"' in answer.text
    assert answer.text.endswith("data: [DONE]\n\n")
    assert "usage" not in answer.text  # only when stream_options.include_usage
    assert server.records[-1].id == request_id


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_cap_below_the_request_is_a_stop(
    connect: Callable[[str, str], Backend], kind: str
) -> None:
    with serve_in_thread(Schedule(ttft_s=0.005, itl_s=0.001, max_tokens=5)) as server:
        sample = await _sample(connect(kind, server.url), "p", tokens=9)
    assert (sample.output_tokens, sample.finish_reason) == (5, "stop")
    assert sample.invalid_reason is not None
    assert sample.invalid_reason.startswith("early stop")


@pytest.mark.asyncio
async def test_the_ollama_control_calls(server: TokenServer) -> None:
    backend = OllamaBackend(server.url)
    try:
        assert (await backend.info()).version.startswith("ollama ")
        load = await backend.load(MODEL, LoadSettings(context_tokens=2048))
        assert not load.already_loaded
        listed = {m.name: m for m in await backend.list_models()}
        assert listed[MODEL].loaded
        assert listed[MODEL].context_tokens == 2048
        assert (await backend.memory()).model_bytes
        await backend.unload(MODEL)
        assert not any(m.loaded for m in await backend.list_models())
    finally:
        await backend.aclose()
    async with httpx.AsyncClient(base_url=server.url) as client:
        shown = (await client.post("/api/show", json={"model": MODEL})).json()
        assert shown["capabilities"] == ["completion"]
        assert (await client.get("/nowhere")).status_code == 404


@pytest.mark.asyncio
async def test_the_openai_control_calls(server: TokenServer) -> None:
    backend = OpenAIBackend(server.url)
    try:
        assert (await backend.info()).version == "lmgauge token server"
        assert [m.name for m in await backend.list_models()] == ["lmgauge/token-server"]
        assert (await backend.load(MODEL, LoadSettings())).load_s > SCHEDULE.ttft_s
    finally:
        await backend.aclose()


def test_offsets_are_seeded_bounded_and_never_go_back() -> None:
    schedule = Schedule(ttft_s=0.05, itl_s=0.001, jitter_s=0.002, seed=3)
    offsets = schedule.offsets(5, 200)
    assert offsets == schedule.offsets(5, 200)
    assert offsets != schedule.offsets(6, 200)
    assert all(b >= a for a, b in itertools.pairwise(offsets))
    for k, offset in enumerate(offsets):
        assert offset <= 0.05 + k * 0.001 + 0.002 + 1e-12
        assert offset >= 0.05 + k * 0.001 - 0.002 - 1e-12
    assert Schedule(itl_s=0.01).offsets(0, 3) == pytest.approx([0.05, 0.06, 0.07])
    assert Schedule(max_tokens=8).tokens(100) == 8
    assert Schedule().tokens(None) == 16
    with pytest.raises(ValueError, match="unknown schedule keys"):
        Schedule.from_json({"itl": 3})
    with pytest.raises(ValueError, match="itl_s must be"):
        Schedule(itl_s=-1)


@pytest.mark.asyncio
async def test_send_times_follow_the_deadlines_and_can_be_fetched() -> None:
    args = ("--ttft-ms", "30", "--itl-ms", "10", "--jitter-ms", "2", "--seed", "7")
    with serve_in_process(*args) as url:
        backend = OllamaBackend(url)
        try:
            samples = await asyncio.gather(*(_sample(backend, f"r{i}", 20) for i in range(3)))
        finally:
            await backend.aclose()
        assert all(s.valid for s in samples)
        fetched = await asyncio.to_thread(records, url)
        assert sorted(r.prompt for r in fetched) == ["r0", "r1", "r2"]
        for record in fetched:
            expected = SCHEDULE.offsets(int(record.id.rsplit("-", 1)[1]), 20)
            assert [d - record.received_s for d in record.due_s] == pytest.approx(expected)
            assert len(record.write_s) == len(record.sent_s) == 20
            assert all(w <= s for w, s in zip(record.write_s, record.sent_s, strict=True))
            late = sorted(s - d for s, d in zip(record.write_s, record.due_s, strict=True))
            assert late[0] >= 0  # never before its deadline
            assert late[len(late) // 2] < 0.005  # and, on an idle run, a few ms after at most
            assert late[-1] < 0.100
        await asyncio.to_thread(control, url, "reset")
        assert await asyncio.to_thread(records, url) == []


def test_perf_counter_is_one_clock_across_processes() -> None:
    """The server's send times and the client's arrival times are comparable."""
    if sys.platform == "linux":
        assert time.get_clock_info("perf_counter").implementation == (
            "clock_gettime(CLOCK_MONOTONIC)"
        )
    before = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", "import time; print(repr(time.perf_counter()))"],
        capture_output=True,
        text=True,
        check=True,
    )
    after = time.perf_counter()
    assert before < float(child.stdout) < after


def test_the_command_line_server_prints_its_url_and_serves() -> None:
    args = ("--ttft-ms", "5", "--itl-ms", "1", "--jitter-ms", "0.5", "--tokens", "3", "--seed", "1")
    with serve_in_process(*args) as url:
        assert url.startswith("http://127.0.0.1:")
        body = {"model": MODEL, "prompt": "hello", "stream": True, "options": {"num_predict": 8}}
        text = httpx.post(f"{url}/api/generate", json=body, timeout=10).text
        lines = text.splitlines()
        assert len(lines) == 4  # capped at 3 tokens, then the final object
        assert '"done":true' in lines[-1]
        assert '"done_reason":"stop"' in lines[-1]
        assert '"eval_count":3' in lines[-1]
        [record] = records(url)
        assert len(record.sent_s) == 3
        assert control(url, "config", {"itl_ms": 2, "tokens": None})["itl_s"] == 0.002


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_status_fault_hits_the_next_n_requests_only(
    server: TokenServer, connect: Callable[[str, str], Backend], kind: str
) -> None:
    backend = connect(kind, server.url)
    await asyncio.to_thread(
        control, server.url, "fault", {"status": 500, "body": "boom", "count": 2}
    )
    for prompt in ("a", "b"):
        with pytest.raises(ServerError, match=r"HTTP 500: .*boom") as error:
            async for _ in backend.generate(GenerateRequest(MODEL, prompt, max_tokens=2)):
                pass
        assert error.value.status_code == 500
    assert (await _sample(backend, "c", 2)).valid
    server.fault = Fault(status=404, body="no such model")
    with pytest.raises(ModelNotFoundError):
        async for _ in backend.generate(GenerateRequest(MODEL, "d", max_tokens=2)):
            pass
    server.fault = Fault(status=503)
    with pytest.raises(ServerError) as busy:
        async for _ in backend.generate(GenerateRequest(MODEL, "e", max_tokens=2)):
            pass
    assert busy.value.status_code == 503
    if kind == "ollama":
        assert "OLLAMA_MAX_QUEUE" in str(busy.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(malformed_after=3), "ProtocolError: .*not JSON"),
        (Fault(disconnect_after=3), "ProtocolError: .*connection broke mid-response"),
        (Fault(stall_after=3, stall_s=2.0), "BackendTimeoutError: .*sent nothing"),
    ],
    ids=["malformed", "disconnect", "stall"],
)
async def test_stream_faults_after_k_tokens(
    server: TokenServer,
    connect: Callable[[str, str], Backend],
    kind: str,
    fault: Fault,
    error: str,
) -> None:
    backend = connect(kind, server.url)
    server.fault = fault
    request = GenerateRequest(MODEL, "faulty", max_tokens=8, timeout_s=0.3)
    sample = await measure_one(backend, request)
    assert not sample.ok
    assert sample.output_tokens == 3
    assert sample.error is not None
    assert re.search(error, sample.error), sample.error
    assert (await _sample(backend, "after", 4)).valid  # the next request is served
    assert server.records[0].fault is not None


@pytest.mark.asyncio
async def test_a_stall_is_in_the_record(
    server: TokenServer, connect: Callable[[str, str], Backend]
) -> None:
    server.fault = Fault(stall_after=2, stall_s=0.2)
    sample = await _sample(connect("openai", server.url), "slow", 5)
    assert sample.valid
    assert 0.19 < sample.itl_s[1] < 0.3  # the gap before the third token
    [record] = server.records
    assert 0.19 < record.due_s[2] - record.due_s[1] < 0.22


def test_faults_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault keys"):
        Fault.from_json({"status": 500, "colour": "red"})
    with pytest.raises(ValueError, match="HTTP error status"):
        Fault.from_json({"status": 200})


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_only_loopback_is_served(host: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        TokenServer(host=host)
    with pytest.raises(SystemExit, match="loopback only"):
        main(["--host", host])
    for loopback in ("127.0.0.1", "::1", "localhost"):
        TokenServer(host=loopback)
