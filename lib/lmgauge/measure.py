"""One request becomes one Sample; a warm-up and N requests become a list of them.

A failed request is a Sample holding the error, never an exception that ends the run.
A sample that completed but cannot stand for warm, steady-state serving (an early stop,
a model load inside it, a prefill served from a prompt cache, labelled or not, a stall
between two tokens) is kept with the reason and left out of the summaries.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from lmgauge.backends.base import Backend, GenerateRequest, ServerTimings
from lmgauge.errors import ServerError

RETRY_STATUSES = frozenset({429, 503})
"""A busy server: Ollama answers 503 past OLLAMA_MAX_QUEUE; others use 429 or 503."""
RETRY_BACKOFF_S = (0.5, 1.0, 2.0)
"""Waits before each retry of a busy answer; after the last, the error is recorded."""
COLD_LOAD_S = 0.1
"""A server-reported load time above this inside a request means the model was (re)loaded.

Ollama reports a few milliseconds of load_duration even for a resident model."""
CACHED_PROMPT_SHARE_LIMIT = 0.1
"""Above this share of the prompt served from a prompt cache, a sample is no prefill sample.

A server whose prefix cache cannot be turned off per request (mlx_lm.server reuses the
longest common prefix of any earlier prompt) serves every chat sample's template head
(``<|im_start|>user\\n``, or a default system prompt) from its cache, since that head is the
same in every request, however distinct the prompts after it; real chat serving gets the
same reuse. A repeated prompt, or a cache that serves most of one, is no prefill
measurement. A share, not a count of tokens, because the head's cost matters only against
the prompt's: within this share TTFT is off by at most ~10%, and the prefill rates count
only the uncached tokens."""

FAST_PREFILL_FACTOR = 5.0
"""A sample whose TTFT is under the median of its case's earlier valid samples (same
prompt length, one request at a time) divided by this was not prefilled: a prompt cache
the server does not report served it (Ollama counts cached tokens in prompt_eval_count).
Judged against the case, not against the server's own prompt time: a request that waited
(a queue, a server saving its slots) has a TTFT far above the server's prompt time and is
real latency. On an H100, llama-server answered one lone request 2.6 s after 64 parallel
ones had finished while reporting 43 ms of prefill (scripts/gpu_llama_server.sh)."""
FAST_PREFILL_MIN_SAMPLES = 3  # earlier valid samples needed to judge one against them
STALL_GAP_FACTOR = 20.0
"""An inter-token gap above this many times the sample's median gap is a stall (a swap, a
preemption): the sample is no steady decode measurement. Judged only for a request alone on
the server: among concurrent ones, the pause while another request is prefilled is the
service under load (llama-server paused three of four streams ~100 ms, 27x their median
gap, to prefill the fourth: tests/test_real_llama_server.py)."""
STALL_MIN_GAPS = 8  # fewer gaps give no median to judge a gap by


@dataclass(frozen=True)
class Sample:
    requested_tokens: int
    ok: bool
    output_tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None
    thinking_tokens: int = 0  # of output_tokens, those spent thinking (Qwen3 <think>)
    time_to_first_answer_s: float | None = None  # first token after the thinking
    itl_s: tuple[float, ...] = ()
    e2e_s: float | None = None
    server: ServerTimings | None = None
    error: str | None = None
    invalid_reason: str | None = None
    started_unix_s: float = 0.0
    warmup: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.ok and self.invalid_reason is None and not self.warmup

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Client-side decode rate: tokens after the first over the time from first to last."""
        span = sum(self.itl_s)
        return len(self.itl_s) / span if self.itl_s and span > 0 else None

    @property
    def prefill_tokens_per_s(self) -> float | None:
        """Client-side prefill rate: the prompt tokens the server evaluated (those its cache
        did not serve) over TTFT (includes request overhead)."""
        if not self.prompt_tokens or not self.ttft_s:
            return None
        cached = (self.server.cached_prompt_tokens if self.server else None) or 0
        uncached = self.prompt_tokens - cached
        return uncached / self.ttft_s if uncached > 0 else None

    @property
    def server_decode_tokens_per_s(self) -> float | None:
        timings = self.server
        if timings is None or not timings.decode_s:
            return None
        tokens = timings.decode_tokens or timings.output_tokens
        return tokens / timings.decode_s if tokens else None

    @property
    def server_prefill_tokens_per_s(self) -> float | None:
        timings = self.server
        if timings is None or not timings.prompt_tokens or not timings.prompt_s:
            return None
        uncached = timings.prompt_tokens - (timings.cached_prompt_tokens or 0)
        return uncached / timings.prompt_s if uncached > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["itl_s"] = list(self.itl_s)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        fields = dict(data)
        server = fields.pop("server", None)
        fields["itl_s"] = tuple(fields.get("itl_s", ()))
        return cls(**fields, server=ServerTimings(**server) if server else None)


