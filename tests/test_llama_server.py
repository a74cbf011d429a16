"""The OpenAI-compatible backend against a REAL server: llama-cpp-python's
``python -m llama_cpp.server``, started on a free loopback port by the fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.errors import BackendUnavailableError
from lmgauge.measure import measure, measure_one

PROMPT = "Count the words in this sentence, please. " * 3


@pytest_asyncio.fixture
async def client(llama_server: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(llama_server)
    yield backend
    await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_streamed_samples_have_the_requested_length(
    client: OpenAIBackend, tiny_gguf: Path, chat: bool
) -> None:
    def request(i: int) -> GenerateRequest:
        return GenerateRequest(str(tiny_gguf), f"{i} {PROMPT}", max_tokens=16, chat=chat)

    samples = await measure(client, request, samples=3, warmups=1)
    assert samples[0].warmup
    assert samples[0].ok
    for sample in samples[1:]:
        assert sample.valid, sample.invalid_reason
        assert sample.output_tokens == 16  # ignore_eos / logit bias held
        assert sample.finish_reason == "length"
        assert len(sample.itl_s) == 15
        assert sample.ttft_s is not None
        assert sample.e2e_s is not None
        assert 0 < sample.ttft_s < sample.e2e_s


@pytest.mark.asyncio
async def test_models_and_info(client: OpenAIBackend, tiny_gguf: Path) -> None:
    assert [m.name for m in await client.list_models()] == [str(tiny_gguf)]
    assert (await client.info()).endpoint == client.base_url
    loaded = await client.load(str(tiny_gguf), LoadSettings())
    assert loaded.load_s > 0


@pytest.mark.asyncio
async def test_an_unreachable_server_is_named_with_the_fix(llama_server: str) -> None:
    port = int(llama_server.rsplit(":", 1)[1])
    nowhere = OpenAIBackend(
        f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}", connect_timeout_s=1
    )
    try:
        with pytest.raises(BackendUnavailableError, match=r"cannot connect to http://127\.0\.0\.1"):
            await nowhere.list_models()
        sample = await measure_one(nowhere, GenerateRequest("m", "p", max_tokens=4))
        assert not sample.ok
        assert sample.error is not None
        assert "is the server running there?" in sample.error
    finally:
        await nowhere.aclose()
