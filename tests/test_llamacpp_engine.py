"""The embedded engine: real llama.cpp, in-process, on a tiny synthetic model."""

from __future__ import annotations

import os
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.llamacpp import LlamaCppBackend
from lmgauge.errors import ContextTooLargeError, ModelFileError, ModelNotFoundError
from lmgauge.measure import measure, measure_one

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


@pytest_asyncio.fixture
async def engine(tiny_gguf: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = LlamaCppBackend()
    await backend.load(str(tiny_gguf), LoadSettings(context_tokens=1024, threads=2))
    yield backend
    await backend.aclose()


def _request(model: Path, i: int, **kwargs: object) -> GenerateRequest:
    return GenerateRequest(str(model), f"{i} {PROMPT}", max_tokens=24, **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_every_sample_has_the_requested_length_and_consistent_timings(
    engine: LlamaCppBackend, tiny_gguf: Path
) -> None:
    samples = await measure(engine, lambda i: _request(tiny_gguf, i), samples=5, warmups=1)
    measured = [s for s in samples if not s.warmup]
    assert all(s.valid for s in measured), [s.invalid_reason for s in measured]
    for sample in measured:
        assert sample.output_tokens == 24
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 23
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s
        assert sample.server is not None
        assert sample.server.prompt_tokens == sample.prompt_tokens > 0
        assert sample.server.decode_tokens == 23  # llama.cpp evaluates all tokens but the last


@pytest.mark.asyncio
async def test_client_timings_agree_with_llama_cpp_own(
    engine: LlamaCppBackend, tiny_gguf: Path
) -> None:
    """Tolerance: TTFT exceeds llama.cpp's prefill time, and the client's time per token
    exceeds llama.cpp's decode time per token, by at most 25 ms and 3 ms (medians):
    sampling over the 152K vocabulary, detokenizing and the thread hop are outside
    llama.cpp's eval timers. On real-size models these are ~1-2% of a token's time."""
    samples = await measure(engine, lambda i: _request(tiny_gguf, i), samples=7, warmups=1)
    valid = [s for s in samples if s.valid]
    assert len(valid) == 7
    ttft_gap = statistics.median(s.ttft_s - s.server.prompt_s for s in valid)  # type: ignore[operator,union-attr]
    token_gap = statistics.median(
        1 / s.decode_tokens_per_s - 1 / s.server_decode_tokens_per_s  # type: ignore[operator]
        for s in valid
    )
    assert 0 <= ttft_gap < 0.025
    assert -0.0005 < token_gap < 0.003


@pytest.mark.asyncio
async def test_the_prompt_cache_is_off_unless_asked(
    engine: LlamaCppBackend, tiny_gguf: Path
) -> None:
    same = GenerateRequest(str(tiny_gguf), PROMPT, max_tokens=4)
    await measure_one(engine, same)
    assert (await measure_one(engine, same)).valid
    cached = GenerateRequest(str(tiny_gguf), PROMPT, max_tokens=4, use_prompt_cache=True)
    await measure_one(engine, cached)
    reason = (await measure_one(engine, cached)).invalid_reason
    assert reason is not None
    assert reason.startswith("prompt cache hit")


@pytest.mark.asyncio
async def test_memory_counts_weights_and_kv_cache(engine: LlamaCppBackend, tiny_gguf: Path) -> None:
    file_bytes = tiny_gguf.stat().st_size  # noqa: ASYNC240 - a stat, not I/O worth a thread
    report = await engine.memory()
    assert report.model_bytes is not None
    assert report.rss_bytes is not None
    assert 0 < report.model_bytes < file_bytes
    assert report.rss_bytes > report.model_bytes
    assert report.kv_cache_bytes == 2 * 2 * 2 * 64 * 2 * 1024  # K+V, layers, kv heads, dim, f16
    info = await engine.info()
    assert info.synthetic_weights
    assert info.version.startswith("llama-cpp-python ")


@pytest.mark.asyncio
async def test_a_request_longer_than_the_context_is_a_failed_sample(
    engine: LlamaCppBackend, tiny_gguf: Path
) -> None:
    sample = await measure_one(engine, GenerateRequest(str(tiny_gguf), PROMPT, max_tokens=2000))
    assert not sample.ok
    assert sample.error is not None
    assert "exceed the loaded context of 1024 tokens" in sample.error


@pytest.mark.asyncio
async def test_a_missing_model_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(
        ModelNotFoundError, match=r"no model file at .*nowhere\.gguf.*synthetic_gguf"
    ):
        await LlamaCppBackend().load(str(missing), LoadSettings())


@pytest.mark.asyncio
@pytest.mark.parametrize("content", [b"not a model at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 64])
async def test_a_corrupt_gguf_names_the_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"bad\.gguf .*(not a GGUF file|corrupt)"):
        await LlamaCppBackend().load(str(bad), LoadSettings())


@pytest.mark.asyncio
async def test_a_context_beyond_the_model_is_refused_before_loading(tiny_gguf: Path) -> None:
    backend = LlamaCppBackend()
    with pytest.raises(ContextTooLargeError, match="supports at most 4096 tokens of context"):
        await backend.load(str(tiny_gguf), LoadSettings(context_tokens=8192))
    assert (await backend.memory()).model_bytes is None


@pytest.mark.asyncio
async def test_exact_prompt_lengths_with_the_real_tokenizer(
    engine: LlamaCppBackend, tiny_gguf: Path
) -> None:
    from lmgauge.workload import exact_prompt

    for n in (1, 17, 128, 300):
        prompt = exact_prompt(n, engine.count_tokens, seed=n)
        sample = await measure_one(
            engine, GenerateRequest(str(tiny_gguf), prompt, max_tokens=2), expected_prompt_tokens=n
        )
        assert sample.prompt_tokens == n
        assert sample.valid


def test_the_header_is_read_once_per_version_of_the_file(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every arm switch of the paired gate loads the model again: the header read
    (~0.25 s on the 0.6B file) is not repeated, but a rewritten file is read afresh."""
    from lmgauge.backends import llamacpp

    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    reads: list[Path] = []
    real = llamacpp.read_gguf_header
    monkeypatch.setattr(llamacpp, "read_gguf_header", lambda p: reads.append(p) or real(p))
    first = llamacpp.cached_gguf_header(copy)
    assert llamacpp.cached_gguf_header(copy) == first
    assert reads == [copy]
    os.utime(copy, ns=(0, copy.stat().st_mtime_ns + 1_000_000))
    assert llamacpp.cached_gguf_header(copy) == first
    assert reads == [copy, copy]
