"""The Ollama backend, driven through lmgauge.measure as users run it, against a
protocol-faithful fake; Ollama cannot run on this machine (tests/fake_ollama.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgauge import workload as workload_module
from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.backends.ollama_stream import (
    NDJSONSplitter,
    canonical_name,
    chunks_from_objects,
    parse_ndjson_line,
)
from lmgauge.errors import (
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)
from lmgauge.measure import Sample, measure, measure_one
from lmgauge.runner import Case, Runner, Workload

sys.path.insert(0, str(Path(__file__).parent))
from fake_ollama import TEMPLATE_TOKENS, FakeModel, FakeOllama, go_json

pytest_plugins = ["pytester"]

MODEL = "qwen3:8b"
THINKER = "qwen3:1.7b"
SHORT = "qwen3:0.6b"  # stops on its own after 5 tokens
EMBEDDER = "nomic-embed-text"
MODELS = {
    MODEL: FakeModel(),
    THINKER: FakeModel(size=1_360_000_000, thinking=True, thinking_tokens=10),
    SHORT: FakeModel(size=523_000_000, answer_tokens=5, vram_fraction=0.5),
    EMBEDDER: FakeModel(size=274_000_000, family="nomic-bert", embedding_length=16),
}
PROMPT = "Count the words in this sentence, please."
SETTINGS = LoadSettings(context_tokens=8192, threads=2)


@pytest.fixture
def make_fake() -> Iterator[Callable[..., FakeOllama]]:
    started: list[FakeOllama] = []

    def make(**kwargs: Any) -> FakeOllama:
        fake = FakeOllama(MODELS, **{"ttft_s": 0.03, "itl_s": 0.004, "load_s": 0.25, **kwargs})
        started.append(fake.__enter__())
        return fake

    yield make
    for fake in started:
        fake.__exit__(None, None, None)


@pytest.fixture
def fake(make_fake: Callable[..., FakeOllama]) -> FakeOllama:
    return make_fake()


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Callable[[str], OllamaBackend]]:
    opened: list[OllamaBackend] = []

    def connect(url: str) -> OllamaBackend:
        opened.append(OllamaBackend(url, connect_timeout_s=1))
        return opened[-1]

    yield connect
    for backend in opened:
        await backend.aclose()


@pytest_asyncio.fixture
async def client(
    fake: FakeOllama, connect: Callable[[str], OllamaBackend]
) -> AsyncIterator[OllamaBackend]:
    yield connect(fake.url)


def _request(model: str = MODEL, **kwargs: Any) -> Callable[[int], GenerateRequest]:
    return lambda i: GenerateRequest(model, f"{i} {PROMPT}", **{"max_tokens": 48, **kwargs})


def _close(a: float, b: float, tolerance: float = 0.05) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


@pytest.mark.asyncio
@pytest.mark.parametrize("chat", [False, True], ids=["generate", "chat"])
async def test_warm_samples_have_the_length_and_timings_the_server_reports(
    client: OllamaBackend, fake: FakeOllama, chat: bool
) -> None:
    await client.load(MODEL, SETTINGS)
    samples = await measure(client, _request(chat=chat), samples=3, warmups=1)
    assert fake.loads == 1  # the load's runner options went with every request: no reload
    for sample in samples[1:]:
        assert sample.valid, sample.invalid_reason
        assert (sample.output_tokens, sample.finish_reason, len(sample.itl_s)) == (48, "length", 47)
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s
        server = sample.server
        assert server is not None
        assert server.decode_s
        assert server.total_s
        # /api/chat reuses the template head, which prompt_eval_duration leaves out.
        assert (server.prompt_s is None) is chat
        assert server.output_tokens == 48
        assert server.prompt_tokens == len(PROMPT.split()) + 1 + (TEMPLATE_TOKENS if chat else 0)
        # The fake's durations are its real send schedule: the client must see the same.
        assert _close(sum(sample.itl_s), server.decode_s)
        decode, server_decode = sample.decode_tokens_per_s, sample.server_decode_tokens_per_s
        assert decode is not None
        assert server_decode is not None
        assert _close(decode, server_decode)
        # The client's wait adds the HTTP round trip, a few ms, to the server's total.
        assert 0 < sample.e2e_s - server.total_s < 0.05 * server.total_s + 0.01
        assert server.load_s is not None
        assert sample.ttft_s > server.load_s + (server.prompt_s or 0.0)
    method, path, body = fake.requests[-1]
    assert (method, path) == ("POST", "/api/chat" if chat else "/api/generate")
    assert body["stream"] is True
    assert "think" not in body
    assert body.get("raw") is (None if chat else True)
    assert body["options"] == {
        "num_ctx": 8192,
        "num_batch": 512,
        "num_thread": 2,
        "use_mmap": True,
        "num_predict": 48,
        "temperature": 0.0,
    }  # no seed: the request has none


@pytest.mark.asyncio
async def test_a_cold_load_inside_a_request_is_flagged(
    client: OllamaBackend, fake: FakeOllama, connect: Callable[[str], OllamaBackend]
) -> None:
    sample = await measure_one(client, _request()(0))
    assert sample.ok
    assert not sample.valid
    assert sample.invalid_reason is not None
    assert sample.invalid_reason.startswith("cold load")
    # Another client that did not load the model sends other runner options: Ollama reloads.
    await client.load(MODEL, SETTINGS)
    assert (await measure_one(client, _request()(1))).valid
    other = await measure_one(connect(fake.url), _request()(2))
    assert other.invalid_reason is not None
    assert other.invalid_reason.startswith("cold load")
    assert fake.loads == 3


@pytest.mark.asyncio
async def test_an_early_stop_is_flagged(client: OllamaBackend) -> None:
    await client.load(SHORT, SETTINGS)
    sample = await measure_one(client, _request(SHORT, max_tokens=32)(0))
    assert sample.ok
    assert (sample.output_tokens, sample.finish_reason) == (5, "stop")
    assert sample.invalid_reason == "early stop: 5 of 32 tokens (finish_reason='stop')"
    assert sample.server is not None
    assert sample.server.output_tokens == 6  # Ollama counts the end-of-sequence token


@pytest.mark.asyncio
@pytest.mark.parametrize("chat", [False, True], ids=["generate", "chat"])
async def test_thinking_tokens_are_counted_apart(
    client: OllamaBackend, fake: FakeOllama, chat: bool
) -> None:
    await client.load(THINKER, SETTINGS)
    # Raw /api/generate sends the <think> and </think> tags as objects with no text; /api/chat
    # sends nothing for them, and eval_count brings them back as tokens of the answer.
    thought = 8 if chat else 10
    thinking = await measure_one(client, _request(THINKER, chat=chat, thinking=True)(0))
    assert thinking.valid, thinking.invalid_reason
    assert (thinking.output_tokens, thinking.thinking_tokens) == (48, thought)
    assert thinking.ttft_s is not None
    assert thinking.time_to_first_answer_s is not None
    assert thinking.time_to_first_answer_s > thinking.ttft_s + 7 * fake.itl_s
    assert fake.requests[-1][2]["think"] is True
    default = await measure_one(client, _request(THINKER, chat=chat)(1))
    assert default.thinking_tokens == thought  # Ollama thinks by default on a thinking model
    plain = await measure_one(client, _request(THINKER, chat=chat, thinking=False)(2))
    assert (plain.output_tokens, plain.thinking_tokens) == (48, 0)
    assert plain.time_to_first_answer_s == pytest.approx(plain.ttft_s)
    refused = await measure_one(client, _request(MODEL, chat=chat, thinking=True)(3))
    assert not refused.ok
    assert refused.error is not None
    assert "HTTP 400" in refused.error
    assert "does not support thinking" in refused.error


@pytest.mark.asyncio
async def test_models_load_memory_and_unload(client: OllamaBackend, fake: FakeOllama) -> None:
    assert (await client.info()).version == "ollama 0.33.0"
    models = {m.name: m for m in await client.list_models()}
    assert set(models) == {canonical_name(name) for name in MODELS}
    assert not any(m.loaded for m in models.values())
    assert models[MODEL].size_bytes == 5_225_000_000
    assert models[MODEL].quantization == "Q4_K_M"
    assert len(models[MODEL].digest or "") == 64
    assert (await client.memory()).source.endswith("no model loaded")

    cold = await client.load(SHORT, SETTINGS)
    assert not cold.already_loaded
    assert cold.load_s >= fake.load_s
    assert cold.server_load_s is None  # Ollama's load answer carries no timings
    warm = await client.load(SHORT, SETTINGS)
    assert warm.already_loaded
    assert warm.load_s < fake.load_s
    resized = await client.load(SHORT, LoadSettings(context_tokens=2048))
    assert not resized.already_loaded
    assert fake.loads == 2
    rethreaded = await client.load(SHORT, LoadSettings(context_tokens=2048, threads=1))
    assert not rethreaded.already_loaded  # same context, other runner options: reloaded
    assert fake.loads == 3
    loaded = {m.name: m for m in await client.list_models()}[SHORT]
    assert loaded.loaded
    assert loaded.context_tokens == 2048

    memory = await client.memory()
    assert memory.model_bytes == 523_000_000  # the weights; /api/ps size adds KV and buffers
    assert "50% in GPU memory" in memory.source
    assert "/api/ps" in memory.source
    assert memory.kv_cache_bytes is None

    await client.unload(SHORT)  # the fake, like Ollama, lets go of it a moment later
    assert not any(m.loaded for m in await client.list_models())
    assert [b for m, _, b in fake.requests if m == "POST"][-1] == {"model": SHORT, "keep_alive": 0}


@pytest.mark.asyncio
async def test_keep_alive_goes_with_every_request(fake: FakeOllama) -> None:
    backend = OllamaBackend(fake.url, keep_alive="-1m")
    try:
        await backend.load(MODEL, SETTINGS)
        await measure_one(backend, _request(max_tokens=2)(0))
        await backend.embed(["a"], EMBEDDER)
    finally:
        await backend.aclose()
    posts = [body for method, _, body in fake.requests if method == "POST"]
    assert [body["keep_alive"] for body in posts] == ["-1m"] * 3
    assert fake.loaded[MODEL].expires_at == math.inf  # negative: kept loaded for ever


@pytest.mark.asyncio
async def test_embeddings(client: OllamaBackend) -> None:
    vectors = await client.embed(["why is the sky blue?", "why is the grass green?"], EMBEDDER)
    assert [len(v) for v in vectors] == [16, 16]
    assert vectors[0] != vectors[1]
    assert await client.embed(["why is the sky blue?"], EMBEDDER) == vectors[:1]
    with pytest.raises(ModelNotFoundError, match="ollama pull nomic-embed-text:v9"):
        await client.embed(["x"], "nomic-embed-text:v9")


@pytest.mark.asyncio
async def test_an_unknown_model_says_to_pull_it(client: OllamaBackend, fake: FakeOllama) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"model 'qwen9:1b' not found.*`ollama pull qwen9:1b`"
    ):
        await client.load("qwen9:1b", SETTINGS)
    sample = await measure_one(client, _request("qwen9:1b")(0))
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith("ModelNotFoundError")
    assert f"{fake.url}/api/generate" in sample.error


@pytest.mark.asyncio
async def test_a_full_queue_is_a_503_that_names_ollama_max_queue(
    make_fake: Callable[..., FakeOllama], connect: Callable[[str], OllamaBackend]
) -> None:
    fake = make_fake(max_queue=1, itl_s=0.01)
    client = connect(fake.url)
    await client.load(MODEL, SETTINGS)
    long = client.generate(_request(max_tokens=60)(0))
    first = await anext(long)  # now it is in flight
    with pytest.raises(ServerError, match="OLLAMA_MAX_QUEUE") as info:
        async for _ in client.generate(_request()(1)):
            pass
    assert info.value.status_code == 503
    assert "server busy" in str(info.value)
    rest = [chunk async for chunk in long]  # the request in flight is not disturbed
    assert sum(chunk.tokens for chunk in [first, *rest]) == 60
    assert (await measure_one(client, _request()(2))).valid  # nor the next one


@pytest.mark.asyncio
async def test_a_refused_connection_names_the_url_and_the_fix(
    connect: Callable[[str], OllamaBackend],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = connect(f"http://127.0.0.1:{port}")
    with pytest.raises(
        BackendUnavailableError, match=rf"127\.0\.0\.1:{port}/api/tags.*ollama serve"
    ):
        await nowhere.list_models()
    sample = await measure_one(nowhere, _request()(0))
    assert not sample.ok
    assert sample.error is not None
    assert "is `ollama serve` running?" in sample.error


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("switch", "error"),
    [
        ("malformed_after", r"ProtocolError: NDJSON line is not JSON .*'\{\"model\""),
        ("disconnect_after", "ProtocolError: .*connection broke mid-response"),
        ("error_after", "ServerError: Ollama reported an error mid-stream: an error was"),
    ],
)
async def test_a_broken_stream_is_a_failed_sample(
    make_fake: Callable[..., FakeOllama],
    connect: Callable[[str], OllamaBackend],
    switch: str,
    error: str,
) -> None:
    fake = make_fake(**{switch: 5})
    client = connect(fake.url)
    await client.load(MODEL, SETTINGS)
    sample = await measure_one(client, _request()(0))
    assert not sample.ok
    assert sample.error is not None
    assert sample.output_tokens == 5
    assert sample.invalid_reason is not None
    assert re.search(error, sample.error), sample.error


@pytest.mark.asyncio
async def test_a_prompt_cache_hit_hides_in_ollamas_counts(
    make_fake: Callable[..., FakeOllama], connect: Callable[[str], OllamaBackend]
) -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760 (prompt cache
    always on, llm/llama_server.go L1562): prompt_eval_count includes cached tokens, and
    only the duration shows the hit."""
    client = connect(make_fake(ttft_s=0.2).url)  # a margin over a busy machine's delays
    await client.load(MODEL, SETTINGS)
    long_prompt = " ".join(f"w{i}" for i in range(200))
    first, again = [
        await measure_one(client, GenerateRequest(MODEL, long_prompt, max_tokens=4))
        for _ in range(2)
    ]
    assert first.server is not None
    assert again.server is not None
    assert first.server.prompt_s is not None
    assert again.server.prompt_s is not None
    assert first.server.prompt_tokens == again.server.prompt_tokens == 200
    assert again.server.prompt_s < first.server.prompt_s / 5
    assert again.valid  # measure cannot tell from the counts


