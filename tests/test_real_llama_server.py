"""The OpenAI-compatible backend against the REAL llama-server (llama.cpp's, built into
.venv/bin by scripts/setup.sh), started through lmgauge's own ManagedServer on the tiny
model, as a user's config starts it. Skipped when the binary is missing, unless
LMGAUGE_REQUIRE_LLAMA_TOOLS is set (then the missing binary fails the run)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.config import ServerStart
from lmgauge.errors import BackendUnavailableError, ConfigError, ModelNotFoundError
from lmgauge.llama_tools import find_llama_tool
from lmgauge.measure import Sample, measure, measure_one
from lmgauge.servers import ManagedServer

PROMPT = "Count the words in this sentence, please. " * 6  # ~50 tokens
SLOTS = 4
CONTEXT_PER_SLOT = 512  # llama-server's --ctx-size is the total: SLOTS * this


@pytest.fixture(scope="module")
def llama_server_url(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server on a free loopback port, four slots of 512 tokens, two threads."""
    try:
        find_llama_tool("llama-server")
    except BackendUnavailableError as exc:
        if os.environ.get("LMGAUGE_REQUIRE_LLAMA_TOOLS"):
            pytest.fail(f"LMGAUGE_REQUIRE_LLAMA_TOOLS is set: {exc}")
        pytest.skip(str(exc))
    settings = {"threads": 2, "ctx-size": SLOTS * CONTEXT_PER_SLOT, "parallel": SLOTS}
    log_dir = tmp_path_factory.mktemp("real_llama_server")
    server = ManagedServer(
        ServerStart(kind="llama-server", ready_timeout_s=60), settings, log_dir=log_dir,
        model=tiny_gguf,
    )  # fmt: skip
    with server:
        yield server.base_url
    print(server.log_tail(40))  # shown by pytest when a test failed


