"""The calibrated token server: both protocols as lmgauge's own backends read them, the
schedule it keeps and records (with its slowdown, drift and noise), its faults, and its
loopback-only rule."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

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
from lmgauge.testing.serving import schedule_args, serve_in_process
from lmgauge.testing.token_server import main, schedule_from_args, setup_arg_parser

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


def test_the_factor_is_slowdown_times_drift_times_noise() -> None:
    drift = Schedule(drift_amplitude=0.2, drift_period_s=180, drift_epoch=1000.0)
    assert drift.drift(1000.0) == 1.0  # sin(0)
    assert drift.drift(1000.0 + 45) == pytest.approx(1.2)  # a quarter period on
    assert drift.drift(1000.0 + 135) == pytest.approx(0.8)
    assert drift.drift(1000.0 + 180 + 45) == pytest.approx(1.2)  # periodic
    swing = [drift.drift(1000.0 + t / 10) for t in range(3600)]
    assert 0.8 - 1e-12 <= min(swing) < 0.801
    assert 1.2 + 1e-12 >= max(swing) > 1.199
    assert dataclasses.replace(drift, drift_phase=math.pi / 2).drift(1000.0) == pytest.approx(1.2)
    both = dataclasses.replace(drift, slowdown=1.05, noise_sd=0.1, seed=3)
    for index, t in enumerate((1000.0, 1033.3, 1100.0)):
        expected = 1.05 * drift.drift(t) * both.noise(index)
        assert both.factor(index, t) == pytest.approx(expected, rel=1e-15)
    assert Schedule().factor(3, 12_345.0) == 1.0  # all off by default
    assert Schedule(slowdown=1.05).factor(3, 12_345.0) == 1.05


def test_noise_is_log_normal_and_replayed_per_request() -> None:
    noisy = Schedule(noise_sd=0.1, seed=5)
    draws = [noisy.noise(index) for index in range(2000)]
    assert draws == [noisy.noise(index) for index in range(2000)]
    assert draws != [dataclasses.replace(noisy, seed=6).noise(index) for index in range(2000)]
    assert statistics.median(draws) == pytest.approx(1.0, abs=0.02)
    assert statistics.stdev(math.log(d) for d in draws) == pytest.approx(0.1, rel=0.1)
    jittery = Schedule(jitter_s=0.002, seed=5)  # the noise leaves the jitter draws alone
    scaled = [o * noisy.noise(3) for o in jittery.offsets(3, 10)]
    with_noise = dataclasses.replace(jittery, noise_sd=0.1)
    assert with_noise.offsets(3, 10, with_noise.factor(3, 0.0)) == scaled


def test_a_slowdown_scales_every_offset_exactly() -> None:
    base = Schedule(ttft_s=0.03, itl_s=0.01, jitter_s=0.002, seed=7)
    slow = dataclasses.replace(base, slowdown=1.05)
    for index in range(5):
        at = 1234.5 + index
        assert base.offsets(index, 50, base.factor(index, at)) == base.offsets(index, 50)
        expected = [1.05 * offset for offset in base.offsets(index, 50)]
        assert slow.offsets(index, 50, slow.factor(index, at)) == expected


def test_two_processes_given_one_epoch_drift_together() -> None:
    """The factor is a pure function of the arrival time: a second process, given the same
    schedule on its command line, computes the very same factor for the same instant."""
    schedule = Schedule(
        drift_amplitude=0.2,
        drift_period_s=180,
        drift_epoch=time.perf_counter() - 30,
        drift_phase=0.3,
        noise_sd=0.05,
        slowdown=1.05,
        seed=2,
    )
    code = (
        "import sys; from lmgauge.testing.token_server import schedule_from_args as s, "
        "setup_arg_parser as p; schedule = s(p().parse_args(sys.argv[1:])); "
        "print(repr(schedule.factor(4, float(input()))))"
    )
    instant = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", code, *schedule_args(schedule)],
        input=repr(instant),
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(child.stdout) == schedule.factor(4, instant)
    assert float(child.stdout) != schedule.factor(4, instant + 10)


def test_the_command_line_takes_the_factor() -> None:
    flags = ["--slowdown", "1.05", "--drift-amplitude", "0.2", "--drift-period-s", "180"]
    flags += ["--drift-epoch", "12.5", "--drift-phase", "1", "--noise-sd", "0.03"]
    schedule = schedule_from_args(setup_arg_parser().parse_args(flags))
    assert (schedule.slowdown, schedule.drift_amplitude, schedule.drift_period_s) == (
        1.05,
        0.2,
        180.0,
    )
    assert (schedule.drift_epoch, schedule.drift_phase, schedule.noise_sd) == (12.5, 1.0, 0.03)
    assert schedule_from_args(setup_arg_parser().parse_args([])) == Schedule()  # all off
    again = setup_arg_parser().parse_args(schedule_args(schedule))
    assert schedule_from_args(again) == schedule


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("drift_amplitude", 1.0),
        ("drift_amplitude", -0.1),
        ("drift_period_s", 0.0),
        ("drift_period_s", -180.0),
        ("slowdown", 0.0),
        ("slowdown", -1.05),
        ("slowdown", math.inf),
        ("noise_sd", -0.01),
        ("drift_phase", math.nan),
    ],
)
def test_bad_factor_values_are_refused(name: str, value: float) -> None:
    change: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=f"{name} must be"):
        dataclasses.replace(Schedule(), **change)
    with pytest.raises(ValueError, match=f"{name} must be"):
        Schedule.from_json({name: value})
    with pytest.raises(SystemExit, match=f"error: {name} must be"):
        main([f"--{name.replace('_', '-')}", repr(value)])


def test_the_factor_is_set_at_run_time(server: TokenServer) -> None:
    assert server.schedule.drift_epoch == server.started_s  # unset: the server's start
    change = {"slowdown": 2, "drift_amplitude": 0.1, "drift_period_s": 60, "noise_sd": 0.01}
    answer = control(server.url, "config", change)
    assert {key: answer[key] for key in change} == change
    assert answer["drift_epoch"] == server.started_s
    assert control(server.url, "config", {"drift_epoch": 5.0})["drift_epoch"] == 5.0
    assert control(server.url, "config", {"drift_epoch": None})["drift_epoch"] == server.started_s
    refused = httpx.post(f"{server.url}/_lmgauge/config", json={"drift_amplitude": 1}, timeout=10)
    assert refused.status_code == 400
    assert "drift_amplitude must be" in refused.text
    body = {"model": MODEL, "prompt": "p", "stream": True, "options": {"num_predict": 3}}
    httpx.post(f"{server.url}/api/generate", json=body, timeout=10).raise_for_status()
    [record] = records(server.url)
    assert record.factor == server.schedule.factor(0, record.received_s)
    assert 2 * 0.9 * 0.9 < record.factor < 2 * 1.1 * 1.1
    offsets = [due - record.received_s for due in record.due_s]
    expected = SCHEDULE.offsets(0, 3, record.factor)
    assert offsets == pytest.approx(expected, rel=1e-9)


def test_two_arms_share_one_drift_and_b_is_slower_by_its_slowdown() -> None:
    """Arms A and B (slowdown 1.5) in two processes given one drift epoch, near the drift's
    crest: every request's factor is the pure function of its arrival, and B's recorded
    TTFTs are 1.5x A's (loose bounds: the server may be late on a busy machine)."""
    arm_a = Schedule(
        ttft_s=0.080,
        itl_s=0.002,
        drift_amplitude=0.2,
        drift_period_s=600,
        drift_epoch=time.perf_counter(),
        drift_phase=math.pi / 2,  # the crest, 1.2x, at the epoch
    )
    arm_b = dataclasses.replace(arm_a, slowdown=1.5)
    body = {"model": MODEL, "stream": True, "options": {"num_predict": 2}}
    with serve_in_process(schedule=arm_a) as url_a, serve_in_process(schedule=arm_b) as url_b:
        for round_ in range(5):  # interleaved: a pair arrives within the same drift
            for url in (url_a, url_b):
                request = {**body, "prompt": f"round {round_}"}
                httpx.post(f"{url}/api/generate", json=request, timeout=10).raise_for_status()
        sent = {url_a: records(url_a), url_b: records(url_b)}
    for url, arm in ((url_a, arm_a), (url_b, arm_b)):
        assert [r.prompt for r in sent[url]] == [f"round {k}" for k in range(5)]
        for index, record in enumerate(sent[url]):
            assert record.factor == arm.factor(index, record.received_s)  # exactly
            assert 1.1 < record.factor / arm.slowdown <= 1.2
            ttft = record.due_s[0] - record.received_s
            assert ttft == pytest.approx(0.080 * record.factor, rel=1e-9)
    ratios = [
        (b.write_s[0] - b.received_s) / (a.write_s[0] - a.received_s)
        for a, b in zip(sent[url_a], sent[url_b], strict=True)
    ]
    assert 1.3 < statistics.median(ratios) < 1.7, ratios
