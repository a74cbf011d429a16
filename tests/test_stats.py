"""Verdicts: significance AND an effect beyond the tolerance."""

import re

import numpy as np
import pytest

from lmgauge.stats import compare


def noisy(center: float, n: int = 10, seed: int = 0, spread: float = 0.02) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(center * (1 + spread * rng.standard_normal(n)))


def test_a_clear_slowdown_is_a_regression() -> None:
    result = compare(
        noisy(40.0), noisy(30.0, seed=1), higher_is_better=True, metric="decode_tokens_per_s"
    )
    assert result.outcome == "regression"
    assert re.match(r"1\.3\dx slower \(significant, p=0\.", result.describe())


def test_a_clear_speedup_is_an_improvement() -> None:
    result = compare(
        noisy(30.0), noisy(40.0, seed=1), higher_is_better=True, metric="decode_tokens_per_s"
    )
    assert result.outcome == "improvement"
    assert re.match(r"1\.3\dx faster \(significant", result.describe())


def test_lower_is_better_metrics() -> None:
    result = compare(noisy(0.5), noisy(0.8, seed=1), higher_is_better=False, metric="ttft_s")
    assert result.outcome == "regression"
    assert re.match(r"1\.[56]\dx slower \(significant", result.describe())
    memory = compare(noisy(5e9), noisy(8e9, seed=1), higher_is_better=False, metric="rss_bytes")
    assert re.match(r"1\.[56]\dx more memory \(significant", memory.describe())


def test_without_a_metric_name_a_change_is_higher_or_lower() -> None:
    result = compare(noisy(0.5), noisy(0.8, seed=1), higher_is_better=False)
    assert re.match(r"1\.[56]\dx higher \(significant.*: regression$", result.describe())


def test_a_small_significant_change_within_tolerance_passes() -> None:
    result = compare(
        noisy(40.0, n=50, spread=0.001),
        noisy(40.8, n=50, seed=1, spread=0.001),
        higher_is_better=True,
        tolerance=0.05,
    )
    assert result.p_value is not None
    assert result.p_value < 0.05
    assert result.outcome == "pass"
    assert result.describe().startswith("no significant change")


def test_a_large_but_noisy_change_is_inconclusive() -> None:
    result = compare([40, 20, 60, 45], [30, 55, 12, 50], higher_is_better=True)
    assert result.outcome == "inconclusive"
    assert "not significant" in result.reason
    assert result.describe().startswith("inconclusive: ")


def test_too_few_samples_is_inconclusive() -> None:
    result = compare([40.0, 41.0, 42.0], [30.0, 31.0, 32.0], higher_is_better=True)
    assert result.outcome == "inconclusive"
    assert result.reason == "too few samples (3 vs 3; need 4 each)"
    assert compare([40.0, 41, 42, 43], [30.0, 31, 32, 33], higher_is_better=True).outcome == (
        "regression"
    )


def test_a_a_comparisons_rarely_cry_wolf() -> None:
    regressions = sum(
        compare(
            noisy(40.0, seed=2 * i), noisy(40.0, seed=2 * i + 1, spread=0.05), higher_is_better=True
        ).outcome
        == "regression"
        for i in range(200)
    )
    assert regressions == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        compare([1.0], [1.0], higher_is_better=True, tolerance=-1)


def test_the_description_says_whether_it_is_good_or_bad() -> None:
    faster = compare(noisy(0.8), noisy(0.5, seed=1), higher_is_better=False)
    assert faster.describe().endswith(": improvement")
    slower = compare(noisy(40.0), noisy(30.0, seed=1), higher_is_better=True)
    assert slower.describe().endswith(": regression")
