"""The metrics a case is judged on: how each is read from a measured run, which way is
better, and how it is printed. Verdicts, reports, baselines and diffs share these."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from lmgauge.catalog import GB
from lmgauge.measure import Sample
from lmgauge.scenarios import METRIC
from lmgauge.stats import error_rate

if TYPE_CHECKING:
    from lmgauge.runner import CaseRun

SAMPLE_METRICS: dict[str, tuple[Callable[[Sample], float | None], bool]] = {
    # metric: (value of one sample, higher is better)
    "decode_tokens_per_s": (lambda s: s.decode_tokens_per_s, True),
    "prefill_tokens_per_s": (lambda s: s.prefill_tokens_per_s, True),
    "ttft_s": (lambda s: s.ttft_s, False),
    "e2e_s": (lambda s: s.e2e_s, False),
    "itl_s": (lambda s: statistics.median(s.itl_s) if s.itl_s else None, False),
}
"""One value per valid sample: these are compared with a significance test."""
RUN_METRICS = ("rss_bytes", "load_s", "error_rate_ratio")
"""One value per run: reported as a ratio to the baseline."""
SCENARIO_METRICS = tuple(METRIC.values())


def throughput_metric(concurrency: int) -> str:
    return f"throughput_c{concurrency}_tokens_per_s"


def higher_is_better(metric: str) -> bool:
    if metric in SAMPLE_METRICS:
        return SAMPLE_METRICS[metric][1]
    return metric.endswith(("_per_s", "_per_min"))


def sample_values(samples: list[Sample], metric: str) -> list[float]:
    get = SAMPLE_METRICS[metric][0]
    return [v for s in samples if s.valid and (v := get(s)) is not None]


def run_value(run: CaseRun, metric: str) -> float | None:
    if metric == "rss_bytes":
        return float(run.memory.rss_bytes) if run.memory and run.memory.rss_bytes else None
    if metric == "load_s":
        return run.load.load_s if run.load and not run.load.already_loaded else None
    return error_rate(run.samples) if run.samples else None


def metric_values(run: CaseRun) -> dict[str, list[float]]:
    """Every metric this run measured, with its values (one per sample, or one per run)."""
    values = {m: sample_values(run.samples, m) for m in SAMPLE_METRICS}
    values.update({m: [v] for m in RUN_METRICS if (v := run_value(run, m)) is not None})
    values.update({r.metric: [r.value] for r in run.scenarios.values() if r.value is not None})
    values.update({throughput_metric(c): [rate] for c, (rate, _samples) in run.throughput.items()})
    return {metric: v for metric, v in values.items() if v}


def format_value(metric: str, value: float) -> str:
    if metric.endswith("_bytes"):
        return f"{value / GB:.2f} GB"
    if metric.endswith("_ratio"):
        return f"{value:.1%}"
    if metric.endswith("_tokens_per_s"):
        return f"{value:.4g} t/s"
    if metric.endswith("_per_min"):
        return f"{value:.4g}/min"
    return f"{value:.4g} s"
