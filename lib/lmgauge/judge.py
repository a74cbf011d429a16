"""How one measured metric is judged: against its baseline (a significance test and a
minimum effect), against the planning documents' thresholds (scaled to this host where
they were written for another), and beside the bandwidth roofline (a derived figure).

``decide`` is the one rule for a metric's values against earlier ones, shared by the
pytest gate (against a stored baseline) and ``lmgauge diff`` / ``trend`` (report against
report). Its ``outcome`` is the category (pass, regression, improvement, inconclusive,
reported...), its ``verdict`` the sentence that says it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lmgauge.baselines import MetricBaseline
from lmgauge.catalog import resolve_model
from lmgauge.hardware import REFERENCE_PROFILES, decode_roofline_tokens_per_s
from lmgauge.metrics import SAMPLE_METRICS, SCENARIO_METRICS, describe_change, format_value
from lmgauge.runner import Case, Workload
from lmgauge.stats import Comparison, compare
from lmgauge.thresholds import Threshold

THRESHOLD_METRIC = {
    **{metric: metric for metric in SCENARIO_METRICS},
    "decode_tokens_per_s": "decode_tokens_per_s",
    "ttft_s": "ttft_s",
    "e2e_s": "e2e_s",
    "rss_bytes": "peak_memory_bytes",
    "error_rate_ratio": "error_rate_ratio",
}
"""Which threshold metric of thresholds.toml a measured metric is checked against."""
MEMORY_TOLERANCE = 0.10
RELEASE_KEYS = ("backend_version",)
"""Environment keys expected to differ across releases: noted, never a reason to refuse."""


def memory_growth_bound(tolerance: float) -> float:
    """How much more memory than the baseline counts as a regression: at least 10%."""
    return max(tolerance, MEMORY_TOLERANCE)


def split_differences(differences: Sequence[str]) -> tuple[list[str], list[str]]:
    """``baselines.environment_differences`` lines as (unlike, release): a new backend
    version is a release difference, any other key makes the environments unlike."""
    release = [d for d in differences if d.split(":", 1)[0] in RELEASE_KEYS]
    return [d for d in differences if d not in release], release


@dataclass(frozen=True)
class Decision:
    outcome: str  # pass | regression | improvement | inconclusive | reported
    verdict: str  # the sentence: "1.18x slower (significant, p=0.003): regression"
    ratio: float | None  # median after / median before; None when before is 0
    comparison: Comparison | None = None  # the significance test, for per-sample metrics


def decide(
    metric: str, before: Sequence[float], after: Sequence[float], *, tolerance: float
) -> Decision:
    """``after`` against ``before`` (both non-empty). Per-sample metrics: a significant
    change beyond ``tolerance`` (stats.compare). Memory measured once per run: growth
    beyond ``memory_growth_bound`` is a regression, as one run's peak has no spread to
    test. Any other value measured once per run: its ratio, reported."""
    if metric in SAMPLE_METRICS:
        result = compare(
            before,
            after,
            higher_is_better=SAMPLE_METRICS[metric].higher_is_better,
            tolerance=tolerance,
            metric=metric,
        )
        ratio = result.ratio if math.isfinite(result.ratio) else None
        return Decision(result.outcome, result.describe(), ratio, result)
    old, new = statistics.median(before), statistics.median(after)
    if not old:  # e.g. an error rate of 0: no ratio, only equality
        if new == old:
            return Decision("reported", f"unchanged ({format_value(metric, new)})", None)
        return Decision(
            "reported",
            f"{format_value(metric, new)} against {format_value(metric, old)}: no ratio "
            "(one value per run: reported)",
            None,
        )
    ratio = new / old
    words = describe_change(metric, ratio)
    bound = memory_growth_bound(tolerance)
    if metric == "rss_bytes" and ratio > 1 + bound:
        return Decision("regression", f"{words} (beyond the {bound:.0%} bound): regression", ratio)
    return Decision("reported", f"{words} (one value per run: reported, not tested)", ratio)


@dataclass(frozen=True)
class Judgement:
    """What the baseline says about one metric: the baseline fields of a verdict row."""

    baseline: str = "none"
    verdict: str = "no baseline for this profile (record one with --lmgauge-update-baselines)"
    outcome: str = "no baseline"
    baseline_value: float | None = None
    baseline_provenance: str | None = None
    baseline_source: str = ""
    baseline_values: tuple[float, ...] = ()
    comparison: Comparison | None = None
    ratio: float | None = None


def tolerance_for(stored: MetricBaseline, configured: float) -> tuple[float, str]:
    """The smallest change that counts: the configured tolerance, or the spread between
    the baseline's recorded runs where that is larger (run-to-run noise is no change)."""
    runs = len(stored.run_medians)
    if stored.run_noise > configured:
        how = "95% prediction bound of" if runs >= 3 else "the spread between"
        return stored.run_noise, (
            f" [tolerance {stored.run_noise:.0%}: {how} the {runs} baseline runs]"
        )
    if runs < 2:
        return configured, (
            " [1 baseline run: run-to-run noise unknown; record more runs with "
            "--lmgauge-update-baselines]"
        )
    return configured, ""


