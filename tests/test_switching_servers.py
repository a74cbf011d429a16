"""Model switching through the servers that can load and unload, against their
protocol-faithful fakes (Ollama and LM Studio cannot run on this machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmgauge.backends.base import LoadSettings
from lmgauge.backends.lmstudio import LMStudioBackend
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.switching import measure_switch

sys.path.insert(0, str(Path(__file__).parent))
from fake_lmstudio import FakeLMStudio
from fake_ollama import FakeModel, FakeOllama

SETTINGS = LoadSettings(context_tokens=4096)


@pytest.mark.asyncio
async def test_switching_models_on_ollama_is_timed_from_unload_to_first_token() -> None:
    models = {"qwen3:8b": FakeModel(), "qwen3:1.7b": FakeModel(size=1_360_000_000)}
    with FakeOllama(models, ttft_s=0.02, itl_s=0.004, load_s=0.25) as fake:
        backend = OllamaBackend(fake.url)
        try:
            switch = await measure_switch(backend, "qwen3:8b", "qwen3:1.7b", SETTINGS)
        finally:
            await backend.aclose()
    assert switch.ok, switch.error
    assert switch.switch_s is not None
    assert switch.load_s is not None
    assert switch.load_s >= 0.25  # the fake's load time is paid inside the switch
    assert switch.switch_s >= switch.load_s


@pytest.mark.asyncio
async def test_switching_models_on_lm_studio_is_timed_from_unload_to_first_token() -> None:
    with FakeLMStudio(load_s=0.2) as fake:
        backend = LMStudioBackend(fake.url)
        try:
            switch = await measure_switch(backend, "qwen/qwen3-8b", "qwen3-1.7b-mlx", SETTINGS)
        finally:
            await backend.aclose()
    assert switch.ok, switch.error
    assert switch.load_s is not None
    assert switch.switch_s is not None
    assert switch.load_s >= 0.2
    assert switch.server_load_s is not None  # LM Studio reports load_time_seconds