def _invalid_reason(
    requested: int,
    output_tokens: int,
    finish_reason: str | None,
    server: ServerTimings | None,
    expected_prompt_tokens: int | None,
    *,
    itl_s: Sequence[float] = (),
    concurrent: bool = False,
) -> str | None:
    if output_tokens < requested:
        return (
            f"early stop: {output_tokens} of {requested} tokens (finish_reason={finish_reason!r})"
        )
    if server is not None:
        if server.load_s is not None and server.load_s > COLD_LOAD_S:
            return (
                f"cold load: the server loaded the model for {server.load_s:.2f} s in this request"
            )
        if _cached_too_much(server):
            return (
                f"prompt cache hit: {server.cached_prompt_tokens} of "
                f"{server.prompt_tokens or 'the'} prompt tokens were served from the cache"
            )
        if (
            expected_prompt_tokens is not None
            and server.prompt_tokens is not None
            and server.prompt_tokens < expected_prompt_tokens
        ):
            return (
                f"prompt cache hit: the server evaluated {server.prompt_tokens} of "
                f"{expected_prompt_tokens} prompt tokens"
            )
    return None if concurrent else _stall(itl_s)


def unlabelled_cache_hit(sample: Sample, earlier: Sequence[Sample]) -> str | None:
    """Why ``sample`` (one request at a time) was no prefill of its prompt, if its TTFT is
    under 1/FAST_PREFILL_FACTOR of the median of the case's ``earlier`` valid samples."""
    ttfts = [
        s.ttft_s
        for s in earlier
        if s.valid and not s.warmup and s.ttft_s and s.prompt_tokens == sample.prompt_tokens
    ]
    if sample.ttft_s is None or len(ttfts) < FAST_PREFILL_MIN_SAMPLES:
        return None
    median = statistics.median(ttfts)
    if sample.ttft_s * FAST_PREFILL_FACTOR >= median:
        return None
    return (
        f"prompt cache hit, unreported: TTFT {sample.ttft_s * 1e3:.1f} ms, under "
        f"1/{FAST_PREFILL_FACTOR:g} of the case's median of {median * 1e3:.1f} ms for the "
        "same prompt length"
    )


def _stall(itl_s: Sequence[float]) -> str | None:
    """A gap between two tokens above STALL_GAP_FACTOR times the sample's median gap."""
    if len(itl_s) < STALL_MIN_GAPS:
        return None
    median = statistics.median(itl_s)
    worst = max(itl_s)
    if median <= 0 or worst <= STALL_GAP_FACTOR * median:
        return None
    return (
        f"stall: one gap between tokens was {worst * 1e3:.1f} ms, "
        f"{worst / median:.0f}x the sample's median of {median * 1e3:.2f} ms"
    )


def _cached_too_much(server: ServerTimings) -> bool:
    """Whether the prompt cache served more than CACHED_PROMPT_SHARE_LIMIT of the prompt
    (any cached token at all where the prompt's length is unknown)."""
    cached = server.cached_prompt_tokens or 0
    if server.prompt_tokens is None:
        return cached > 0
    return cached > CACHED_PROMPT_SHARE_LIMIT * server.prompt_tokens


_T = TypeVar("_T")


async def retry_when_busy(
    call: Callable[[], Awaitable[_T]], *, backoff_s: Sequence[float] = RETRY_BACKOFF_S
) -> _T:
    """``call()`` (a model load, say), asked again after each wait in ``backoff_s`` while
    the server answers busy (HTTP 503 or 429), as a generation request is; after the last
    wait, the server's answer stands."""
    for wait_s in backoff_s:
        try:
            return await call()
        except ServerError as exc:
            if exc.status_code not in RETRY_STATUSES:
                raise
        await asyncio.sleep(wait_s)
    return await call()


