"""Model switching on the embedded engine (real llama.cpp, two tiny synthetic models)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lmgauge.backends.base import LoadSettings
from lmgauge.backends.llamacpp import LlamaCppBackend
from lmgauge.switching import measure_switch


@pytest.fixture(scope="module")
def tiny_q4(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("Q4_0")


@pytest.mark.asyncio
async def test_a_switch_is_timed_from_unload_to_first_token(tiny_gguf: Path, tiny_q4: Path) -> None:
    backend = LlamaCppBackend()
    try:
        switch = await measure_switch(
            backend, str(tiny_gguf), str(tiny_q4), LoadSettings(context_tokens=512, threads=2)
        )
    finally:
        await backend.aclose()
    assert switch.ok, switch.error
    assert switch.switch_s is not None
    assert switch.load_s is not None
    assert switch.first_token_s is not None
    assert switch.unload_s is not None
    assert switch.load_s + switch.first_token_s <= switch.switch_s
    assert switch.switch_s - switch.unload_s - switch.load_s - switch.first_token_s < 0.5


@pytest.mark.asyncio
async def test_a_failed_switch_is_a_sample_with_the_error(tiny_gguf: Path, tmp_path: Path) -> None:
    backend = LlamaCppBackend()
    try:
        switch = await measure_switch(
            backend,
            str(tiny_gguf),
            str(tmp_path / "absent.gguf"),
            LoadSettings(context_tokens=512, threads=2),
        )
    finally:
        await backend.aclose()
    assert not switch.ok
    assert switch.error is not None
    assert switch.error.startswith("ModelNotFoundError: no model file at")