def single_value(metric: str, value: float, stored: MetricBaseline | None) -> Judgement:
    """A metric measured once per run: its ratio to the baseline is reported."""
    if stored is None:
        return Judgement(verdict="no baseline for this profile")
    ratio = value / stored.values[0] if stored.values[0] else None
    return Judgement(
        f"{format_value(metric, stored.values[0])} ({stored.provenance})",
        f"{describe_change(metric, ratio)} (one value per run: reported)"
        if ratio is not None
        else "the baseline is 0: no ratio (one value per run: reported)",
        "reported",
        stored.values[0],
        stored.provenance,
        stored.source,
        stored.values,
        ratio=ratio,
    )


def against_baseline(
    metric: str,
    values: Sequence[float],
    stored: MetricBaseline,
    differences: Sequence[str],
    *,
    tolerance: float,
    allow_unlike: bool,
    failures: list[str],
) -> Judgement:
    """``values`` of this run against ``stored``; ``differences`` lists how the two
    environments differ. Reasons to fail the test go to ``failures``."""
    median = statistics.median(stored.values)
    base = Judgement(
        baseline=f"{format_value(metric, median)} ({stored.provenance})",
        baseline_value=median,
        baseline_provenance=stored.provenance,
        baseline_source=stored.source,
        baseline_values=stored.values,
    )
    if stored.provenance != "measured":  # nothing to match: reported, never judged
        ratio = statistics.median(values) / median if median else None
        words = "no ratio" if ratio is None else describe_change(metric, ratio)
        return replace(
            base,
            verdict=f"{words} against the {stored.provenance} baseline "
            f"({stored.source}); reported, not judged",
            outcome="reported",
            ratio=ratio,
        )
    unlike, release = split_differences(differences)
    if unlike and not allow_unlike:
        failures.append(
            "refusing to compare with a baseline from an unlike environment: "
            f"{'; '.join(unlike)}. Re-record it with --lmgauge-update-baselines, or compare "
            "anyway with --lmgauge-allow-unlike"
        )
        return replace(base, verdict="refused: unlike environment", outcome="refused")
    prefix = f"across releases ({'; '.join(release)}): " if release else ""
    if unlike:
        prefix = f"UNLIKE environment, allowed by --lmgauge-allow-unlike ({'; '.join(unlike)}): "
    # Per-sample metrics: the baseline's run-to-run noise may widen the tolerance.
    bound, why = tolerance_for(stored, tolerance) if metric in SAMPLE_METRICS else (tolerance, "")
    decision = decide(metric, stored.values, values, tolerance=bound)
    if decision.outcome == "regression":
        failures.append(f"regression against the baseline: {decision.verdict}{why}")
    return replace(
        base,
        verdict=prefix + decision.verdict + why,
        outcome=decision.outcome,
        comparison=decision.comparison,
        ratio=decision.ratio,
    )