async def measure_one(
    backend: Backend,
    request: GenerateRequest,
    *,
    expected_prompt_tokens: int | None = None,
    warmup: bool = False,
    backoff_s: Sequence[float] = RETRY_BACKOFF_S,
    concurrent: bool = False,
) -> Sample:
    """Run one streamed request and account for every token of it.

    ``concurrent``: other requests share the server meanwhile, so a long gap between
    tokens (another request's prefill) is part of what is measured, not a stall.

    A server that answers "busy" (HTTP 503 or 429: a full queue) before the first token is
    asked again after each wait in ``backoff_s``; after the last, the error is the sample's.
    The timings are those of the attempt that ran; the retries are in ``metadata``.
    """
    retries: list[str] = []
    for wait_s in (*backoff_s, None):
        sample, status = await _attempt(
            backend, request, expected_prompt_tokens, warmup, concurrent
        )
        if status not in RETRY_STATUSES or wait_s is None:
            break
        retries.append(f"HTTP {status}, waited {wait_s:g} s")
        await asyncio.sleep(wait_s)
    if not retries:
        return sample
    metadata = {**sample.metadata, "retries": retries}
    if sample.ok:
        return replace(sample, metadata=metadata)
    error = f"{sample.error} (gave up after {len(retries)} retries: {'; '.join(retries)})"
    return replace(sample, error=error, invalid_reason=f"error: {error}", metadata=metadata)


async def _attempt(
    backend: Backend,
    request: GenerateRequest,
    expected_prompt_tokens: int | None,
    warmup: bool,
    concurrent: bool,
) -> tuple[Sample, int | None]:
    """One request: its sample, and the HTTP status of a server error before any token."""
    status: int | None = None
    started_unix = time.time()
    start = time.perf_counter()
    token_times: list[float] = []  # one entry per generated token
    finish_reason: str | None = None
    server: ServerTimings | None = None
    thinking_tokens = 0
    first_answer_at: float | None = None
    last_at = start
    arrived_at: float | None = None  # of the last chunk: when the answer was complete
    error: str | None = None
    try:
        async for chunk in backend.generate(request):
            arrived_at = chunk.at_s
            if chunk.tokens > 0:
                # Spread a multi-token chunk's gap evenly over its tokens.
                gap = (chunk.at_s - last_at) / chunk.tokens
                token_times.extend(last_at + gap * (i + 1) for i in range(chunk.tokens))
                last_at = chunk.at_s
                if chunk.reasoning:
                    thinking_tokens += chunk.tokens
                elif first_answer_at is None:
                    first_answer_at = chunk.at_s
            if chunk.finish_reason is not None:
                finish_reason = chunk.finish_reason
            if chunk.timings is not None:
                server = chunk.timings
    except Exception as exc:  # a failed request is data, never the end of the run
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ServerError) and not token_times:
            status = exc.status_code
    # The answer ends when its last bytes arrived, not when this loop got to them: with
    # many streams finishing together, the loop reaches them one after another.
    end = arrived_at if error is None and arrived_at is not None else time.perf_counter()
    prompt_tokens = server.prompt_tokens if server is not None else None
    ttft = token_times[0] - start if token_times else None
    itl = tuple(b - a for a, b in itertools.pairwise(token_times))
    if error is not None:
        invalid_reason: str | None = f"error: {error}"
    else:
        invalid_reason = _invalid_reason(
            request.max_tokens,
            len(token_times),
            finish_reason,
            server,
            expected_prompt_tokens,
            itl_s=itl,
            concurrent=concurrent,
        )
    sample = Sample(
        requested_tokens=request.max_tokens,
        ok=error is None,
        output_tokens=len(token_times),
        prompt_tokens=prompt_tokens,
        finish_reason=finish_reason,
        ttft_s=ttft,
        thinking_tokens=thinking_tokens,
        time_to_first_answer_s=None if first_answer_at is None else first_answer_at - start,
        itl_s=itl,
        e2e_s=end - start,
        server=server,
        error=error,
        invalid_reason=invalid_reason,
        started_unix_s=started_unix,
        warmup=warmup,
    )
    return sample, status


async def measure(
    backend: Backend,
    make_request: Callable[[int], GenerateRequest],
    *,
    samples: int = 5,
    warmups: int = 1,
    expected_prompt_tokens: int | None = None,
    on_sample: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """Warm-ups, then ``samples`` requests; ``make_request(i)`` varies the prompt per request.

    ``on_sample`` sees every sample (warm-ups included) as soon as it is measured, so a
    caller can persist it before the next one starts.
    """
    if samples < 1 or warmups < 0:
        raise ValueError(f"need samples >= 1 and warmups >= 0, got {samples} and {warmups}")
    results = []
    for i in range(warmups + samples):
        sample = await measure_one(
            backend,
            make_request(i),
            expected_prompt_tokens=expected_prompt_tokens,
            warmup=i < warmups,
        )
        if on_sample is not None:
            on_sample(sample)
        results.append(sample)
    return results
