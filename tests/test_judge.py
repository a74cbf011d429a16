"""The stored-baseline gate: environments, provenance, memory, and the shared rule."""

from __future__ import annotations

import numpy as np
import pytest

from lmgauge.baselines import MetricBaseline, environment_differences
from lmgauge.judge import (
    Judgement,
    against_baseline,
    decide,
    memory_growth_bound,
    single_value,
    split_differences,
)

ENV = {
    "model": "qwen3-7b",
    "model_digest": "sha256:aaa",
    "quantization": "Q4_K_M",
    "context_tokens": 4096,
    "backend": "ollama",
    "backend_version": "0.33.0",
    "profile": "apple-m3-max-128gb",
    "host_cpu": "Apple M3 Max",
}
NEW_RELEASE = environment_differences(ENV, {**ENV, "backend_version": "0.34.0"})
UNLIKE = environment_differences(ENV, {**ENV, "model_digest": "sha256:bbb"})


def noisy(center: float, seed: int, n: int = 10) -> list[float]:
    return list(center * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n)))


def measured(values: list[float], runs: int = 3) -> MetricBaseline:
    """A baseline of ``runs`` recorded runs whose medians agree closely."""
    medians = tuple(float(np.median(values)) * (1 + 0.001 * i) for i in range(runs))
    return MetricBaseline(tuple(values), "measured", "recorded here", medians)


def judge(
    metric: str,
    values: list[float],
    stored: MetricBaseline,
    differences: list[str] | None = None,
    *,
    allow_unlike: bool = False,
) -> tuple[Judgement, list[str]]:
    failures: list[str] = []
    judgement = against_baseline(
        metric,
        values,
        stored,
        differences or [],
        tolerance=0.05,
        allow_unlike=allow_unlike,
        failures=failures,
    )
    return judgement, failures


def test_a_slower_latency_is_a_regression_worded_slower() -> None:
    judgement, failures = judge("ttft_s", noisy(0.3, 1), measured(noisy(0.2, 0)))
    assert judgement.outcome == "regression"
    assert judgement.verdict.startswith("1.5")
    assert "x slower (significant, p=" in judgement.verdict
    assert judgement.comparison is not None
    assert judgement.ratio == pytest.approx(judgement.comparison.ratio)
    assert len(failures) == 1
    assert failures[0].startswith("regression against the baseline: 1.5")


def test_the_same_speed_passes() -> None:
    judgement, failures = judge("decode_tokens_per_s", noisy(50, 1), measured(noisy(50, 0)))
    assert judgement.outcome == "pass"
    assert judgement.verdict.startswith("no significant change (")
    assert failures == []


def test_an_unlike_environment_is_refused() -> None:
    judgement, failures = judge("ttft_s", noisy(0.2, 1), measured(noisy(0.2, 0)), UNLIKE)
    assert (judgement.outcome, judgement.verdict) == ("refused", "refused: unlike environment")
    assert failures == [
        "refusing to compare with a baseline from an unlike environment: model_digest: "
        "'sha256:aaa' -> 'sha256:bbb'. Re-record it with --lmgauge-update-baselines, or "
        "compare anyway with --lmgauge-allow-unlike"
    ]


def test_an_unlike_environment_is_judged_when_allowed_and_says_so() -> None:
    judgement, failures = judge(
        "ttft_s", noisy(0.3, 1), measured(noisy(0.2, 0)), UNLIKE, allow_unlike=True
    )
    assert judgement.outcome == "regression"
    assert judgement.verdict.startswith(
        "UNLIKE environment, allowed by --lmgauge-allow-unlike (model_digest: "
    )
    assert len(failures) == 1


def test_a_new_release_is_compared_and_noted() -> None:
    judgement, failures = judge("ttft_s", noisy(0.2, 1), measured(noisy(0.2, 0)), NEW_RELEASE)
    assert judgement.outcome == "pass"
    assert judgement.verdict.startswith(
        "across releases (backend_version: '0.33.0' -> '0.34.0'): no significant change"
    )
    assert failures == []