def _two_runs(url: str) -> list[list[Sample]]:
    """The same case measured by two sessions in a row against one server (a suite run
    twice, or the paired gate's arms): the samples of each."""
    runs = []
    for _ in range(2):
        # Other processes may share this machine's cores: the guard is tested elsewhere.
        workload = Workload(200, 2, samples=3, warmups=0, disturbance_limit=1.0)
        runner = Runner("ollama", workload, base_url=url, load_settings=lambda _: SETTINGS)
        try:
            run = runner.run(Case("ollama", "qwen3-7b", "Q4_K_M", 4096))
        finally:
            runner.close()
        assert run.error is None, run.error
        runs.append(run.samples)
    return runs


@pytest.mark.parametrize("nonce", [False, True], ids=["old-prompts", "nonce-first"])
def test_prompts_start_with_a_nonce_so_ollamas_prefill_rate_is_not_inflated(
    nonce: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760: Ollama sends its
    runner ``cache_prompt: true`` whatever the client asks (llm/llama_server.go L1562), and
    reports prompt_eval_count = cache_n + prompt_n with prompt_eval_duration = prompt_ms,
    the processed tokens' time only (L1503-1513, L1723-1726); its llama-server keeps earlier
    prompts in a RAM cache. The old prompts (a seed's shuffle, no nonce) come back in a
    second session and are served from the cache, so count / duration overstates prefill
    many times over, and no sample says so; prompts that start with a nonce never repeat,
    and count / duration is the true rate in both sessions."""
    if not nonce:
        monkeypatch.setattr(workload_module, "new_nonce", lambda: "")
    tag = "qwen2.5:7b-instruct-q4_K_M"  # the catalog's Ollama name of qwen3-7b at Q4_K_M
    with FakeOllama({tag: FakeModel()}, ttft_s=0.2, itl_s=0.002) as fake:
        first, second = _two_runs(fake.url)
    true_rate = 200 / fake.ttft_s  # the fake evaluates 200 uncached tokens in ttft_s
    prompts = [body["prompt"] for _, path, body in fake.requests if path == "/api/generate"]
    prompts = [prompt for prompt in prompts if prompt]  # not the loads
    assert len(prompts) == 6
    assert len({prompt.split()[0] for prompt in prompts}) == (6 if nonce else 3)
    for sample in first + second:
        assert sample.valid, sample.invalid_reason  # nothing in the answer tells a hit
        assert sample.server is not None
        assert sample.server.prompt_tokens == 200  # cached tokens included
    rates = [s.server_prefill_tokens_per_s for s in first + second]
    assert all(rate is not None for rate in rates)
    if nonce:
        assert rates == [pytest.approx(true_rate, rel=0.15)] * 6
    else:
        assert rates[:3] == [pytest.approx(true_rate, rel=0.15)] * 3
        assert all(rate is not None and rate > 20 * true_rate for rate in rates[3:])


@pytest.mark.parametrize(
    ("path", "raw", "empty"),
    [("/api/chat", False, 0), ("/api/generate", False, 0), ("/api/generate", True, 2)],
    ids=["chat", "generate", "generate-raw"],
)
def test_objects_carry_text_except_raw_thinking_tags_and_held_back_bytes_merge(
    fake: FakeOllama, path: str, raw: bool, empty: int
) -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760: an object is
    sent only with text (llm/llama_server.go L1705, L2036; server/routes.go L726, L2832),
    except on raw /api/generate with thinking, whose generic parser sends the swallowed
    tags empty (routes.go L697-700, L733); a token ending mid-character waits for the next
    (the answer's " ☀" is two tokens in one object). eval_count counts every token."""
    body: dict[str, Any] = {"model": THINKER, "stream": True, "think": True}
    body["options"] = {"num_predict": 30}  # 10 thinking tokens, 20 of the answer
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body.update(prompt=PROMPT, raw=raw)
    lines = httpx.post(f"{fake.url}{path}", json=body, timeout=10).content.split(b"\n")
    *stream, final = [json.loads(line) for line in lines if line]  # not at U+0085
    source = [o["message"] if path == "/api/chat" else o for o in stream]
    texts = [m.get("content", m.get("response", "")) + m.get("thinking", "") for m in source]
    assert sum(not text for text in texts) == empty
    assert texts.count(" ☀") == 2  # two tokens each, in one object
    assert final["eval_count"] == 30
    assert len(stream) == 30 - 2 - 2 + empty  # less the tags (unless sent empty) and merges


@pytest.mark.asyncio
async def test_an_answer_that_stops_counts_its_merged_tokens(client: OllamaBackend) -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760: the 5-token
    answer ends inside " ☀", whose first token llama-server holds back and never sends;
    eval_count is 6, the end-of-sequence token included (llama.cpp tools/server
    server-context.cpp L3847: n_gen counts every sampled token). 5 tokens, not 4."""
    await client.load(SHORT, SETTINGS)
    chunks = [chunk async for chunk in client.generate(_request(SHORT, max_tokens=32)(0))]
    assert len(chunks) == 5  # 4 objects with text and the final one
    assert [c.tokens for c in chunks] == [1, 1, 1, 1, 1]
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.asyncio
async def test_a_string_stop_is_a_config_error_naming_the_option(
    client: OllamaBackend, fake: FakeOllama
) -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760: ``Stop []string``
    (api/types.go L584); Options.FromMap refuses a string with 'option "stop" must be of
    type array' (L1047-1051), which handleScheduleError answers with HTTP 500
    (server/routes.go L3118)."""
    await client.load(MODEL, SETTINGS)
    refused = await measure_one(client, _request(max_tokens=4, options={"stop": "</s>"})(0))
    assert not refused.ok
    assert refused.error is not None
    assert refused.error.startswith("ConfigError: ")
    assert "refused the option 'stop' (option \"stop\" must be of type array)" in refused.error
    assert 'stop = ["</s>"]' in refused.error
    with pytest.raises(ConfigError, match=r"'num_gpu'.*must be of type integer"):
        await client.load(MODEL, LoadSettings(extra={"num_gpu": "all"}))
    listed = await measure_one(client, _request(max_tokens=4, options={"stop": ["</s>"]})(1))
    assert listed.valid, listed.invalid_reason


def test_a_model_that_is_not_pulled_skips_its_case_once_with_the_pull_command() -> None:
    """Against the fake Ollama server, which follows ollama/ollama fb30760: a model it
    does not have is 404 ``model 'X' not found`` (server/routes.go L281). The case is
    skipped, with the command that fetches it, after one load attempt."""
    with FakeOllama({}, ttft_s=0.01, itl_s=0.001) as fake:
        runner = Runner("ollama", Workload(samples=2, warmups=0), base_url=fake.url)
        case = Case("ollama", "qwen3-7b", "Q4_K_M", 4096)
        try:
            run = runner.run(case)
            assert runner.run(case) is run
            assert runner.throughput(case, 2) is run
        finally:
            runner.close()
    assert run.error is None
    assert run.skipped is not None
    assert "`ollama pull qwen2.5:7b-instruct-q4_K_M`" in run.skipped
    assert "model 'qwen2.5:7b-instruct-q4_K_M' not found" in run.skipped
    assert len([r for r in fake.requests if r[0] == "POST"]) == 1


SUITE = """
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")


def test_ttft(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "ttft_s")


def test_throughput(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check_throughput(lmgauge_case, 2)
"""


def test_a_suite_on_a_mac_without_the_models_skips_each_case_with_its_pull_command(
    pytester: pytest.Pytester,
) -> None:
    """The suite as users run it (pytest in a subprocess) against the fake Ollama server,
    which follows ollama/ollama fb30760 (404 ``model 'X' not found``, server/routes.go
    L281), with one of two models pulled: the other's tests are skipped, one summary line
    for the case with the command that fetches it, and nothing fails."""
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pulled = {"qwen3:1.7b-q4_K_M": FakeModel(size=1_360_000_000)}
    with FakeOllama(pulled, ttft_s=0.01, itl_s=0.001) as fake:
        result = pytester.runpytest_subprocess(
            "--lmgauge-backend=ollama",
            f"--lmgauge-url={fake.url}",
            "--lmgauge-models=qwen3-7b,qwen3-1.7b",
            "--lmgauge-quants=Q4_K_M",
            "--lmgauge-contexts=4096",
            "--lmgauge-samples=2",
            "--lmgauge-max-samples=2",
            "--lmgauge-max-tokens=4",
            "--lmgauge-disturbance-limit=1",
            "-rs",
            "-p",
            "no:cacheprovider",
        )
    result.assert_outcomes(passed=3, skipped=3)
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert len(skips) == 1, skips
    assert skips[0].startswith("SKIPPED [3] ")
    assert skips[0].endswith("run `ollama pull qwen2.5:7b-instruct-q4_K_M`")


# --- the NDJSON path, pure ------------------------------------------------------------


def test_lines_parse_and_garbage_is_quoted() -> None:
    assert parse_ndjson_line(b'{"response":"a","done":false}\r') == {"response": "a", "done": False}
    assert parse_ndjson_line("  ") is None
    for line, message in [
        (b"{nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"\xff{}", "not JSON"),
        (b"1" * 5000, "not JSON"),  # over Python's int digit limit: a ValueError
        (b"[" * 100_000, "not JSON"),  # a RecursionError
    ]:
        with pytest.raises(ProtocolError, match=message) as info:
            parse_ndjson_line(line)
        assert repr(line[:20])[2:-1] in str(info.value)
    with pytest.raises(ServerError, match="mid-stream: boom") as error:
        parse_ndjson_line('{"error":"boom"}')
    assert error.value.status_code == 500


def test_lines_are_cut_at_newlines_only_and_bounded() -> None:
    splitter = NDJSONSplitter(max_line_bytes=64)
    obj = go_json({"response": "a\u0085b\u2028c", "done": False}) + b"\n"
    assert b"\xc2\x85" in obj  # Go leaves U+0085 raw; str.splitlines would cut there
    pieces = [splitter.feed(obj[i : i + 1]) for i in range(len(obj))]
    assert list(itertools.chain(*pieces)) == [obj[:-1]]
    assert list(splitter.objects(b"\n")) == []
    with pytest.raises(ProtocolError, match="over 64 bytes"):
        NDJSONSplitter(max_line_bytes=64).feed(b"x" * 65)


def test_text_less_objects_are_tokens_of_their_neighbours_kind() -> None:
    objects = [
        {"response": "", "done": False},  # <think>
        {"response": "", "thinking": "hm", "done": False},
        {"response": "", "done": False},  # </think>
        {"response": "", "done": False},  # a token that decoded to nothing yet
        {"response": "Hi", "done": False},
        {"response": "", "done": True, "done_reason": "length", "eval_count": 5},
    ]
    chunks = list(chunks_from_objects([(o, float(i)) for i, o in enumerate(objects)], chat=False))
    assert [(c.tokens, c.reasoning) for c in chunks] == [
        (1, True),
        (1, True),
        (1, True),
        (1, True),
        (1, False),
        (0, False),
    ]
    assert [c.at_s for c in chunks] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert chunks[-1].finish_reason == "length"


def test_the_final_object_completes_the_count_at_num_predict() -> None:
    objects = [({"message": {"content": "ab"}, "done": False}, 1.0)]
    final = {"message": {"content": ""}, "done": True, "eval_count": 3, "eval_duration": 2e6}
    chunks = list(chunks_from_objects([*objects, (final, 2.0)], chat=True, max_tokens=3))
    assert [c.tokens for c in chunks] == [1, 2]  # done_reason left out: inferred "length"
    assert chunks[-1].finish_reason == "length"
    timings = chunks[-1].timings
    assert timings is not None
    assert (timings.decode_tokens, timings.decode_s) == (2, 0.002)
    with pytest.raises(ProtocolError, match="before `done: true`"):
        list(chunks_from_objects(objects, chat=True))


@pytest.mark.parametrize(
    ("reason", "eval_count", "tokens"),
    [
        ("stop", 9, [1, 7]),  # eval_count counts the end-of-sequence token: 8 shown
        ("stop", 2, [1, 0]),  # one token and EOS: nothing missing
        ("length", 3, [1, 2]),
        ("stop", 1, [1, 0]),  # never fewer than were streamed
    ],
)
def test_the_final_object_completes_the_count_for_every_done_reason(
    reason: str, eval_count: int, tokens: list[int]
) -> None:
    """Ollama (ollama/ollama fb30760) streams an object only when it has text, and
    llama-server holds back a token that ends mid-character: eval_count (llama-server's
    n_gen, every sampled token) is the count, less the end-of-sequence token of "stop"."""
    objects = [({"message": {"content": "ab"}, "done": False}, 1.0)]
    final = {"message": {"content": ""}, "done": True, "done_reason": reason}
    final["eval_count"] = eval_count
    chunks = list(chunks_from_objects([*objects, (final, 2.0)], chat=True))
    assert [c.tokens for c in chunks] == tokens
    assert chunks[-1].finish_reason == reason


# --- fuzzing: garbage and arbitrary splits through httpx into measure_one --------------


class _Body(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
            await asyncio.sleep(0)


async def _measure_body(pieces: list[bytes], max_tokens: int, chat: bool) -> Sample:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "application/x-ndjson"}
        return httpx.Response(200, headers=headers, stream=_Body(pieces))

    backend = OllamaBackend("http://ollama.test", transport=httpx.MockTransport(handler))
    try:
        request = GenerateRequest(MODEL, PROMPT, max_tokens=max_tokens, chat=chat)
        return await asyncio.wait_for(measure_one(backend, request), timeout=10)
    finally:
        await backend.aclose()


# Characters that break naive line splitting or escaping, among any others.
TEXT = st.text(
    st.one_of(st.sampled_from('\x85\u2028\u2029\r\n"\\<&é天☀'), st.characters(codec="utf-8")),
    max_size=6,
)
GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [b"{", b"[1]", b"null", b"{}", b'{"error":"boom"}', b"\xff\xfe", b"1" * 5000, b"[" * 5000]
    ),
    st.builds(lambda text: go_json({"response": 7, "thinking": text}), TEXT),
)
FINAL = st.fixed_dictionaries(
    {"done": st.just(True)},
    optional={
        "done_reason": st.sampled_from(["stop", "length", "", None, 7]),
        "eval_count": st.one_of(
            st.integers(-3, 60), st.sampled_from([10**9, 10**12]), st.floats(), st.text(max_size=3)
        ),
        "eval_duration": st.one_of(st.integers(-3, 10**15), st.floats()),
        "prompt_eval_count": st.integers(0, 10**6),
        "load_duration": st.integers(0, 10**10),
    },
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.tuples(st.booleans(), TEXT), max_size=30),
    final=st.one_of(st.none(), FINAL),
    garbage=st.one_of(st.just([]), st.lists(st.tuples(st.integers(0, 40), GARBAGE), max_size=2)),
    huge=st.booleans(),
    chat=st.booleans(),
    max_tokens=st.integers(1, 40),
    data=st.data(),
)
def test_fuzzed_streams_always_give_a_sample(
    texts: list[tuple[bool, str]],
    final: dict[str, Any] | None,
    garbage: list[tuple[int, bytes]],
    huge: bool,
    chat: bool,
    max_tokens: int,
    data: st.DataObject,
) -> None:
    def wrap(thinking: bool, text: str, **extra: Any) -> dict[str, Any]:
        fields = {"thinking": text} if thinking else {}
        if chat:
            message = {"role": "assistant", "content": "" if thinking else text, **fields}
            return {"model": MODEL, "message": message, **extra}
        return {"model": MODEL, "response": "" if thinking else text, **fields, **extra}

    objects = [wrap(t, s, done=False) for t, s in texts]
    if huge:
        objects.append(wrap(False, "é" * 300_000, done=False))
    lines = [go_json(o) for o in objects]
    if final is not None:
        lines.append(go_json({**wrap(False, ""), **final}))
    for at, junk in garbage:
        lines.insert(min(at, len(lines)), junk.replace(b"\n", b" "))
    body = b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

    sample = asyncio.run(_measure_body(pieces, max_tokens, chat))

    assert isinstance(sample, Sample)
    assert sample.ok or sample.invalid_reason is not None
    if not sample.ok:
        assert sample.error is not None
        assert sample.error.split(":")[0] in {"ProtocolError", "ServerError"}, sample.error
    assert sample.output_tokens <= len(lines) + max_tokens
    if not garbage and final is not None:
        assert sample.ok, sample.error
        streamed = len(objects)
        eval_count = final.get("eval_count")
        if not isinstance(eval_count, int) or eval_count < 0:
            eval_count = 0  # not a count: ignored
        reason = final.get("done_reason")
        if not isinstance(reason, str) or not reason:
            reason = "length" if eval_count >= max_tokens else "stop"
        shown = eval_count - 1 if reason == "stop" else eval_count  # EOS streams no text
        expected = max(streamed, min(shown, max_tokens))
        assert sample.output_tokens == expected
        assert sample.thinking_tokens <= sample.output_tokens
        assert sample.finish_reason == reason
        assert len(sample.itl_s) == max(0, expected - 1)
