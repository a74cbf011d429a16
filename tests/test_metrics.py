"""The metric table, and the one way a change is worded."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgauge.backends.base import ServerTimings
from lmgauge.measure import Sample
from lmgauge.metrics import (
    ENGINE_SAMPLE_METRICS,
    JUDGED_SAMPLE_METRICS,
    SAMPLE_METRICS,
    change_direction,
    describe_change,
    higher_is_better,
    metric_values,
    sample_values,
)
from lmgauge.runner import Case, CaseRun
from lmgauge.stats import summarize_samples

OPPOSITE = {
    "slower": "faster",
    "faster": "slower",
    "more memory": "less memory",
    "less memory": "more memory",
    "higher": "lower",
    "lower": "higher",
}


@pytest.mark.parametrize(
    ("metric", "ratio", "words"),
    [
        # times: more seconds is slower
        ("ttft_s", 1.57, "1.57x slower"),
        ("e2e_s", 1 / 1.12, "1.12x faster"),
        ("itl_s", 2.0, "2.00x slower"),
        ("load_s", 1.3, "1.30x slower"),
        ("rag_response_s", 1.25, "1.25x slower"),
        ("model_switch_s", 0.5, "2.00x faster"),
        # speeds: fewer tokens (or documents) per unit of time is slower
        ("decode_tokens_per_s", 0.5, "2.00x slower"),
        ("prefill_tokens_per_s", 1.12, "1.12x faster"),
        ("server_decode_tokens_per_s", 0.8, "1.25x slower"),
        ("throughput_c4_tokens_per_s", 1.5, "1.50x faster"),
        ("classification_docs_per_min", 0.8, "1.25x slower"),
        # memory
        ("rss_bytes", 1.1, "1.10x more memory"),
        ("rss_bytes", 1 / 1.1, "1.10x less memory"),
        # shares
        ("error_rate_ratio", 2.0, "2.00x higher"),
        ("error_rate_ratio", 0.25, "4.00x lower"),
        ("", 1.5, "1.50x higher"),  # no name: no direction to speak of
    ],
)
def test_every_metric_family_has_its_words(metric: str, ratio: float, words: str) -> None:
    assert describe_change(metric, ratio) == words


def test_the_gate_and_diff_word_a_slower_latency_alike() -> None:
    # The report of the issue: the gate said "1.57x higher" where diff said "slower".
    assert describe_change("ttft_s", 1.57) == "1.57x slower"


@given(
    st.sampled_from(
        ["ttft_s", "decode_tokens_per_s", "rss_bytes", "error_rate_ratio", "docs_per_min"]
    ),
    st.floats(min_value=1.01, max_value=100.0),
)
def test_the_wording_is_symmetric(metric: str, ratio: float) -> None:
    up_factor, up = change_direction(metric, ratio)
    down_factor, down = change_direction(metric, 1 / ratio)
    assert up_factor == pytest.approx(down_factor)
    assert OPPOSITE[up] == down
    assert describe_change(metric, 1 / ratio) == describe_change(metric, ratio).replace(up, down)


def test_no_change_and_no_ratio() -> None:
    assert describe_change("ttft_s", 1.0) == "unchanged (1.00x)"
    assert describe_change("decode_tokens_per_s", 0.999) == "unchanged (1.00x)"
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert describe_change("ttft_s", bad) == "no ratio"


def test_which_way_is_better() -> None:
    assert higher_is_better("decode_tokens_per_s")
    assert higher_is_better("classification_docs_per_min")
    assert not higher_is_better("ttft_s")
    assert not higher_is_better("itl_s")
    assert not higher_is_better("rss_bytes")
    assert all(higher_is_better(m) for m in ENGINE_SAMPLE_METRICS)


def gaps_sample(gaps: tuple[float, ...], *, ok: bool = True) -> Sample:
    return Sample(
        requested_tokens=len(gaps) + 1,
        ok=ok,
        output_tokens=len(gaps) + 1,
        prompt_tokens=32,
        ttft_s=0.1,
        itl_s=gaps,
        e2e_s=0.1 + sum(gaps),
        server=ServerTimings(prompt_tokens=32, prompt_s=0.05, output_tokens=8, decode_s=0.2),
    )


SAMPLES = [
    gaps_sample((0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01)),  # median 0.01
    gaps_sample((0.02, 0.5)),  # median 0.26: a short answer with one stall
    gaps_sample((0.01,) * 3, ok=False),  # failed: not a value
]


def test_itl_is_one_value_per_request_the_median_of_its_gaps() -> None:
    assert sample_values(SAMPLES, "itl_s") == pytest.approx([0.01, 0.26])
    # Summaries use the same table: one itl_s value per valid sample, not 11 pooled gaps.
    summaries = summarize_samples(SAMPLES)
    assert summaries["itl_s"].n == 2
    assert summaries["itl_s"].median == pytest.approx(0.135)


def test_summaries_keep_the_engines_own_figures() -> None:
    summaries = summarize_samples(SAMPLES)
    assert set(summaries) == set(SAMPLE_METRICS)
    assert summaries["server_decode_tokens_per_s"].median == pytest.approx(40.0)
    assert summaries["server_prefill_tokens_per_s"].median == pytest.approx(640.0)


def test_reports_and_baselines_record_the_judged_metrics_only() -> None:
    run = CaseRun(Case("llamacpp", "qwen3-0.6b", "Q4_K_M", 4096), samples=SAMPLES)
    values = metric_values(run)
    assert set(JUDGED_SAMPLE_METRICS) <= set(values)
    assert not set(ENGINE_SAMPLE_METRICS) & set(values)
    assert values["error_rate_ratio"] == [pytest.approx(1 / 3)]