def test_a_derived_baseline_is_reported_not_judged_whatever_the_environment() -> None:
    stored = MetricBaseline((60.0,), "derived", "roofline x 0.7")
    judgement, failures = judge("decode_tokens_per_s", [30.0], stored, UNLIKE)
    assert judgement.outcome == "reported"
    assert judgement.verdict == (
        "2.00x slower against the derived baseline (roofline x 0.7); reported, not judged"
    )
    assert judgement.ratio == pytest.approx(0.5)
    assert failures == []


@pytest.mark.parametrize(
    ("growth", "outcome"),
    [(1.25, "regression"), (1.05, "reported"), (0.8, "reported")],
)
def test_memory_growth_beyond_the_bound_is_a_regression(growth: float, outcome: str) -> None:
    judgement, failures = judge("rss_bytes", [5e9 * growth], measured([5e9], runs=1))
    assert judgement.outcome == outcome
    assert judgement.ratio == pytest.approx(growth)
    assert bool(failures) == (outcome == "regression")
    if outcome == "regression":
        assert judgement.verdict == "1.25x more memory (beyond the 10% bound): regression"
        assert failures == [
            "regression against the baseline: 1.25x more memory (beyond the 10% bound): regression"
        ]
    elif growth > 1:
        assert judgement.verdict == "1.05x more memory (one value per run: reported, not tested)"
    else:
        assert judgement.verdict.startswith("1.25x less memory")


def test_the_memory_bound_is_the_tolerance_but_at_least_10_percent() -> None:
    assert memory_growth_bound(0.05) == 0.10
    assert memory_growth_bound(0.2) == 0.2


def test_a_zero_baseline_has_no_ratio() -> None:
    same, failures = judge("error_rate_ratio", [0.0], measured([0.0], runs=1))
    assert (same.outcome, same.verdict, same.ratio) == ("reported", "unchanged (0.0%)", None)
    worse, failures = judge("error_rate_ratio", [0.25], measured([0.0], runs=1))
    assert worse.outcome == "reported"
    assert worse.verdict == "25.0% against 0.0%: no ratio (one value per run: reported)"
    assert failures == []


def test_the_noise_of_the_baseline_runs_widens_the_tolerance_and_says_so() -> None:
    stored = MetricBaseline(tuple(noisy(0.2, 0)), "measured", "", (0.18, 0.2, 0.22))
    judgement, _failures = judge("ttft_s", noisy(0.23, 1), stored)
    assert judgement.outcome == "pass"  # 15% slower, inside the runs' own spread
    assert judgement.verdict.endswith("95% prediction bound of the 3 baseline runs]")


def test_decide_is_one_rule_for_both_gates() -> None:
    regression = decide("ttft_s", noisy(0.2, 0), noisy(0.3, 1), tolerance=0.05)
    assert regression.outcome == "regression"
    assert regression.comparison is not None
    assert regression.verdict == regression.comparison.describe()
    reported = decide("load_s", [2.0], [3.0], tolerance=0.05)
    assert (reported.outcome, reported.ratio) == ("reported", 1.5)
    assert reported.verdict == "1.50x slower (one value per run: reported, not tested)"
    assert reported.comparison is None


def test_a_release_difference_is_spotted_by_its_key() -> None:
    differences = environment_differences(
        ENV, {**ENV, "backend_version": "0.34.0", "quantization": "Q8_0"}
    )
    unlike, release = split_differences(differences)
    assert unlike == ["quantization: 'Q4_K_M' -> 'Q8_0'"]
    assert release == ["backend_version: '0.33.0' -> '0.34.0'"]
    assert split_differences([]) == ([], [])


def test_a_single_value_is_reported_in_the_same_words() -> None:
    stored = MetricBaseline((100.0,), "measured")
    judgement = single_value("throughput_c4_tokens_per_s", 80.0, stored)
    assert judgement.outcome == "reported"
    assert judgement.verdict == "1.25x slower (one value per run: reported)"
    assert single_value("throughput_c4_tokens_per_s", 80.0, None).outcome == "no baseline"
