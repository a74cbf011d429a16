"""The metrics a case is judged on: how each is read from a measured run, which way is
better, and how it is printed. Verdicts, reports, baselines and diffs share these."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from lmgauge.catalog import GB
from lmgauge.measure import Sample
from lmgauge.scenarios import METRIC

if TYPE_CHECKING:
    from lmgauge.runner import CaseRun


class SampleMetric(NamedTuple):
    value: Callable[[Sample], float | None]  # the metric's value for one sample
    higher_is_better: bool


def _median_gap_s(sample: Sample) -> float | None:
    return statistics.median(sample.itl_s) if sample.itl_s else None


SAMPLE_METRICS: dict[str, SampleMetric] = {
    "decode_tokens_per_s": SampleMetric(lambda s: s.decode_tokens_per_s, True),
    "prefill_tokens_per_s": SampleMetric(lambda s: s.prefill_tokens_per_s, True),
    "ttft_s": SampleMetric(lambda s: s.ttft_s, False),
    "e2e_s": SampleMetric(lambda s: s.e2e_s, False),
    # One value per request, the median of its gaps, not every gap pooled: the requests
    # are the independent draws. The gaps of one request share its batch and cache state,
    # so pooling them would hand a significance test hundreds of correlated values as if
    # independent (too confident), and let the longest answers outweigh the rest.
    "itl_s": SampleMetric(_median_gap_s, False),
    "server_decode_tokens_per_s": SampleMetric(lambda s: s.server_decode_tokens_per_s, True),
    "server_prefill_tokens_per_s": SampleMetric(lambda s: s.server_prefill_tokens_per_s, True),
}
"""One value per valid sample, for summaries; the judged ones are compared with a
significance test."""
ENGINE_SAMPLE_METRICS = ("server_decode_tokens_per_s", "server_prefill_tokens_per_s")
"""The engine's own timings, where it reports them: summarized, not judged. The client's
figures are what a user sees, and what the gate holds to."""
JUDGED_SAMPLE_METRICS = tuple(m for m in SAMPLE_METRICS if m not in ENGINE_SAMPLE_METRICS)
RUN_METRICS = ("rss_bytes", "load_s", "error_rate_ratio")
"""One value per run: reported as a ratio to the baseline."""
SCENARIO_METRICS = tuple(METRIC.values())


def throughput_metric(concurrency: int) -> str:
    return f"throughput_c{concurrency}_tokens_per_s"


def higher_is_better(metric: str) -> bool:
    if metric in SAMPLE_METRICS:
        return SAMPLE_METRICS[metric].higher_is_better
    return metric.endswith(("_per_s", "_per_min"))


def change_direction(metric: str, ratio: float) -> tuple[float, str]:
    """A ratio new/old as a factor >= 1 and the word for its direction: speeds and times
    are "faster"/"slower" whichever way they are measured (more seconds is slower, fewer
    tokens/s is slower), memory is "more memory"/"less memory", anything else (an error
    rate) "higher"/"lower"."""
    factor = ratio if ratio >= 1 else 1 / ratio
    up = ratio >= 1
    if metric.endswith("_bytes"):
        return factor, "more memory" if up else "less memory"
    if metric.endswith(("_per_s", "_per_min")):
        return factor, "faster" if up else "slower"
    if metric.endswith("_s"):
        return factor, "slower" if up else "faster"
    return factor, "higher" if up else "lower"


def describe_change(metric: str, ratio: float) -> str:
    """ "1.18x slower", "1.05x faster", "1.10x more memory", "1.20x higher": the ratio
    new/old of ``metric`` in words; every verdict sentence words a change with this."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "no ratio"
    factor, word = change_direction(metric, ratio)
    if f"{factor:.2f}" == "1.00":
        return "unchanged (1.00x)"
    return f"{factor:.2f}x {word}"


def sample_values(samples: Sequence[Sample], metric: str) -> list[float]:
    get = SAMPLE_METRICS[metric].value
    return [v for s in samples if s.valid and (v := get(s)) is not None]


def error_rate(samples: Sequence[Sample]) -> float:
    """Share of measured (non-warm-up) requests that failed."""
    measured = [s for s in samples if not s.warmup]
    return sum(not s.ok for s in measured) / len(measured) if measured else 0.0


def run_value(run: CaseRun, metric: str) -> float | None:
    if metric == "rss_bytes":
        return float(run.memory.rss_bytes) if run.memory and run.memory.rss_bytes else None
    if metric == "load_s":
        return run.load.load_s if run.load and not run.load.already_loaded else None
    return error_rate(run.samples) if run.samples else None


def metric_values(run: CaseRun) -> dict[str, list[float]]:
    """Every metric this run measured, with its values (one per sample, or one per run)."""
    values = {m: sample_values(run.samples, m) for m in JUDGED_SAMPLE_METRICS}
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
