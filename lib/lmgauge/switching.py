"""Model switching: how long until a newly selected model answers.

A switch is: unload the current model (where the backend can), load the next, and wait
for its first token. Seed 003's target ("Qwen3 Model Selection Strategy for M3 Max
Optimization") is under 3 s (threshold ``model_switch_s``).
A failure is a SwitchSample holding the error, like a failed request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lmgauge.backends.base import Backend, GenerateRequest, LoadSettings
from lmgauge.measure import measure_one


@dataclass(frozen=True)
class SwitchSample:
    from_model: str
    to_model: str
    ok: bool
    switch_s: float | None = None  # unload + load + first token
    unload_s: float | None = None
    load_s: float | None = None
    first_token_s: float | None = None
    server_load_s: float | None = None
    error: str | None = None


async def measure_switch(
    backend: Backend,
    from_model: str,
    to_model: str,
    settings: LoadSettings,
    *,
    prompt: str = "Hello",
    timeout_s: float = 600.0,
) -> SwitchSample:
    """Load ``from_model`` (not timed), then time the switch to ``to_model``."""
    try:
        await backend.load(from_model, settings)
        info = await backend.info()
        start = time.perf_counter()
        if info.can_unload:
            await backend.unload(from_model)
        unloaded = time.perf_counter()
        loaded = await backend.load(to_model, settings)
        first = await measure_one(
            backend, GenerateRequest(to_model, prompt, max_tokens=1, timeout_s=timeout_s)
        )
        end = time.perf_counter()
    except Exception as exc:  # a failed switch is data, like a failed request
        return SwitchSample(from_model, to_model, ok=False, error=f"{type(exc).__name__}: {exc}")
    if not first.ok:
        return SwitchSample(
            from_model,
            to_model,
            ok=False,
            load_s=loaded.load_s,
            error=f"first token after the switch failed: {first.error}",
        )
    return SwitchSample(
        from_model,
        to_model,
        ok=True,
        switch_s=end - start,
        unload_s=unloaded - start,
        load_s=loaded.load_s,
        first_token_s=first.ttft_s,
        server_load_s=loaded.server_load_s,
    )