@pytest_asyncio.fixture
async def client(llama_server_url: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(llama_server_url)
    yield backend
    await backend.aclose()


def _settings() -> LoadSettings:
    return LoadSettings(context_tokens=CONTEXT_PER_SLOT, parallel_slots=SLOTS)


@pytest.mark.asyncio
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_streamed_samples_have_the_requested_length_and_server_timings(
    client: OpenAIBackend, tiny_gguf: Path, chat: bool
) -> None:
    await client.load(str(tiny_gguf), _settings())

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(str(tiny_gguf), f"{i} {PROMPT}", max_tokens=32, chat=chat)

    samples = await measure(client, request, samples=3, warmups=1)
    for sample in samples[1:]:
        assert sample.valid, sample.invalid_reason
        assert sample.output_tokens == 32  # ignore_eos held; the role delta is no token
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 31
        timings = sample.server
        assert timings is not None  # llama-server's `timings` on the last event
        assert timings.output_tokens == 32
        assert timings.decode_tokens == 31  # predicted_ms times predicted_n - 1 steps
        assert timings.cached_prompt_tokens == 0  # cache_prompt: false was sent
        assert timings.prompt_tokens is not None
        assert timings.prompt_tokens > 20
        assert timings.prompt_s is not None
        assert timings.prompt_s > 0
        assert timings.decode_s is not None
        assert timings.decode_s > 0


@pytest.mark.asyncio
async def test_client_and_server_accounts_agree(client: OpenAIBackend, tiny_gguf: Path) -> None:
    await client.load(str(tiny_gguf), _settings())

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(str(tiny_gguf), f"{i} {PROMPT}", max_tokens=64)

    samples = [s for s in await measure(client, request, samples=5, warmups=1) if s.valid]
    assert len(samples) == 5
    for sample in samples:
        assert sample.server is not None
        assert sample.server.prompt_s is not None
        assert sample.ttft_s is not None
        # The server's prompt time runs from the slot's start to its first sampled token,
        # all of it inside the client's TTFT (request sent -> first token read), which
        # adds tokenizing, HTTP and delivery: never below, whatever the noise.
        assert sample.ttft_s >= sample.server.prompt_s
    # Both decode rates count the same n-1 steps: the server from its first sampled token
    # to its last, the client from the first token read to the last. The client may be
    # slower (SSE writes and reads per token); faster only by the delivery jitter of the
    # first and last token, a few ms over the 63 steps. Medians of 5, so one stall is no
    # failure: client/server within [0.5, 1.15].
    ratios = [s.decode_tokens_per_s / s.server_decode_tokens_per_s for s in samples]  # type: ignore[operator]
    ratio = statistics.median(ratios)
    print(f"client/server decode rate: median {ratio:.3f}")  # with -s
    assert 0.5 <= ratio <= 1.15, f"client/server decode rate {ratio:.3f} (all: {ratios})"


async def _aggregate_tokens_per_s(
    client: OpenAIBackend, model: str, concurrency: int, round_: int
) -> float:
    """All the tokens of ``concurrency`` simultaneous requests over the wall time of all."""
    start = time.perf_counter()
    samples: list[Sample] = await asyncio.gather(
        *(
            measure_one(
                client,
                GenerateRequest(model, f"{round_}.{i} {PROMPT}", max_tokens=64),
                concurrent=True,
            )
            for i in range(concurrency)
        )
    )
    wall_s = time.perf_counter() - start
    assert all(s.valid for s in samples), [s.invalid_reason for s in samples]
    return sum(s.output_tokens for s in samples) / wall_s


@pytest.mark.asyncio
async def test_four_slots_serve_more_tokens_per_second_than_one(
    client: OpenAIBackend, tiny_gguf: Path
) -> None:
    await client.load(str(tiny_gguf), _settings())
    await _aggregate_tokens_per_s(client, str(tiny_gguf), 4, -1)  # warm-up: every slot once
    rates: dict[int, list[float]] = {1: [], 4: []}
    for round_ in range(3):  # interleaved c1/c4/c1/c4...: a drift in the machine hits both
        for concurrency in (1, 4):
            rates[concurrency].append(
                await _aggregate_tokens_per_s(client, str(tiny_gguf), concurrency, round_)
            )
    ratio = statistics.median(rates[4]) / statistics.median(rates[1])
    print(f"c4/c1 aggregate tokens/s: {ratio:.2f} (c1 {rates[1]}, c4 {rates[4]})")  # with -s
    # llama-server decodes its busy slots in one batch, so a step for four costs well under
    # four steps for one; on two cores and a tiny model the gain is modest, hence 1.2.
    assert ratio > 1.2, f"c4/c1 aggregate tokens/s = {ratio:.2f} (c1 {rates[1]}, c4 {rates[4]})"


@pytest.mark.asyncio
async def test_a_repeated_prompt_with_the_cache_on_is_a_cache_hit(
    client: OpenAIBackend, tiny_gguf: Path
) -> None:
    await client.load(str(tiny_gguf), _settings())
    request = GenerateRequest(
        str(tiny_gguf), f"cache {PROMPT}", max_tokens=8, use_prompt_cache=True
    )
    first = await measure_one(client, request)
    again = await measure_one(client, request)
    assert first.valid, first.invalid_reason
    assert again.server is not None
    assert again.server.cached_prompt_tokens  # cache_n: served from the slot's cache
    assert not again.valid
    assert again.invalid_reason is not None
    assert "prompt cache hit" in again.invalid_reason


@pytest.mark.asyncio
async def test_a_prompt_beyond_the_context_names_the_context(
    client: OpenAIBackend, tiny_gguf: Path
) -> None:
    request = GenerateRequest(str(tiny_gguf), PROMPT * 20, max_tokens=4)  # ~1000 tokens
    sample = await measure_one(client, request)
    assert not sample.ok
    assert sample.error is not None
    assert "ContextTooLargeError" in sample.error
    assert f"context of {CONTEXT_PER_SLOT} tokens per slot" in sample.error
    assert "--ctx-size" in sample.error


@pytest.mark.asyncio
async def test_load_checks_the_model_and_settings_against_props(
    client: OpenAIBackend, tiny_gguf: Path
) -> None:
    loaded = await client.load(tiny_gguf.name, _settings())  # the file's name is enough
    assert loaded.load_s > 0
    assert client.props is not None
    assert client.props["model_path"] == str(tiny_gguf)
    with pytest.raises(ModelNotFoundError, match=rf"serving {tiny_gguf}, not 'qwen3-0\.6b'"):
        await client.load("qwen3-0.6b", _settings())  # the server ignores the name: load() does not
    with pytest.raises(ConfigError, match=r"512 tokens per slot.*asks for 4096.*--ctx-size 16384"):
        await client.load(str(tiny_gguf), LoadSettings(parallel_slots=SLOTS))
    with pytest.raises(ConfigError, match=r"4 slots .*--parallel 1"):
        await client.load(str(tiny_gguf), LoadSettings(context_tokens=CONTEXT_PER_SLOT))
