"""The LM Studio backend, driven through lmgauge.measure as users run it, against a
protocol-faithful fake; LM Studio cannot run on this machine (tests/fake_lmstudio.py)."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from lmgauge import backends
from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.lmstudio import LMStudioBackend, timings_from_stats
from lmgauge.backends.lmstudio_load import LMStudioLoadResult
from lmgauge.catalog import resolve_model
from lmgauge.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    ServerError,
)
from lmgauge.measure import measure, measure_one
from lmgauge.runner import Case, Runner, Workload

sys.path.insert(0, str(Path(__file__).parent))
from fake_lmstudio import TEMPLATE_TOKENS, FakeLMStudio, FakeModel, write_fake_lms
from waiting import wait_until

MODEL = "qwen/qwen3-8b"
PROMPT = "Count the words in this sentence, please."

Connect = Callable[[str], LMStudioBackend]


@pytest.fixture
def make_fake() -> Iterator[Callable[..., FakeLMStudio]]:
    started: list[FakeLMStudio] = []

    def make(**kwargs: Any) -> FakeLMStudio:
        fake = FakeLMStudio(**kwargs).__enter__()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.__exit__(None, None, None)


@pytest.fixture
def fake(make_fake: Callable[..., FakeLMStudio]) -> FakeLMStudio:
    return make_fake()


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Connect]:
    """LMStudioBackend(url), closed at teardown (before the fakes it talks to stop)."""
    clients: list[LMStudioBackend] = []

    def make(url: str) -> LMStudioBackend:
        clients.append(LMStudioBackend(url))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _bodies(fake: FakeLMStudio, path: str) -> list[Any]:
    return [body for _, p, _, body in fake.requests if p == path]


@pytest.mark.asyncio
@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat"])
async def test_samples_have_the_requested_length_and_agree_with_lm_studio_stats(
    make_fake: Callable[..., FakeLMStudio], connect: Connect, chat: bool
) -> None:
    fake = make_fake(ttft_s=0.2)  # 5% of it covers the client's own request overhead
    client = connect(fake.url)
    await client.load(MODEL, LoadSettings())

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(MODEL, f"{i} {PROMPT}", max_tokens=48, chat=chat, thinking=False)

    samples = await measure(client, request, samples=3, warmups=1)
    assert samples[0].warmup
    for sample, sent in zip(samples[1:], fake.send_times[1:], strict=True):
        assert sample.valid, sample.invalid_reason
        assert sample.output_tokens == 48
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 47
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s
        server = sample.server
        assert server is not None
        assert server.output_tokens == 48
        assert sample.prompt_tokens == len(PROMPT.split()) + 1 + TEMPLATE_TOKENS
        assert server.load_s is None  # loaded before: no load inside the request
        # the fake's stats are its real send schedule; the client saw the same one
        assert server.decode_s == pytest.approx(sent[-1] - sent[0])
        assert sample.decode_tokens_per_s == pytest.approx(
            sample.server_decode_tokens_per_s, rel=0.05
        )
        assert server.prompt_s is not None
        assert sample.ttft_s == pytest.approx(server.prompt_s, rel=0.05)
    (body, *_) = _bodies(fake, "/api/v1/chat")
    assert body["max_output_tokens"] == 48
    assert body["stream"] is True
    assert body["store"] is False
    assert body["reasoning"] == "off"


@pytest.mark.asyncio
async def test_a_jit_loaded_first_request_is_a_cold_load_and_the_next_is_valid(
    fake: FakeLMStudio, connect: Connect
) -> None:
    client = connect(fake.url)
    assert not next(m for m in await client.list_models() if m.name == MODEL).loaded

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(MODEL, f"{i} {PROMPT}", max_tokens=8, thinking=False)

    cold, warm = await measure(client, request, samples=2, warmups=0)
    assert cold.invalid_reason is not None
    assert cold.invalid_reason.startswith("cold load: the server loaded the model for 0.3")
    assert cold.server is not None
    assert cold.server.load_s == pytest.approx(fake.load_s, abs=0.05)
    assert cold.ttft_s is not None
    assert cold.ttft_s > fake.load_s
    assert warm.valid, warm.invalid_reason
    assert next(m for m in await client.list_models() if m.name == MODEL).loaded


@pytest.mark.asyncio
async def test_a_request_after_the_jit_ttl_ran_out_is_a_cold_load_again(
    make_fake: Callable[..., FakeLMStudio], connect: Connect
) -> None:
    """LM Studio unloads an idle JIT-loaded model when its TTL runs out: the next sample pays
    a load again and must be set apart as a cold load, not counted as a warm one."""
    fake = make_fake(jit_ttl_s=0.5, load_s=0.15)
    client = connect(fake.url)

    def request(i: int) -> GenerateRequest:
        return GenerateRequest(MODEL, f"{i} {PROMPT}", max_tokens=2, thinking=False)

    cold, warm = await measure(client, request, samples=2, warmups=0)
    assert cold.invalid_reason is not None
    assert cold.invalid_reason.startswith("cold load")
    assert warm.valid, warm.invalid_reason  # used within its TTL: still loaded

    async def unloaded() -> bool:
        return not next(m for m in await client.list_models() if m.name == MODEL).loaded

    await wait_until(unloaded, what="LM Studio unloading the idle model")
    again = await measure_one(client, request(2))
    assert again.invalid_reason is not None
    assert again.invalid_reason.startswith("cold load: the server loaded the model")
    assert again.server is not None
    assert again.server.load_s == pytest.approx(fake.load_s, abs=0.05)


@pytest.mark.asyncio
async def test_load_and_unload_round_trip_through_the_rest_api(
    fake: FakeLMStudio, connect: Connect
) -> None:
    client = connect(fake.url)
    settings = LoadSettings(context_tokens=8192, batch_tokens=256, flash_attention=False)
    loaded = await client.load(MODEL, settings)
    assert loaded.server_load_s is not None
    assert loaded.server_load_s == pytest.approx(fake.load_s, abs=0.05)
    assert loaded.load_s >= loaded.server_load_s
    assert not loaded.already_loaded
    assert _bodies(fake, "/api/v1/models/load") == [
        {
            "model": MODEL,
            "echo_load_config": True,
            "context_length": 8192,
            "eval_batch_size": 256,
            "flash_attention": False,
        }
    ]
    assert (await client.load(MODEL, settings)).already_loaded
    listed = {m.name: m for m in await client.list_models()}
    assert listed[MODEL].loaded
    assert listed[MODEL].quantization == "Q4_K_M"
    assert listed[MODEL].context_tokens == 40960
    memory = await client.memory()
    assert memory.model_bytes == fake.models[MODEL].size_bytes
    assert "/api/v1/models" in memory.source

    reloaded = await client.load(MODEL, LoadSettings(context_tokens=4096))  # other settings
    assert not reloaded.already_loaded
    assert [i.config["context_length"] for i in fake.instances.values()] == [4096]
    await client.unload(MODEL)
    assert not fake.instances
    assert not {m.name: m for m in await client.list_models()}[MODEL].loaded
    assert (await client.memory()).source == "not reported by LM Studio"
    info = await client.info()
    assert (info.name, info.version, info.endpoint) == ("lmstudio", "REST API v1", fake.url)


@pytest.mark.asyncio
async def test_a_load_sends_only_what_was_asked_and_records_what_lm_studio_applied(
    fake: FakeLMStudio, connect: Connect
) -> None:
    """Against the fake LM Studio server, which follows lmstudio-ai/docs c6854fb
    (1_developer/2_rest/load.md: echo_load_config, load_config; list.md: loaded_instances'
    config.parallel) and lmstudio-js 6ec11db's defaults (evalBatchSize 2048,
    numParallelSessions 4): lmgauge's own LoadSettings defaults (batch 512) are not sent,
    and the load records the configuration LM Studio reports."""
    client = connect(fake.url)
    loaded = await client.load(MODEL, LoadSettings(context_tokens=8192))
    assert _bodies(fake, "/api/v1/models/load") == [
        {"model": MODEL, "echo_load_config": True, "context_length": 8192}
    ]
    assert isinstance(loaded, LMStudioLoadResult)
    assert loaded.load_config["eval_batch_size"] == 2048  # LM Studio's default, not 512
    assert loaded.load_config["context_length"] == 8192
    assert loaded.parallel == 4  # LM Studio runs 4 parallel predictions by default
    assert (loaded.variant, loaded.quantization) == (f"{MODEL}@q4_k_m", "Q4_K_M")
    again = await client.load(MODEL, LoadSettings(context_tokens=8192))
    assert again.already_loaded
    assert isinstance(again, LMStudioLoadResult)
    assert (again.parallel, again.load_config["eval_batch_size"]) == (4, 2048)
    # A [load] eval_batch_size of the config arrives in extra, and is sent even at 512.
    asked = await client.load(MODEL, LoadSettings(extra={"eval_batch_size": 512}))
    assert _bodies(fake, "/api/v1/models/load")[-1]["eval_batch_size"] == 512
    assert isinstance(asked, LMStudioLoadResult)
    assert asked.load_config["eval_batch_size"] == 512


@pytest.mark.asyncio
async def test_a_setting_lm_studio_did_not_apply_fails_the_load(
    fake: FakeLMStudio, connect: Connect
) -> None:
    """Against the fake LM Studio server, which follows lmstudio-ai/docs c6854fb
    1_developer/2_rest/load.md L75-104: load_config holds only the parameters that applied,
    and flash_attention and eval_batch_size only for llama.cpp-engine models: on an MLX
    model they are not applied, and the case must not pass as if they were."""
    client = connect(fake.url)
    with pytest.raises(ConfigError, match=r"flash_attention=True \(not applied\)"):
        await client.load("qwen3-1.7b-mlx", LoadSettings(flash_attention=True))


@pytest.mark.asyncio
async def test_a_catalog_variant_is_loaded_and_its_quantization_checked(
    make_fake: Callable[..., FakeLMStudio], connect: Connect
) -> None:
    """Against the fake LM Studio server, which follows lmstudio-ai/docs c6854fb (variants
    are ``key@q4_k_m``, 3_cli/0_local-models/get.md L18; /api/v1/models lists ``variants``,
    ``selected_variant`` and ``quantization.name``, list.md L128-135): the catalog names the
    case's quantization, the load asks for it, and a server that loads another variant
    fails the case instead of measuring the wrong file."""
    two = FakeModel(MODEL, variants=("q4_k_m", "q8_0"))
    stuck = FakeModel("qwen/qwen3-14b", variants=("q4_k_m", "q8_0"), serves_variant="q4_k_m")
    fake = make_fake(models=(two, stuck))
    client = connect(fake.url)
    name = resolve_model("qwen3-8b").tag("lmstudio", "Q8_0")
    assert name == f"{MODEL}@q8_0"
    loaded = await client.load(name, LoadSettings())
    assert isinstance(loaded, LMStudioLoadResult)
    assert (loaded.variant, loaded.quantization) == (name, "Q8_0")
    assert _bodies(fake, "/api/v1/models/load")[-1]["model"] == name
    sample = await measure_one(client, GenerateRequest(name, PROMPT, max_tokens=4))
    assert sample.valid, sample.invalid_reason
    other = resolve_model("qwen3-14b").tag("lmstudio", "Q8_0")
    with pytest.raises(
        BackendError,
        match=r"asked for 'qwen/qwen3-14b@q8_0' and loaded the variant "
        r"'qwen/qwen3-14b@q4_k_m' \(quantization 'Q4_K_M'\)",
    ):
        await client.load(other, LoadSettings())
    missing = resolve_model("qwen3-8b").tag("lmstudio", "Q6_K")
    with pytest.raises(ModelNotFoundError, match=r"`lms get qwen/qwen3-8b@q6_k`"):
        await client.load(missing, LoadSettings())


def test_a_model_that_is_not_downloaded_skips_its_case_with_the_get_command() -> None:
    """Against the fake LM Studio server, which follows lmstudio-ai/docs c6854fb (an
    unknown model is ``model_not_found``): the case is skipped once, with the command that
    downloads the catalog's variant."""
    with FakeLMStudio(models=(FakeModel("qwen/qwen3-4b"),)) as fake:
        runner = Runner("lmstudio", Workload(samples=2, warmups=0), base_url=fake.url)
        try:
            run = runner.run(Case("lmstudio", "qwen3-8b", "Q4_K_M", 4096))
        finally:
            runner.close()
    assert run.error is None
    assert run.skipped is not None
    assert "`lms get qwen/qwen3-8b@q4_k_m`" in run.skipped
    assert len(_bodies(fake, "/api/v1/models/load")) == 1


