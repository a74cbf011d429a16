"""measure.py: one request -> one Sample, with validity; on a scripted in-memory backend."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from lmgauge.backends.base import (
    BackendInfo,
    Chunk,
    GenerateRequest,
    LoadResult,
    LoadSettings,
    MemoryReport,
    ModelInfo,
    ServerTimings,
)
from lmgauge.errors import BackendTimeoutError, ServerError
from lmgauge.measure import (
    CACHED_PROMPT_SHARE_LIMIT,
    Sample,
    _invalid_reason,
    measure,
    measure_one,
)
from lmgauge.stats import error_rate, summarize, summarize_samples


class ScriptedBackend:
    """Replays chunks at given offsets (seconds after the request starts); a test double."""

    name = "scripted"

    def __init__(self, script: Sequence[tuple[float, Chunk]], fail_after: int | None = None):
        self.script = script
        self.fail_after = fail_after

    async def info(self) -> BackendInfo:
        return BackendInfo(self.name, "test", "in-memory")

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        return LoadResult(model, 0.0)

    async def unload(self, model: str) -> None:
        return None

    async def memory(self) -> MemoryReport:
        return MemoryReport()

    async def aclose(self) -> None:
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, (offset, chunk) in enumerate(self.script):
            if self.fail_after is not None and index == self.fail_after:
                raise BackendTimeoutError("no token within 1 s")
            await asyncio.sleep(max(0.0, start + offset - loop.time()))
            yield dataclasses.replace(chunk, at_s=time.perf_counter())


def _tokens(
    n: int, gap: float = 0.002, timings: ServerTimings | None = None, finish: str = "length"
) -> list[tuple[float, Chunk]]:
    script = [((i + 1) * gap, Chunk("x", 1, 0.0)) for i in range(n)]
    script[-1] = (n * gap, Chunk("x", 1, 0.0, finish_reason=finish))
    if timings is not None:
        script.append((n * gap, Chunk("", 0, 0.0, timings=timings)))
    return script


async def _measure(backend: ScriptedBackend, max_tokens: int, **kwargs: int) -> Sample:
    return await measure_one(backend, GenerateRequest("m", "p", max_tokens=max_tokens), **kwargs)


@pytest.mark.asyncio
async def test_a_full_sample_has_ttft_itl_and_e2e() -> None:
    sample = await _measure(ScriptedBackend(_tokens(8)), 8)
    assert sample.valid
    assert sample.output_tokens == 8
    assert len(sample.itl_s) == 7
    assert sample.ttft_s is not None
    assert sample.e2e_s is not None
    assert 0 < sample.ttft_s < sample.e2e_s
    assert sample.finish_reason == "length"
    assert sample.decode_tokens_per_s == pytest.approx(7 / sum(sample.itl_s))


@pytest.mark.asyncio
async def test_an_early_stop_is_kept_but_invalid() -> None:
    sample = await _measure(ScriptedBackend(_tokens(3, finish="stop")), 8)
    assert sample.ok
    assert not sample.valid
    assert sample.invalid_reason == "early stop: 3 of 8 tokens (finish_reason='stop')"


@pytest.mark.asyncio
async def test_a_cold_load_inside_the_request_is_invalid() -> None:
    timings = ServerTimings(prompt_tokens=4, load_s=2.5)
    sample = await _measure(ScriptedBackend(_tokens(4, timings=timings)), 4)
    assert sample.invalid_reason is not None
    assert sample.invalid_reason.startswith("cold load: the server loaded the model for 2.50 s")


@pytest.mark.asyncio
async def test_a_prompt_cache_hit_is_invalid() -> None:
    reported = ServerTimings(prompt_tokens=100, cached_prompt_tokens=96, prompt_s=0.001)
    sample = await _measure(ScriptedBackend(_tokens(4, timings=reported)), 4)
    assert sample.invalid_reason == (
        "prompt cache hit: 96 of 100 prompt tokens were served from the cache"
    )
    short = ServerTimings(prompt_tokens=4, prompt_s=0.001)
    sample = await _measure(
        ScriptedBackend(_tokens(4, timings=short)), 4, expected_prompt_tokens=100
    )
    assert sample.invalid_reason == "prompt cache hit: the server evaluated 4 of 100 prompt tokens"


@pytest.mark.asyncio
async def test_a_cached_chat_template_head_leaves_the_sample_valid() -> None:
    """Fake backend. mlx_lm.server always reuses the longest prefix it has cached, so every
    chat prompt after the first finds the template's head (``<|im_start|>user\n``, 3 tokens)
    in its cache: a small share of the prompt, which keeps the sample, and which the
    prefill rates leave out. Most of the prompt from the cache is still a cache hit."""
    head = ServerTimings(prompt_tokens=60, cached_prompt_tokens=3, prompt_s=0.057)
    sample = await _measure(ScriptedBackend(_tokens(4, timings=head)), 4)
    assert sample.valid, sample.invalid_reason
    assert sample.server_prefill_tokens_per_s == pytest.approx(57 / 0.057)
    assert sample.ttft_s is not None
    assert sample.prefill_tokens_per_s == pytest.approx(57 / sample.ttft_s)
    share = int(CACHED_PROMPT_SHARE_LIMIT * 60)
    edge = await _measure(
        ScriptedBackend(_tokens(4, timings=dataclasses.replace(head, cached_prompt_tokens=share))),
        4,
    )
    assert edge.valid, edge.invalid_reason
    most = dataclasses.replace(head, cached_prompt_tokens=share + 1)
    sample = await _measure(ScriptedBackend(_tokens(4, timings=most)), 4)
    assert sample.invalid_reason == (
        f"prompt cache hit: {share + 1} of 60 prompt tokens were served from the cache"
    )
    unknown = ServerTimings(cached_prompt_tokens=1)  # no prompt length: any cached token
    sample = await _measure(ScriptedBackend(_tokens(4, timings=unknown)), 4)
    assert sample.invalid_reason == (
        "prompt cache hit: 1 of the prompt tokens were served from the cache"
    )


@pytest.mark.asyncio
async def test_a_failure_mid_stream_is_a_sample_with_its_partial_data() -> None:
    sample = await _measure(ScriptedBackend(_tokens(8), fail_after=5), 8)
    assert not sample.ok
    assert sample.error == "BackendTimeoutError: no token within 1 s"
    assert sample.output_tokens == 5
    assert sample.ttft_s is not None
    assert sample.invalid_reason == "error: BackendTimeoutError: no token within 1 s"


@pytest.mark.asyncio
async def test_multi_token_chunks_spread_their_gap() -> None:
    script = [(0.004, Chunk("ab", 2, 0.0)), (0.008, Chunk("cd", 2, 0.0, finish_reason="length"))]
    sample = await _measure(ScriptedBackend(script), 4)
    assert sample.output_tokens == 4
    assert len(sample.itl_s) == 3


@pytest.mark.asyncio
async def test_server_rates_use_the_engine_own_counts() -> None:
    timings = ServerTimings(
        prompt_tokens=200, prompt_s=0.5, output_tokens=8, decode_tokens=7, decode_s=0.35
    )
    sample = await _measure(ScriptedBackend(_tokens(8, timings=timings)), 8)
    assert sample.server_prefill_tokens_per_s == pytest.approx(400)
    assert sample.server_decode_tokens_per_s == pytest.approx(20)


@pytest.mark.asyncio
async def test_measure_runs_warmups_and_reports_every_sample() -> None:
    seen: list[Sample] = []
    requests: list[int] = []

    def make(i: int) -> GenerateRequest:
        requests.append(i)
        return GenerateRequest("m", f"p{i}", max_tokens=4)

    samples = await measure(
        ScriptedBackend(_tokens(4)), make, samples=3, warmups=2, on_sample=seen.append
    )
    assert requests == [0, 1, 2, 3, 4]
    assert [s.warmup for s in samples] == [True, True, False, False, False]
    assert seen == samples
    assert summarize_samples(samples)["ttft_s"].n == 3


def test_sample_round_trips_through_a_dict() -> None:
    sample = Sample(
        requested_tokens=4,
        ok=True,
        output_tokens=4,
        itl_s=(0.1, 0.2, 0.1),
        server=ServerTimings(prompt_tokens=3, prompt_s=0.2),
    )
    assert Sample.from_dict(sample.to_dict()) == sample


def test_summary_statistics() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert summary is not None
    assert summary.median == 3.0
    assert summary.mad == 1.0
    assert summary.iqr == 2.0
    assert summary.n == 5
    assert summarize([]) is None


def test_error_rate_ignores_warmups() -> None:
    ok = Sample(requested_tokens=1, ok=True)
    failed = Sample(requested_tokens=1, ok=False, error="x")
    warm_fail = Sample(requested_tokens=1, ok=False, error="x", warmup=True)
    assert error_rate([ok, failed, warm_fail, ok]) == pytest.approx(1 / 3)


@pytest.mark.asyncio
async def test_thinking_tokens_are_counted_apart_from_the_answer() -> None:
    script = [
        (0.002, Chunk("<think>", 1, 0.0, reasoning=True)),
        (0.004, Chunk("hm", 1, 0.0, reasoning=True)),
        (0.006, Chunk("</think>", 1, 0.0, reasoning=True)),
        (0.008, Chunk("Yes", 1, 0.0)),
        (0.010, Chunk(".", 1, 0.0, finish_reason="length")),
    ]
    sample = await _measure(ScriptedBackend(script), 5)
    assert sample.output_tokens == 5
    assert sample.thinking_tokens == 3
    assert sample.ttft_s is not None
    assert sample.time_to_first_answer_s is not None
    assert sample.time_to_first_answer_s > sample.ttft_s


class BusyBackend(ScriptedBackend):
    """Answers HTTP 503 (queue full) to its first ``busy`` requests, then streams."""

    def __init__(self, script: Sequence[tuple[float, Chunk]], busy: int) -> None:
        super().__init__(script)
        self.busy = busy
        self.calls = 0

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        if self.calls <= self.busy:
            raise ServerError("http://x/api/generate answered HTTP 503: server busy", 503)
        async for chunk in super().generate(request):
            yield chunk


BUSY_SCRIPT = [(0.001 * (i + 1), Chunk("w", 1, 0.0)) for i in range(4)]


@pytest.mark.asyncio
async def test_a_busy_server_is_retried_with_backoff_and_the_retries_are_kept() -> None:
    backend = BusyBackend(BUSY_SCRIPT, busy=2)
    sample = await measure_one(backend, GenerateRequest("m", "p", 4), backoff_s=(0.01, 0.02, 0.04))
    assert sample.ok
    assert sample.valid
    assert backend.calls == 3
    assert sample.metadata["retries"] == ["HTTP 503, waited 0.01 s", "HTTP 503, waited 0.02 s"]


@pytest.mark.asyncio
async def test_a_server_busy_past_the_last_retry_is_a_recorded_error() -> None:
    backend = BusyBackend(BUSY_SCRIPT, busy=10)
    sample = await measure_one(backend, GenerateRequest("m", "p", 4), backoff_s=(0.01, 0.01))
    assert not sample.ok
    assert backend.calls == 3  # the first try and two retries: bounded
    assert sample.error == (
        "ServerError: http://x/api/generate answered HTTP 503: server busy "
        "(gave up after 2 retries: HTTP 503, waited 0.01 s; HTTP 503, waited 0.01 s)"
    )


@pytest.mark.asyncio
async def test_other_server_errors_are_not_retried() -> None:
    class Broken(BusyBackend):
        async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
            self.calls += 1
            raise ServerError("http://x/v1/completions answered HTTP 500: boom", 500)
            yield Chunk("", 0, 0.0)  # an async generator

    backend = Broken(BUSY_SCRIPT, busy=0)
    sample = await measure_one(backend, GenerateRequest("m", "p", 4), backoff_s=(0.01,))
    assert backend.calls == 1
    assert sample.error == "ServerError: http://x/v1/completions answered HTTP 500: boom"


def test_a_first_token_far_faster_than_the_cases_others_is_an_unlabelled_cache_hit() -> None:
    """Ollama counts cached prompt tokens as evaluated: a hit shows only as a TTFT far below
    the case's others. A TTFT far ABOVE the server's prompt time is no such sign: a request
    that waited (a queue; llama-server saving 64 slots) has real latency."""
    from lmgauge.measure import unlabelled_cache_hit

    def sample(ttft_s: float, prompt_tokens: int = 128) -> Sample:
        return Sample(8, True, 8, prompt_tokens, "length", ttft_s=ttft_s, itl_s=(0.01,) * 7)

    earlier = [sample(0.50), sample(0.55), sample(0.60)]
    reason = unlabelled_cache_hit(sample(0.05), earlier)
    assert reason == (
        "prompt cache hit, unreported: TTFT 50.0 ms, under 1/5 of the case's median of "
        "550.0 ms for the same prompt length"
    )
    assert unlabelled_cache_hit(sample(0.2), earlier) is None  # slower than 1/5: a prefill
    assert unlabelled_cache_hit(sample(0.05), earlier[:2]) is None  # too few to judge by
    assert unlabelled_cache_hit(sample(0.05, prompt_tokens=16), earlier) is None  # other length
    waited = ServerTimings(prompt_tokens=339, cached_prompt_tokens=0, prompt_s=0.166)
    assert _invalid_reason(8, 8, "length", waited, None) is None  # TTFT 4.3 s: a queue


def test_one_gap_far_above_the_median_is_a_stall() -> None:
    steady = (0.01,) * 15
    assert _invalid_reason(16, 16, "length", None, None, itl_s=steady) is None
    stalled = (*steady[:7], 0.25, *steady[7:])
    reason = _invalid_reason(17, 17, "length", None, None, itl_s=stalled)
    assert (
        reason == "stall: one gap between tokens was 250.0 ms, 25x the sample's median of 10.00 ms"
    )
    assert _invalid_reason(4, 4, "length", None, None, itl_s=(0.01, 0.01, 0.5)) is None  # too few
    # Among concurrent requests the same gap is another request's prefill: the service
    # under load, measured, not voided.
    assert _invalid_reason(17, 17, "length", None, None, itl_s=stalled, concurrent=True) is None


@pytest.mark.asyncio
async def test_a_busy_answer_to_a_load_is_asked_again() -> None:
    """A load answered 503/429 (a full queue) is retried like a generation request; any
    other error, or busy after the last wait, stands."""
    from lmgauge.errors import ServerError
    from lmgauge.measure import retry_when_busy

    answers: list[int | None] = [503, 429, None]

    async def load() -> str:
        status = answers.pop(0)
        if status is not None:
            raise ServerError(f"HTTP {status}", status)
        return "loaded"

    assert await retry_when_busy(load, backoff_s=(0, 0, 0)) == "loaded"
    assert answers == []

    async def broken() -> str:
        raise ServerError("HTTP 500", 500)

    with pytest.raises(ServerError, match="500"):
        await retry_when_busy(broken, backoff_s=(0, 0))

    async def always_busy() -> str:
        raise ServerError("HTTP 503", 503)

    with pytest.raises(ServerError, match="503"):
        await retry_when_busy(always_busy, backoff_s=(0,))