def threshold_notes(
    thresholds: Sequence[Threshold],
    label: str,
    metric: str,
    value: float,
    profile: str,
    bandwidth: Callable[[], float],
    failures: list[str],
) -> list[str]:
    """The thresholds ``value`` breaches, as notes; hard limits also go to ``failures``.
    Thresholds hold on the profile they were written for, and the error rate everywhere.
    Elsewhere a decode limit is scaled by this host's measured bandwidth over the reference
    machine's: a derived estimate (a noisy probe, and a CPU reaches another share of its
    bandwidth than an M3 Max's GPU), so its breach is reported, never failed. On a new VM
    of this project's CI profile the probe read 61 GB/s in one run, which moved seed 002's
    qwen3-7b limit to 7.6 t/s against a measured 7.1 and failed the README's main command."""
    target = THRESHOLD_METRIC.get(metric)
    if target is None:
        return []
    notes = []
    for threshold in thresholds:
        applies = (
            threshold.metric == target
            and (threshold.model in (None, label))
            and label not in threshold.except_models
        )
        if not applies:
            continue
        limit, how, derived = threshold.value, "", False
        if threshold.profile != profile:
            if target == "error_rate_ratio":
                how = " (applies on every profile)"
            elif target == "decode_tokens_per_s" and threshold.profile in REFERENCE_PROFILES:
                reference = REFERENCE_PROFILES[threshold.profile].bandwidth_bytes_per_s
                limit = threshold.value * bandwidth() / reference
                how = (
                    f" (scaled from {threshold.value:g} on {threshold.profile} by this "
                    f"host's measured bandwidth {bandwidth() / 1e9:.0f} GB/s / "
                    f"{reference / 1e9:.0f} GB/s public: derived, reported, not failed)"
                )
                derived = True
            else:
                continue  # written for another machine and not scalable
        met = value >= limit if threshold.direction == "min" else value <= limit
        if met:
            continue
        text = (
            f"{threshold.severity} {threshold.id}: {format_value(metric, value)} "
            f"{'<' if threshold.direction == 'min' else '>'} {format_value(metric, limit)}"
            f"{how} [{threshold.source}: {threshold.source_key}]"
        )
        if threshold.fails_test and not derived:
            failures.append("threshold breach: " + text)
        notes.append(text)
    return notes


def case_roofline(
    case: Case, workload: Workload, profile: str, bandwidth: Callable[[], float]
) -> dict[str, Any]:
    """The most decode tokens/s the memory bandwidth allows for the case: a derived
    figure, from the public bandwidth of a reference machine or the one measured here."""
    if profile in REFERENCE_PROFILES:
        reference = REFERENCE_PROFILES[profile]
        bytes_per_s, bandwidth_source = reference.bandwidth_bytes_per_s, reference.source
    else:
        bytes_per_s = bandwidth()
        bandwidth_source = "measured here (numpy read probe, hardware.probe_bandwidth)"
    entry = resolve_model(case.label)
    weights = entry.active_weight_bytes(case.quantization)
    kv_per_token = entry.architecture.kv_bytes_per_token("f16")
    mean_context = workload.prompt_tokens + workload.max_tokens / 2
    return {
        "tokens_per_s": decode_roofline_tokens_per_s(
            bytes_per_s, weights, kv_per_token, round(mean_context)
        ),
        "provenance": "derived",
        "source": (
            f"bandwidth {bytes_per_s / 1e9:.1f} GB/s ({bandwidth_source}) / "
            f"({weights / 1e9:.2f} GB active weights + f16 KV cache at "
            f"{mean_context:.0f} tokens)"
        ),
    }