@pytest.mark.asyncio
async def test_settings_lm_studio_cannot_take_are_refused_by_name(
    fake: FakeLMStudio, connect: Connect
) -> None:
    client = connect(fake.url)
    with pytest.raises(ConfigError, match=r"kv_cache_type='q8_0' \(LM Studio's llamaKCache"):
        await client.load(MODEL, LoadSettings(kv_cache_type="q8_0"))
    with pytest.raises(ConfigError, match="threads=4"):
        await client.load(MODEL, LoadSettings(threads=4))
    with pytest.raises(ConfigError, match="REST load API has no field keepModelInMemory"):
        await client.load(MODEL, LoadSettings(extra={"keepModelInMemory": True}))
    assert not fake.instances
    assert not _bodies(fake, "/api/v1/models/load")  # refused before any request
    loaded = await client.load(MODEL, LoadSettings(extra={"offload_kv_cache_to_gpu": False}))
    assert loaded.server_load_s is not None
    assert _bodies(fake, "/api/v1/models/load")[-1]["offload_kv_cache_to_gpu"] is False


@pytest.mark.asyncio
async def test_without_the_v1_api_the_lms_cli_loads_and_unloads(
    make_fake: Callable[..., FakeLMStudio],
    connect: Connect,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = make_fake(rest_v1=False)  # an LM Studio 0.3: /api/v1/* is "Unexpected endpoint"
    write_fake_lms(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    client = connect(fake.url)
    port = fake.url.rsplit(":", 1)[1]

    loaded = await client.load(MODEL, LoadSettings(context_tokens=2048, parallel_slots=2))
    assert fake.cli_calls == [
        ["load", MODEL, "--yes", "--context-length", "2048", "--parallel", "2", "--port", port]
    ]
    assert loaded.server_load_s is not None
    assert loaded.server_load_s == pytest.approx(fake.load_s, abs=0.05)  # "in 300.12ms"
    assert loaded.load_s > loaded.server_load_s
    assert next(m for m in await client.list_models() if m.name == MODEL).loaded  # v0
    assert (await client.info()).version == "no REST API v1 (LM Studio < 0.4)"

    # generation falls back to the OpenAI-compatible API (no LM Studio stats there)
    sample = await measure_one(client, GenerateRequest(MODEL, PROMPT, max_tokens=12))
    assert sample.valid, sample.invalid_reason
    assert sample.output_tokens == 12
    assert _bodies(fake, "/v1/completions")[0]["logit_bias"] == {"151643": -100, "151645": -100}

    await client.unload(MODEL)
    assert fake.cli_calls[-1] == ["unload", MODEL, "--port", port]
    assert not fake.instances
    with pytest.raises(ConfigError, match="`lms load` cannot set flash_attention=True"):
        await client.load(MODEL, LoadSettings(flash_attention=True))


@pytest.mark.asyncio
async def test_without_the_v1_api_or_lms_the_error_says_how_to_load_by_hand(
    make_fake: Callable[..., FakeLMStudio],
    connect: Connect,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = make_fake(rest_v1=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no lms anywhere
    client = connect(fake.url)
    with pytest.raises(
        BackendError,
        match=rf"`lms` CLI is not on PATH: load the model by hand \(`lms load {MODEL}`",
    ):
        await client.load(MODEL, LoadSettings())
    with pytest.raises(BackendError, match="unload the model by hand"):
        await client.unload(MODEL)


@pytest.mark.asyncio
async def test_thinking_tokens_are_counted_apart(fake: FakeLMStudio, connect: Connect) -> None:
    client = connect(fake.url)
    await client.load(MODEL, LoadSettings())
    thinking = await measure_one(client, GenerateRequest(MODEL, PROMPT, 24, thinking=True))
    assert thinking.valid, thinking.invalid_reason
    assert thinking.output_tokens == 24
    assert thinking.thinking_tokens == fake.reasoning_tokens
    assert thinking.time_to_first_answer_s is not None
    assert thinking.ttft_s is not None
    assert thinking.time_to_first_answer_s > thinking.ttft_s
    plain = await measure_one(client, GenerateRequest(MODEL, PROMPT, 24, thinking=False))
    assert plain.thinking_tokens == 0
    assert plain.time_to_first_answer_s == plain.ttft_s
    default = await measure_one(client, GenerateRequest(MODEL, PROMPT, 24))  # model's own: on
    assert default.thinking_tokens == fake.reasoning_tokens
    assert [b.get("reasoning") for b in _bodies(fake, "/api/v1/chat")] == ["on", "off", None]


@pytest.mark.asyncio
async def test_the_api_token_comes_from_the_environment_and_is_never_shown(
    make_fake: Callable[..., FakeLMStudio], connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "sk-lm-fake-0123456789"
    fake = make_fake(api_key=token)
    monkeypatch.delenv("LM_API_TOKEN", raising=False)
    anonymous = connect(fake.url)
    with pytest.raises(ServerError, match=r"HTTP 401: .*; set LM_API_TOKEN") as refused:
        await anonymous.list_models()
    assert refused.value.status_code == 401

    monkeypatch.setenv("LM_API_TOKEN", token)
    client = connect(fake.url)
    sample = await measure_one(client, GenerateRequest(MODEL, PROMPT, max_tokens=4))
    assert sample.ok, sample.error
    assert fake.requests[-1][2]["Authorization"] == f"Bearer {token}"
    for shown in (repr(client), str(client), f"{client}"):
        assert token not in shown
    assert repr(client) == f"LMStudioBackend({fake.url!r})"


@pytest.mark.asyncio
async def test_an_unknown_model_is_named_with_the_fix(fake: FakeLMStudio, connect: Connect) -> None:
    client = connect(fake.url)
    sample = await measure_one(client, GenerateRequest("qwen/qwen9-404b", PROMPT, max_tokens=4))
    assert not sample.ok
    assert sample.error is not None
    assert sample.error.startswith("ModelNotFoundError")
    assert "`lms get qwen/qwen9-404b`" in sample.error
    with pytest.raises(ModelNotFoundError, match="`lms load qwen/qwen9-404b`"):
        await client.load("qwen/qwen9-404b", LoadSettings())


@pytest.mark.asyncio
async def test_a_server_that_is_not_running_is_named_with_the_fix(connect: Connect) -> None:
    client = connect(f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(BackendUnavailableError, match=r"start the server: `lms server start`"):
        await client.list_models()
    sample = await measure_one(client, GenerateRequest(MODEL, PROMPT, max_tokens=4))
    assert sample.error is not None
    assert "cannot connect to LM Studio at http://127.0.0.1:" in sample.error


@pytest.mark.asyncio
async def test_embeddings_come_back_in_order(fake: FakeLMStudio, connect: Connect) -> None:
    client = connect(fake.url)
    model = "text-embedding-nomic-embed-text-v1.5"
    texts = ["first", "second", "third"]
    vectors = await client.embed(texts, model)
    alone = [(await client.embed([text], model))[0] for text in texts]
    assert vectors == alone  # each text's own vector, at its text's place
    assert len({tuple(v) for v in vectors}) == 3


@pytest.mark.asyncio
async def test_embedding_rows_are_put_back_in_the_order_of_their_index() -> None:
    """The OpenAI-compatible API numbers each row (``index``); rows may come in any order."""

    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        rows = [{"object": "embedding", "embedding": [float(i)], "index": i} for i in range(3)]
        assert len(texts) == len(rows)
        return httpx.Response(200, json={"object": "list", "data": rows[::-1]})

    client = LMStudioBackend(transport=httpx.MockTransport(handler))
    try:
        assert await client.embed(["a", "b", "c"], "m") == [[0.0], [1.0], [2.0]]
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_an_error_event_mid_stream_is_translated() -> None:
    """Through an injected transport: LM Studio's ``error`` event (streaming-events.md)."""

    def handler(request: httpx.Request) -> httpx.Response:
        events: list[dict[str, Any]] = [
            {"type": "chat.start", "model_instance_id": MODEL},
            {"type": "message.delta", "content": "Hi"},
            {"type": "error", "error": {"type": "model_not_found", "message": "gone"}},
        ]
        text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, text=text)

    client = LMStudioBackend(transport=httpx.MockTransport(handler))
    try:
        sample = await measure_one(client, GenerateRequest(MODEL, PROMPT, max_tokens=4))
    finally:
        await client.aclose()
    assert sample.output_tokens == 1
    assert sample.error is not None
    assert sample.error.startswith("ModelNotFoundError: http://127.0.0.1:1234/api/v1/chat")


def test_stats_become_server_timings() -> None:
    stats = {
        "input_tokens": 646,
        "total_output_tokens": 586,
        "reasoning_output_tokens": 0,
        "tokens_per_second": 29.753900615398926,
        "time_to_first_token_seconds": 1.088,
        "model_load_time_seconds": 2.656,
    }  # the example of lmstudio-ai/docs 1_developer/2_rest/chat.md
    timings = timings_from_stats(stats)
    assert (timings.prompt_tokens, timings.output_tokens) == (646, 586)
    assert timings.prompt_s == 1.088
    assert timings.load_s == 2.656
    assert timings.decode_s == pytest.approx(586 / 29.753900615398926)
    assert timings_from_stats({"total_output_tokens": 1}, load_s=0.5).load_s == 0.5


@pytest.mark.asyncio
async def test_the_registry_builds_it() -> None:
    client = backends.get("lmstudio")
    assert isinstance(client, LMStudioBackend)
    assert client.base_url == "http://127.0.0.1:1234"
    await client.aclose()
