"""The scenario workloads of seed 003 ("Qwen3 Model Selection Strategy for M3 Max
Optimization"), each measured as the metric its target is written in.

- classification: classification_docs_per_min (> 500, 1.7B); short documents, 4-token answers
- extraction: extraction_docs_per_min (> 100, 14B); 256-token documents, JSON asked for
- rag: rag_response_s (< 2 s, 14B); a long context, a short answer
- embeddings: embedding_chunks_per_min (> 1000, 7B); 64-token chunks, the embed API
- switch: model_switch_s (< 3 s); unload, load, first token

Requests run one after another, as a pipeline stage would; a failed request counts
against the rate (it produced no document) and is kept in the samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmgauge.backends.base import Backend, GenerateRequest, LoadSettings
from lmgauge.measure import Sample, measure_one
from lmgauge.switching import measure_switch

SCENARIOS = ("classification", "extraction", "rag", "embeddings", "switch")
METRIC = {
    "classification": "classification_docs_per_min",
    "extraction": "extraction_docs_per_min",
    "rag": "rag_response_s",
    "embeddings": "embedding_chunks_per_min",
    "switch": "model_switch_s",
}
PROMPT_TOKENS = {"classification": 96, "extraction": 256, "rag": 2048, "embeddings": 64}
COUNT = {"classification": 8, "extraction": 3, "rag": 2, "embeddings": 16}
ANSWER_TOKENS = {"classification": 4, "extraction": 48, "rag": 48}
EXTRACTION_ASK = "Extract the names, dates and amounts of this document as JSON:\n"


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    metric: str
    value: float | None  # None: the scenario cannot run on this backend (see ``skipped``)
    samples: tuple[Sample, ...] = ()
    skipped: str | None = None
    errors: list[str] = field(default_factory=list)


async def run_scenario(
    scenario: str,
    backend: Backend,
    model: str,
    prompts: Sequence[str],
    settings: LoadSettings,
    timeout_s: float,
) -> ScenarioResult:
    """Run one scenario on a loaded ``model``; ``prompts`` are of PROMPT_TOKENS length."""
    metric = METRIC[scenario]
    if scenario == "switch":
        switch = await measure_switch(backend, model, model, settings, timeout_s=timeout_s)
        errors = [switch.error] if switch.error else []
        return ScenarioResult(scenario, metric, switch.switch_s, errors=errors)
    if scenario == "embeddings":
        embed = getattr(backend, "embed", None)
        if not callable(embed):
            return ScenarioResult(
                scenario, metric, None, skipped=f"the {backend.name} backend has no embedding API"
            )
        start = time.perf_counter()
        vectors = await embed(list(prompts), model)
        elapsed = time.perf_counter() - start
        return ScenarioResult(scenario, metric, len(vectors) / elapsed * 60)
    samples = []
    start = time.perf_counter()
    for prompt in prompts:
        text = EXTRACTION_ASK + prompt if scenario == "extraction" else prompt
        request = GenerateRequest(
            model,
            text,
            max_tokens=ANSWER_TOKENS[scenario],
            chat=scenario == "extraction",
            timeout_s=timeout_s,
        )
        samples.append(await measure_one(backend, request))
    elapsed = time.perf_counter() - start
    done = [s for s in samples if s.ok]
    errors = [s.error for s in samples if s.error]
    if scenario == "rag":
        value = statistics.median(s.e2e_s for s in done if s.e2e_s is not None) if done else None
    else:
        value = len(done) / elapsed * 60
    return ScenarioResult(scenario, metric, value, tuple(samples), errors=errors)
