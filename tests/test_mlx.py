"""MLX for real, on Linux CPU: the in-process MLXBackend and ``python -m mlx_lm server``
(through OpenAIBackend), both on tiny synthetic MLX models with the real Qwen3 vocabulary.

MLX's Linux wheel (``mlx[cpu]``) has no Metal and a single-threaded reference BLAS, so
these tests check mlx-lm's code paths and lmgauge's accounting of them, never Apple
Silicon speed. A 2-layer, 64-wide model decodes at ~50-100 tokens/s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.mlx import MLXBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.errors import ConfigError, ContextTooLargeError, ModelFileError, ModelNotFoundError
from lmgauge.measure import measure, measure_one
from lmgauge.synthetic_mlx import SYNTHETIC_MARKER, synthetic_mlx_model

sys.path.insert(0, str(Path(__file__).parent))  # the tests' shared helper modules
from tiny_models import TINY_MLX_QWEN3

pytest.importorskip("mlx_lm", reason="mlx-lm is not installed: pip install -e '.[mlx]'")

ASYNC = pytest.mark.asyncio(loop_scope="module")  # one loop: the loaded engine is shared
# No trailing space: mlx-lm's BPE detokenizer holds a lone space back until the next token.
PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)
QWEN_EOS = (151643, 151645)


@pytest.fixture(scope="session")
def tiny_mlx() -> Callable[[str], Path]:
    """Build (once, cached under ~/.cache/lmgauge/models/mlx) the tiny model at a quant."""
    return lambda quantization: synthetic_mlx_model(TINY_MLX_QWEN3, quantization)


@pytest.fixture(scope="module")
def tiny_bf16(tiny_mlx: Callable[[str], Path]) -> Path:
    return tiny_mlx("bf16")


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[MLXBackend]:
    """An MLXBackend closed at the end: MLX may abort the process at exit otherwise."""
    backend = MLXBackend()
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_bf16: Path) -> AsyncIterator[MLXBackend]:
    async with _backend() as backend:
        await backend.load(str(tiny_bf16), LoadSettings(context_tokens=1024))
        yield backend


def _request(model: Path, i: int, max_tokens: int = 24, **kwargs: object) -> GenerateRequest:
    return GenerateRequest(str(model), f"{i} {PROMPT}", max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


# --- the in-process engine -------------------------------------------------------------


@ASYNC
async def test_every_sample_has_the_requested_length_and_consistent_timings(
    engine: MLXBackend, tiny_bf16: Path
) -> None:
    samples = await measure(engine, lambda i: _request(tiny_bf16, i), samples=5, warmups=1)
    measured = [s for s in samples if not s.warmup]
    assert all(s.valid for s in measured), [s.invalid_reason for s in measured]
    for i, sample in enumerate(measured, start=1):
        assert sample.output_tokens == 24
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 23
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s
        assert sample.server is not None
        assert (
            sample.server.prompt_tokens
            == sample.prompt_tokens
            == engine.count_tokens(f"{i} {PROMPT}")
        )
        assert sample.server.output_tokens == 24
        assert sample.server.decode_tokens == 23  # the first token is timed in prefill


@ASYNC
async def test_client_rates_agree_with_mlx_lm_own(engine: MLXBackend, tiny_bf16: Path) -> None:
    """Tolerances: TTFT exceeds mlx-lm's prompt time (prompt_tokens / prompt_tps) by 0 to
    10 ms, and the client's decode rate is within 2% of decode_tokens / decode_s (medians).
    Measured here: 0.7 ms and 0.01%. Both clocks run in the same worker thread around the
    same generator steps; the TTFT gap is what happens before mlx-lm starts its timer
    (handing the request to the worker, tokenizing, making the KV cache).

    mlx-lm's own ``generation_tps`` (kept as output_tokens / decode_s) divides n tokens by
    the time of n - 1 (its timer starts after the first token), so it reads n/(n-1) high:
    24/23 here. The backend reports decode_tokens = n - 1 to undo that.
    """
    samples = await measure(engine, lambda i: _request(tiny_bf16, i), samples=5, warmups=1)
    valid = [s for s in samples if s.valid]
    assert len(valid) == 5
    ttft_gap = statistics.median(s.ttft_s - s.server.prompt_s for s in valid)  # type: ignore[operator,union-attr]
    rate_ratio = statistics.median(
        s.decode_tokens_per_s / s.server_decode_tokens_per_s  # type: ignore[operator]
        for s in valid
    )
    raw_ratio = statistics.median(
        s.server.output_tokens / s.server.decode_s / s.decode_tokens_per_s  # type: ignore[operator,union-attr]
        for s in valid
    )
    assert 0 <= ttft_gap < 0.010
    assert 0.98 < rate_ratio < 1.02
    assert raw_ratio == pytest.approx(24 / 23, rel=0.01)


@ASYNC
async def test_peak_memory_is_reset_for_every_request(engine: MLXBackend, tiny_bf16: Path) -> None:
    import mlx.core as mx

    assert (await measure_one(engine, _request(tiny_bf16, 0, max_tokens=4))).valid
    first_peak = engine.last_request_peak_bytes

    def allocate() -> None:  # 256 MiB: raises MLX's peak; in a thread that cleans up after
        mx.eval(mx.zeros((64, 1024, 1024), dtype=mx.float32))
        mx.clear_streams()

    await asyncio.to_thread(allocate)
    assert mx.get_peak_memory() >= 256 * 1024**2
    assert (await measure_one(engine, _request(tiny_bf16, 1, max_tokens=4))).valid
    second_peak = engine.last_request_peak_bytes
    assert first_peak is not None
    assert second_peak is not None
    assert second_peak < 2 * first_peak < 256 * 1024**2
    report = await engine.memory()
    weights = (tiny_bf16 / "model.safetensors").stat().st_size
    assert report.model_bytes is not None
    assert 0.95 * weights < report.model_bytes <= weights
    assert report.model_bytes <= second_peak
    assert report.rss_bytes is not None
    assert report.rss_bytes > report.model_bytes
    assert report.kv_cache_bytes == 2 * 2 * 1 * 64 * 2 * 256  # layers, K+V, heads, dim, bf16, step
    assert f"peak during the last request {second_peak} B" in report.source
    info = await engine.info()
    assert info.synthetic_weights
    assert info.version.startswith("mlx-lm ")
    assert ("no Metal" in info.version) == (not mx.metal.is_available())


@ASYNC
async def test_a_4bit_model_loads_and_generates(tiny_mlx: Callable[[str], Path]) -> None:
    model = tiny_mlx("4bit")
    config = json.loads((model / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    async with _backend() as backend:
        await backend.load(str(model), LoadSettings(context_tokens=512))
        sample = await measure_one(backend, _request(model, 0, max_tokens=4))
        report = await backend.memory()
    assert sample.valid, sample.invalid_reason
    assert sample.output_tokens == 4
    assert report.model_bytes is not None
    assert report.model_bytes < 0.4 * 151936 * 64 * 2  # 4.5 of 16 bits per weight


@ASYNC
async def test_kv_cache_quantization_is_applied(tiny_bf16: Path) -> None:
    kv_bytes = {}
    async with _backend() as backend:
        for kv_type in ("f16", "q8_0", "q4_0"):
            await backend.load(
                str(tiny_bf16), LoadSettings(context_tokens=512, kv_cache_type=kv_type)
            )
            sample = await measure_one(backend, _request(tiny_bf16, 0, max_tokens=8))
            assert sample.valid, sample.invalid_reason
            kv_bytes[kv_type] = (await backend.memory()).kv_cache_bytes
        with pytest.raises(ConfigError, match="unknown KV cache type 'q5_1'"):
            await backend.load(str(tiny_bf16), LoadSettings(kv_cache_type="q5_1"))
    f16, q8, q4 = kv_bytes["f16"], kv_bytes["q8_0"], kv_bytes["q4_0"]
    assert f16 is not None
    assert q8 == pytest.approx(f16 * 8.5 / 16, rel=0.02)  # 8 bits + bf16 scale, bias per 64
    assert q4 == pytest.approx(f16 * 4.5 / 16, rel=0.02)


@ASYNC
async def test_thinking_switch_and_reasoning_tokens(
    engine: MLXBackend, tiny_bf16: Path, tmp_path: Path
) -> None:
    def chat(model: Path, thinking: bool | None) -> GenerateRequest:
        return GenerateRequest(str(model), "Hi", max_tokens=6, chat=True, thinking=thinking)

    on = await measure_one(engine, chat(tiny_bf16, True))
    off = await measure_one(engine, chat(tiny_bf16, False))
    assert on.prompt_tokens is not None
    assert off.prompt_tokens == on.prompt_tokens + engine.count_tokens("<think>\n\n</think>\n\n")
    assert on.valid
    assert off.valid
    default = await measure_one(engine, chat(tiny_bf16, None))
    assert default.prompt_tokens == on.prompt_tokens  # mlx-lm enables thinking by default
    # A template that opens the think block itself, as Qwen3-Thinking-2507's does.
    thinker = tmp_path / "thinker"
    shutil.copytree(tiny_bf16, thinker)
    config_path = thinker / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = config["chat_template"].replace(
        "'<|im_start|>assistant\\n' }}", "'<|im_start|>assistant\\n<think>\\n' }}", 1
    )
    config_path.write_text(json.dumps(config))
    async with _backend() as backend:
        await backend.load(str(thinker), LoadSettings(context_tokens=512))
        sample = await measure_one(backend, chat(thinker, None))
    assert sample.valid, sample.invalid_reason
    assert sample.thinking_tokens == 6  # greedy here repeats the prompt's last token, not </think>
    assert sample.time_to_first_answer_s is None


@ASYNC
async def test_a_request_beyond_the_context_is_a_failed_sample(
    engine: MLXBackend, tiny_bf16: Path
) -> None:
    sample = await measure_one(engine, _request(tiny_bf16, 0, max_tokens=2000))
    assert not sample.ok
    assert sample.error is not None
    assert "exceed the loaded context of 1024 tokens" in sample.error
    async with _backend() as backend:
        with pytest.raises(ContextTooLargeError, match="supports at most 4096 tokens"):
            await backend.load(str(tiny_bf16), LoadSettings(context_tokens=8192))
        assert (await backend.memory()).model_bytes is None


@ASYNC
async def test_a_missing_model_folder_names_the_path_and_the_fix(tmp_path: Path) -> None:
    async with _backend() as backend:
        with pytest.raises(
            ModelNotFoundError, match=r"no MLX model folder at .*nowhere.*synthetic_mlx"
        ):
            await backend.load(str(tmp_path / "nowhere"), LoadSettings())


@ASYNC
@pytest.mark.parametrize("damage", ["no config.json", "truncated weights", "a file"])
async def test_a_corrupt_model_folder_names_it(
    tiny_bf16: Path, tmp_path: Path, damage: str
) -> None:
    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_bf16, bad)
    if damage == "no config.json":
        (bad / "config.json").unlink()
    elif damage == "truncated weights":
        weights = bad / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4096])
    else:
        shutil.rmtree(bad)
        bad.write_bytes(b"GGUF")
    async with _backend() as backend:
        with pytest.raises(ModelFileError, match=r"bad-model"):
            await backend.load(str(bad), LoadSettings())


# --- the synthetic model builder --------------------------------------------------------


def test_synthetic_models_are_marked_cached_and_mlx_only(tiny_bf16: Path) -> None:
    config = json.loads((tiny_bf16 / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config[SYNTHETIC_MARKER]["seed"] == 0
    assert sorted(p.name for p in tiny_bf16.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    start = time.perf_counter()
    assert synthetic_mlx_model(TINY_MLX_QWEN3) == tiny_bf16
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ConfigError, match="'Q4_K_M' is a GGUF quantization"):
        synthetic_mlx_model(TINY_MLX_QWEN3, "Q4_K_M")
    odd_qwen2 = dataclasses.replace(TINY_MLX_QWEN3, gguf_arch="qwen2", head_dim=48)
    with pytest.raises(ConfigError, match="qwen2 derives head_dim"):
        synthetic_mlx_model(odd_qwen2)


@ASYNC
@pytest.mark.parametrize("quantization", ["4bit", "bf16"])
async def test_a_tiny_mixture_of_experts_runs_where_mlx_can(quantization: str) -> None:
    import mlx.core as mx

    if quantization == "bf16" and not mx.metal.is_available():
        pytest.skip(
            "MLX's CPU build cannot run bf16 mixture-of-experts layers: mlx-lm's SwitchGLU "
            "calls gather_mm, and its CPU kernel fails with '[GatherMM::eval] Currently only "
            "supports float32'; quantized experts (gather_qmm) do run"
        )
    moe = dataclasses.replace(
        TINY_MLX_QWEN3,
        name="lmgauge-tiny-qwen3moe-mlx",
        gguf_arch="qwen3moe",
        intermediate_size=64,
        tied_embeddings=False,
        n_experts=4,
        n_active_experts=2,
    )
    model = synthetic_mlx_model(moe, quantization)
    async with _backend() as backend:
        await backend.load(str(model), LoadSettings(context_tokens=512))
        sample = await measure_one(backend, _request(model, 0, max_tokens=4))
    assert sample.valid, sample.error or sample.invalid_reason


# --- mlx_lm.server, driven through OpenAIBackend ----------------------------------------


def _mlx_lm_server(
    server_process: Callable[..., AbstractContextManager[str]],
    model: Path,
    folder: Path,
    *extra_args: str,
) -> AbstractContextManager[str]:
    """``python -m mlx_lm server`` (the real one) on a free loopback port; yields its URL.

    HF_HUB_CACHE points at an empty folder: without one, /v1/models answers 200 with an
    empty body. /health answers once the HTTP server is up; the model loads on the first
    request.
    """
    (folder / "hub").mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(folder / "hub"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)  # it warns at start-up; as an error, the server hangs
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", "{port}", *extra_args]
    return server_process("mlx_lm server", command, "/health", folder / "server.log", env=env)


@pytest.fixture(scope="module")
def mlx_server(
    tiny_bf16: Path,
    tmp_path_factory: pytest.TempPathFactory,
    server_process: Callable[..., AbstractContextManager[str]],
) -> Iterator[str]:
    """The server as a benchmark needs it: ``--prompt-cache-size 0``, so every request pays
    its own prefill (its default keeps 10 prompt caches; see the last test)."""
    folder = tmp_path_factory.mktemp("mlx_server")
    with _mlx_lm_server(server_process, tiny_bf16, folder, "--prompt-cache-size", "0") as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def server_client(mlx_server: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(mlx_server)
    yield backend
    await backend.aclose()


@ASYNC
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_server_samples_have_the_requested_length_and_usage(
    server_client: OpenAIBackend, engine: MLXBackend, tiny_bf16: Path, chat: bool
) -> None:
    samples = await measure(
        server_client, lambda i: _request(tiny_bf16, i, 16, chat=chat), samples=3, warmups=1
    )
    for i, sample in enumerate(samples[1:], start=1):
        assert sample.valid, sample.invalid_reason
        assert sample.output_tokens == 16  # logit_bias against EOS held
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 15
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s
        assert sample.server is not None  # from stream_options.include_usage
        assert sample.server.output_tokens == 16
        assert sample.server.cached_prompt_tokens == 0
        if not chat:
            assert sample.server.prompt_tokens == engine.count_tokens(f"{i} {PROMPT}")


@ASYNC
async def test_server_ignores_ignore_eos_but_honours_logit_bias(
    mlx_server: str, tiny_bf16: Path
) -> None:
    """mlx_lm.server reads no ``ignore_eos``: with it set and EOS forced by a +100 bias the
    answer stops at once. A -100 bias on the EOS ids is what holds the length, and it is
    what OpenAIBackend sends. The usage counts the EOS token as a completion token."""
    body = {"model": str(tiny_bf16), "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    async with httpx.AsyncClient(base_url=mlx_server, timeout=60) as client:
        forced = {**body, "ignore_eos": True, "logit_bias": {str(QWEN_EOS[1]): 100}}
        stopped = (await client.post("/v1/completions", json=forced)).json()
        banned = {**body, "logit_bias": {str(t): -100 for t in QWEN_EOS}}
        full = (await client.post("/v1/completions", json=banned)).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 1
    assert full["choices"][0]["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 8


@ASYNC
async def test_server_prompt_cache_is_off_only_by_its_flag(
    server_client: OpenAIBackend,
    tiny_bf16: Path,
    tmp_path: Path,
    server_process: Callable[..., AbstractContextManager[str]],
) -> None:
    """REAL mlx_lm.server, twice. It reads no ``cache_prompt`` and by default keeps 10 prompt
    caches, reusing the longest common prefix: a repeated prompt is served from one (a
    cache hit, so no prefill sample), and every chat request after the first reuses the
    chat template's head (``<|im_start|>user\n``), a few tokens that leave the sample
    valid. ``--prompt-cache-size 0`` (what lmgauge starts it with) turns all that off."""
    same = GenerateRequest(str(tiny_bf16), f"cache {PROMPT}", max_tokens=4)
    assert (await measure_one(server_client, same)).valid
    assert (await measure_one(server_client, same)).valid  # --prompt-cache-size 0
    with _mlx_lm_server(server_process, tiny_bf16, tmp_path) as url:
        default_server = OpenAIBackend(url)
        try:
            await default_server.load(str(tiny_bf16), LoadSettings())
            await measure_one(default_server, same)
            again = await measure_one(default_server, same)
            chats = [
                await measure_one(default_server, _request(tiny_bf16, i, 4, chat=True))
                for i in range(1, 4)
            ]
        finally:
            await default_server.aclose()
    assert again.invalid_reason is not None
    assert again.invalid_reason.startswith("prompt cache hit")
    assert all(sample.valid for sample in chats), [s.invalid_reason for s in chats]
    for sample in chats[1:]:  # the first chat prompt had no chat prompt before it
        assert sample.server is not None
        assert sample.server.prompt_tokens is not None
        assert 0 < (sample.server.cached_prompt_tokens or 0) < 0.1 * sample.server.prompt_tokens


LONE_SPACE = 220  # "Ġ" of Qwen's byte-level BPE (and of the tiny model's tokenizer): " "


class Forcing(OpenAIBackend):
    """OpenAIBackend that forces one token at every step (a +100 logit bias on it)."""

    def __init__(self, base_url: str, token: int) -> None:
        super().__init__(base_url)
        self.token = token

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        body = super()._body(request)
        body["logit_bias"] = {**body.get("logit_bias", {}), str(self.token): 100}
        return body


@ASYNC
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_server_token_counts_follow_its_usage_when_events_carry_several(
    mlx_server: str, tiny_bf16: Path, chat: bool
) -> None:
    """REAL mlx_lm.server. Every token is forced to be a lone space, which mlx-lm's BPE
    detokenizer holds back until a later token (tokenizer_utils.py), and the server writes
    an event only when there is text: 16 tokens (EOS banned) arrive in one text event. The
    usage count tops them up, so the sample has the 16 tokens the server generated, not 1
    (which measure() took for an early stop). A forced EOS is counted in the usage but is
    no output token."""
    spaces, eos = Forcing(mlx_server, LONE_SPACE), Forcing(mlx_server, QWEN_EOS[1])
    try:
        chunks = [c async for c in spaces.generate(_request(tiny_bf16, 7, 16, chat=chat))]
        sample = await measure_one(spaces, _request(tiny_bf16, 8, 16, chat=chat))
        stopped = await measure_one(eos, _request(tiny_bf16, 9, 16, chat=chat, ignore_eos=False))
    finally:
        await spaces.aclose()
        await eos.aclose()
    assert len([c for c in chunks if c.text]) == 1  # the merge this test is about
    assert sum(c.tokens for c in chunks) == 16
    assert sample.valid, sample.invalid_reason
    assert sample.output_tokens == 16
    assert len(sample.itl_s) == 15
    assert sample.finish_reason == "length"
    assert sample.server is not None
    assert sample.server.output_tokens == 16
    assert stopped.finish_reason == "stop"
    assert stopped.output_tokens == 0
    assert stopped.server is not None
    assert stopped.server.output_tokens == 1  # the EOS


@ASYNC
async def test_server_batches_concurrent_requests_that_carry_no_seed(
    server_client: OpenAIBackend, tiny_bf16: Path
) -> None:
    """REAL mlx_lm.server. It serves a request that carries a seed alone, never in a batch
    (mlx_lm/server.py _is_batchable), so OpenAIBackend sends none unless asked; four
    concurrent requests are then decoded together. Aggregate tokens/s at concurrency 4
    over concurrency 1, in alternating rounds so that drift cancels: measured here (2
    shared cores) 1.42-1.56 without a seed, 0.95-1.21 with seed 0 in every request (what
    lmgauge used to send)."""
    totals = {1: [0, 0.0], 4: [0, 0.0]}  # tokens, seconds
    for round_ in range(3):
        for concurrency in (1, 4) if round_ % 2 == 0 else (4, 1):
            requests = [
                _request(tiny_bf16, 100 * round_ + 10 * concurrency + k, 32)
                for k in range(concurrency)
            ]
            start = time.perf_counter()
            samples = await asyncio.gather(
                *(measure_one(server_client, r, concurrent=True) for r in requests)
            )
            totals[concurrency][1] += time.perf_counter() - start
            assert all(s.valid for s in samples), [s.invalid_reason for s in samples]
            totals[concurrency][0] += sum(s.output_tokens for s in samples)
    ratio = (totals[4][0] / totals[4][1]) / (totals[1][0] / totals[1][1])
    assert ratio > 1.25, f"c4/c1 aggregate throughput {ratio:.2f}"
