"""``lmgauge diff`` and ``trend`` on hand-made reports: the same rule and words as the gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmgauge.diff import compare_metric, diff_reports, trend
from lmgauge.judge import decide

CASE = "ollama-qwen3-7b-Q4_K_M-ctx4096"
ENV = {
    "model": "qwen3-7b",
    "model_digest": "sha256:aaa",
    "quantization": "Q4_K_M",
    "context_tokens": 4096,
    "backend": "ollama",
    "backend_version": "0.33.0",
    "host_cpu": "Apple M3 Max",
}


def noisy(center: float, seed: int, n: int = 8) -> list[float]:
    return list(center * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n)))


def report(
    *, decode: float = 50.0, ttft: float = 0.2, rss: float = 5.2e9, seed: int = 0, **env: Any
) -> dict[str, Any]:
    return {
        "profile": "apple-m3-max-128gb",
        "started_utc": f"2026-11-0{seed + 1}T00:00:00+00:00",
        "cases": {
            CASE: {
                "environment": {**ENV, **env},
                "values": {
                    "decode_tokens_per_s": noisy(decode, seed),
                    "ttft_s": noisy(ttft, seed + 100),
                    "rss_bytes": [rss],
                },
            }
        },
    }


def test_compare_metric_uses_the_gates_rule_and_sentence() -> None:
    a, b = noisy(0.2, 0), noisy(0.3, 1)
    row = compare_metric(CASE, "ttft_s", a, b, 0.05)
    gate = decide("ttft_s", a, b, tolerance=0.05)
    assert (row.outcome, row.verdict, row.ratio) == (gate.outcome, gate.verdict, gate.ratio)
    assert row.outcome == "regression"
    assert row.verdict.startswith("1.5")
    assert "x slower (significant, p=" in row.verdict
    assert row.p_value is not None
    assert row.a == pytest.approx(float(np.median(a)))
    assert row.b == pytest.approx(float(np.median(b)))


def test_a_metric_measured_on_one_side_only_is_missing() -> None:
    row = compare_metric(CASE, "ttft_s", [], [0.2, 0.3], 0.05)
    assert (row.outcome, row.verdict, row.ratio) == ("missing", "measured in B only", None)
    assert compare_metric(CASE, "ttft_s", [0.2], [], 0.05).verdict == "measured in A only"


def test_memory_growth_is_judged_by_the_same_bound_as_the_gate() -> None:
    grown = compare_metric(CASE, "rss_bytes", [5e9], [6e9], 0.05)
    assert grown.outcome == "regression"
    assert grown.verdict == "1.20x more memory (beyond the 10% bound): regression"
    within = compare_metric(CASE, "rss_bytes", [5e9], [5.2e9], 0.05)
    assert within.outcome == "reported"
    assert within.verdict == "1.04x more memory (one value per run: reported, not tested)"


def test_a_zero_in_a_gives_no_ratio() -> None:
    row = compare_metric(CASE, "error_rate_ratio", [0.0], [0.1], 0.05)
    assert (row.outcome, row.ratio) == ("reported", None)
    assert row.verdict == "10.0% against 0.0%: no ratio (one value per run: reported)"


def test_an_a_a_pair_has_no_regression() -> None:
    diff = diff_reports(report(seed=1), report(seed=2))
    assert diff.regressions == []
    assert {r.metric: r.outcome for r in diff.rows} == {
        "decode_tokens_per_s": "pass",
        "ttft_s": "pass",
        "rss_bytes": "reported",
    }
    assert diff.warnings == []
    assert set(diff.geometric_means()) == {"decode_tokens_per_s", "ttft_s", "rss_bytes"}


def test_a_slowdown_is_a_regression_in_words_of_speed() -> None:
    diff = diff_reports(report(seed=1), report(decode=42.0, ttft=0.24, seed=2))
    verdicts = {r.metric: r.verdict for r in diff.regressions}
    assert set(verdicts) == {"decode_tokens_per_s", "ttft_s"}
    assert verdicts["decode_tokens_per_s"].startswith(("1.1", "1.2"))  # 50 -> 42 t/s
    assert "x slower (significant, p=" in verdicts["decode_tokens_per_s"]
    assert "x slower (significant, p=" in verdicts["ttft_s"]
    assert diff.geometric_means()["decode_tokens_per_s"] == pytest.approx(0.84, abs=0.03)


def test_unlike_environments_are_refused_unless_allowed() -> None:
    a, b = report(seed=1), report(seed=2, model_digest="sha256:bbb")
    refused = diff_reports(a, b)
    assert refused.rows == []
    assert refused.refused == {CASE: ["model_digest: 'sha256:aaa' -> 'sha256:bbb'"]}
    allowed = diff_reports(a, b, allow_unlike=True)
    assert len(allowed.rows) == 3
    assert allowed.warnings == [
        f"{CASE}: compared despite model_digest: 'sha256:aaa' -> 'sha256:bbb'"
    ]


def test_a_new_release_is_compared_and_noted() -> None:
    diff = diff_reports(report(seed=1), report(seed=2, backend_version="0.34.0"))
    assert len(diff.rows) == 3
    assert diff.refused == {}
    assert diff.warnings == [f"{CASE}: across releases (backend_version: '0.33.0' -> '0.34.0')"]


def test_cases_in_one_report_only_are_listed() -> None:
    a, b = report(seed=1), report(seed=2)
    b["cases"]["other"] = b["cases"][CASE]
    diff = diff_reports(a, b)
    assert diff.warnings == ["only in B: other"]


def test_trend_judges_each_step_with_the_same_rule() -> None:
    reports = [report(seed=0), report(seed=1), report(decode=50 / 3, seed=2, backend_version="x")]
    series, warnings = trend(reports)
    assert warnings == []  # a new release is no unlike environment
    decode = next(s for s in series if s.metric == "decode_tokens_per_s")
    assert decode.steps[0] is None
    assert decode.steps[1] is not None
    assert decode.steps[1].outcome == "pass"
    assert decode.steps[2] is not None
    assert decode.steps[2].outcome == "regression"
    assert decode.steps[2].verdict.startswith("3.0")
    assert "x slower (significant" in decode.steps[2].verdict
