"""Tests of lmgauge.thresholds and the shipped baselines/thresholds.toml."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lmgauge.errors import ConfigError
from lmgauge.thresholds import (
    METRICS,
    REFERENCE_PROFILE,
    SEVERITIES,
    Breach,
    Threshold,
    default_path,
    evaluate,
    load_thresholds,
    select,
)

SHIPPED = Path(__file__).resolve().parents[1] / "baselines" / "thresholds.toml"
S000 = "seed 000 (Local Model Processing Optimization)"
S001 = "seed 001 (M3 Max Performance Optimization Strategies)"
S002 = "seed 002 (Qwen3 Model Performance Optimization)"
S003 = "seed 003 (Qwen3 Model Selection Strategy for M3 Max Optimization)"
SEED_MODELS = {"qwen3-1.7b", "qwen3-7b", "qwen3-14b", "qwen3-30b", "qwen3-30b-thinking"}
P = REFERENCE_PROFILE


@pytest.fixture(scope="module")
def shipped() -> tuple[Threshold, ...]:
    return load_thresholds(SHIPPED)


def by_id(thresholds: tuple[Threshold, ...], ident: str) -> Threshold:
    (found,) = [t for t in thresholds if t.id == ident]
    return found


def find(
    thresholds: tuple[Threshold, ...], source: str, model: str | None, metric: str, **kw: object
) -> list[Threshold]:
    return [
        t
        for t in thresholds
        if t.source == source
        and t.model == model
        and t.metric == metric
        and all(getattr(t, k) == v for k, v in kw.items())
    ]


def test_shipped_file_loads_with_unique_ids_and_known_vocabulary(
    shipped: tuple[Threshold, ...],
) -> None:
    assert len(shipped) >= 80
    assert len({t.id for t in shipped}) == len(shipped)
    assert {t.profile for t in shipped} == {P}
    assert {t.model for t in shipped} - {None} == SEED_MODELS
    assert {t.metric for t in shipped} <= set(METRICS)
    assert {t.source for t in shipped} == {S000, S001, S002, S003}  # seed 004: none
    assert all(t.source_key.strip() for t in shipped)


def test_default_path_finds_the_shipped_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(SHIPPED.parents[1])
    assert default_path() == SHIPPED
    monkeypatch.chdir(tmp_path)  # no ./baselines here: falls back to the source tree
    assert default_path().resolve() == SHIPPED
    assert load_thresholds() == load_thresholds(SHIPPED)


@pytest.mark.parametrize(
    ("model", "decode", "e2e", "memory"),
    [
        ("qwen3-1.7b", 100, 15, 4e9),
        ("qwen3-7b", 50, 30, 12e9),
        ("qwen3-30b", 15, 90, 35e9),
        ("qwen3-30b-thinking", 5, 1800, 40e9),
    ],
)
def test_seed002_performance_thresholds_are_hard_limits(
    shipped: tuple[Threshold, ...], model: str, decode: float, e2e: float, memory: float
) -> None:
    for metric, direction, value in [
        ("decode_tokens_per_s", "min", decode),
        ("e2e_s", "max", e2e),
        ("peak_memory_bytes", "max", memory),
    ]:
        (t,) = find(shipped, S002, model, metric, severity="limit")
        assert (t.direction, t.value, t.fails_test) == (direction, value, True)
        assert "performance_thresholds" in t.source_key


def test_seed002_targets_are_reported_not_failing(shipped: tuple[Threshold, ...]) -> None:
    expected = {
        ("qwen3-1.7b", "decode_tokens_per_s"): 150,
        ("qwen3-7b", "decode_tokens_per_s"): 80,
        ("qwen3-30b", "decode_tokens_per_s"): 25,
        ("qwen3-1.7b", "e2e_s"): 10,
        ("qwen3-7b", "e2e_s"): 20,
        ("qwen3-30b", "e2e_s"): 60,
        ("qwen3-1.7b", "concurrent_requests"): 16,
    }
    for (model, metric), value in expected.items():
        (t,) = find(shipped, S002, model, metric, severity="target", value=value)
        assert not t.fails_test
    (timeout,) = find(shipped, S002, "qwen3-30b-thinking", "request_timeout_s")
    assert timeout.value == 1800
    for model, gb in [("qwen3-1.7b", 2.5), ("qwen3-7b", 8), ("qwen3-30b", 25)]:
        assert find(shipped, S002, model, "peak_memory_bytes", value=gb * 1e9)
        assert find(shipped, S002, model, "model_size_bytes", value=gb * 1e9)


def test_seed000_optimization_thresholds(shipped: tuple[Threshold, ...]) -> None:
    pairs = {
        "e2e_s": (30, 120),
        "memory_utilization_ratio": (0.85, 0.95),
        "queue_length": (10, 20),
    }
    for metric, (warning, critical) in pairs.items():
        (w,) = find(shipped, S000, None, metric, severity="warning")
        (c,) = find(shipped, S000, None, metric, severity="critical")
        assert (w.value, w.fails_test, c.value, c.fails_test) == (warning, False, critical, True)
    assert find(shipped, S000, None, "request_timeout_s", value=1800)  # 1800000 ms
    assert find(shipped, S000, "qwen3-30b-thinking", "request_timeout_s", value=1800)
    assert find(shipped, S000, "qwen3-30b-thinking", "concurrent_requests", value=1)


def test_seed001_triggers_and_improvements(shipped: tuple[Threshold, ...]) -> None:
    (err,) = find(shipped, S001, None, "error_rate_ratio")
    assert (err.value, err.direction, err.severity, err.fails_test) == (0.02, "max", "limit", True)
    triggers = {
        (t.metric, t.value) for t in shipped if t.source == S001 and t.severity == "trigger"
    }
    assert triggers == {
        ("memory_utilization_ratio", 0.95),
        ("e2e_s", 120),
        ("cache_hit_ratio", 0.7),
    }
    targets = {(t.metric, t.value) for t in shipped if t.source == S001 and t.severity == "target"}
    assert {("peak_memory_bytes", 45e9), ("docs_per_s", 0.5), ("e2e_s", 150)} <= targets
    assert {("e2e_cv_ratio", 0.2), ("cache_hit_ratio", 0.8)} <= targets
    assert find(shipped, S001, None, "peak_memory_bytes", value=60e9, severity="expectation")


def test_seed003_target_metrics_are_hard_limits(shipped: tuple[Threshold, ...]) -> None:
    expected = [
        ("qwen3-1.7b", "classification_docs_per_min", "min", 500),
        ("qwen3-7b", "embedding_chunks_per_min", "min", 1000),
        ("qwen3-14b", "extraction_docs_per_min", "min", 100),
        ("qwen3-14b", "rag_response_s", "max", 2),
        (None, "model_switch_s", "max", 3),
        (None, "memory_utilization_ratio", "max", 0.8),
    ]
    for model, metric, direction, value in expected:
        (t,) = find(shipped, S003, model, metric, severity="limit")
        assert (t.direction, t.value, t.fails_test) == (direction, value, True)


def test_seed003_ranges_are_min_and_max_expectations(shipped: tuple[Threshold, ...]) -> None:
    ranges = {
        "qwen3-1.7b": ((3e9, 4e9), (50, 80)),
        "qwen3-7b": ((8e9, 12e9), (20, 35)),
        "qwen3-14b": ((16e9, 24e9), (12, 20)),
        "qwen3-30b": ((32e9, 48e9), (6, 12)),
    }
    for model, (memory, decode) in ranges.items():
        for metric, (low, high) in [("peak_memory_bytes", memory), ("decode_tokens_per_s", decode)]:
            got = find(shipped, S003, model, metric, severity="expectation")
            assert {(t.direction, t.value) for t in got} == {("min", low), ("max", high)}
    assert find(shipped, S003, "qwen3-1.7b", "embedding_chunks_per_min", value=2000)
    assert find(shipped, S003, "qwen3-1.7b", "ttft_s", value=0.5)


@pytest.mark.parametrize(
    ("model", "metric", "hard", "soft"),
    [
        ("qwen3-1.7b", "decode_tokens_per_s", 100, 80),  # seed 002 min vs seed 003 50-80
        ("qwen3-7b", "decode_tokens_per_s", 50, 35),  # seed 002 min vs seed 003 20-35
        ("qwen3-30b", "decode_tokens_per_s", 15, 12),  # seed 002 min vs seed 003 6-12
    ],
)
def test_contradictions_keep_both(
    shipped: tuple[Threshold, ...], model: str, metric: str, hard: float, soft: float
) -> None:
    (limit,) = find(shipped, S002, model, metric, severity="limit")
    (upper,) = find(shipped, S003, model, metric, severity="expectation", direction="max")
    assert (limit.value, upper.value) == (hard, soft)
    # a speed inside seed 003's range fails seed 002; the expectation is only reported
    breaches = evaluate(shipped, {metric: soft}, profile=P, model=model)
    assert any(b.threshold is limit and b.fails_test for b in breaches)
    assert all(b.threshold is not upper for b in breaches)


def test_memory_contradiction_keeps_both(shipped: tuple[Threshold, ...]) -> None:
    assert find(shipped, S002, "qwen3-1.7b", "peak_memory_bytes", value=2.5e9)
    assert find(shipped, S003, "qwen3-1.7b", "peak_memory_bytes", value=3e9, direction="min")


def test_evaluate_reports_breaches_failing_first(shipped: tuple[Threshold, ...]) -> None:
    measured = {"decode_tokens_per_s": 41.2, "e2e_s": 25.0, "error_rate_ratio": 0.05}
    breaches = evaluate(shipped, measured, profile=P, model="qwen3-7b")
    ids = [b.threshold.id for b in breaches]
    assert set(ids) == {
        "seed002.qwen3-7b.decode_min",
        "seed001.error_rate_limit",
        "seed002.qwen3-7b.decode_target",
        "seed002.qwen3-7b.e2e_target",
        "seed003.qwen3-7b.decode_range_max",
    }
    flags = [b.fails_test for b in breaches]
    assert flags == sorted(flags, reverse=True)
    assert flags.count(True) == 2
    first = by_id(shipped, "seed002.qwen3-7b.decode_min")
    assert breaches[[b.threshold for b in breaches].index(first)].message == (
        f"qwen3-7b decode_tokens_per_s 41.2 < 50 (limit, {S002}: "
        "Qwen3PerformanceMonitor.performance_thresholds['qwen3-7b']['tokens_per_second_min'])"
    )


def test_evaluate_scope(shipped: tuple[Threshold, ...]) -> None:
    assert evaluate(shipped, {}, profile=P, model="qwen3-7b") == []
    assert evaluate(shipped, {"decode_tokens_per_s": 1.0}, profile="other", model="qwen3-7b") == []
    # without a model only the model-less thresholds apply
    got = evaluate(shipped, {"e2e_s": 200.0, "decode_tokens_per_s": 1.0}, profile=P, model=None)
    assert {b.threshold.id for b in got} == {
        "seed000.e2e_warning",
        "seed000.e2e_critical",
        "seed001.latency_trigger",
        "seed001.e2e_target",
    }
    with pytest.raises(ConfigError, match="tokens_per_s"):
        evaluate(shipped, {"tokens_per_s": 1.0}, profile=P, model=None)


def test_select(shipped: tuple[Threshold, ...]) -> None:
    sel = select(shipped, profile=P, model="qwen3-14b")
    assert {t.model for t in sel} == {"qwen3-14b", None}
    assert len(select(shipped, profile=P)) == len(shipped)
    assert select(shipped, profile="elsewhere") == ()
    assert {t.metric for t in select(shipped, profile=P, metric="ttft_s")} == {"ttft_s"}


def test_boundaries_pass_and_nan_fails() -> None:
    low = Threshold("a", "decode_tokens_per_s", "min", 100.0, "limit", P, "s", "k")
    high = Threshold("b", "error_rate_ratio", "max", 0.02, "limit", P, "s", "k")
    assert low.check(100.0)
    assert not low.check(99.999)
    assert low.check(math.inf)
    assert high.check(0.02)
    assert not high.check(0.02000001)
    assert high.check(0.0)
    assert not low.check(math.nan)
    assert not high.check(math.nan)
    at_bounds = {"decode_tokens_per_s": 100, "error_rate_ratio": 0.02}
    assert evaluate([low, high], at_bounds, profile=P, model=None) == []
    assert Breach(high, 0.03).message == "error_rate_ratio 0.03 > 0.02 (limit, s: k)"


def test_fails_test_follows_severity(shipped: tuple[Threshold, ...]) -> None:
    failing = {t.severity for t in shipped if t.fails_test}
    assert failing == {"limit", "critical"}
    assert {t.severity for t in shipped if not t.fails_test} == set(SEVERITIES) - failing


GOOD = """
[[threshold]]
id = "t.one"
profile = "apple-m3-max-128gb"
metric = "e2e_s"
direction = "max"
value = 30
severity = "warning"
source = "seed x (a planning document)"
source_key = "k"
"""


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("value = 30", 'value = 30\ncolour = "red"'), "unknown key"),
        (('"e2e_s"', '"e2e_ms"'), "unknown metric"),
        (('"max"', '"below"'), "direction"),
        (('"warning"', '"fatal"'), "severity"),
        (("value = 30", 'value = "30"'), "not a number"),
        (("value = 30", "value = true"), "not a number"),
        (("value = 30", "value = nan"), "out of range"),
        (('metric = "e2e_s"', 'metric = "error_rate_ratio"'), "ratio"),
        (('source_key = "k"\n', ""), "missing key"),
        (('source = "seed x (a planning document)"', "source = 3"), "source must be"),
    ],
)
def test_malformed_entry_names_file_and_id(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*edit), encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as info:
        load_thresholds(path)
    assert str(path) in str(info.value)
    assert "'t.one'" in str(info.value)


def test_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + GOOD, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"#2 id 't.one': duplicate id"):
        load_thresholds(path)
    path.write_text(GOOD + GOOD.replace('id = "t.one"\n', ""), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[\[threshold\]\] #2: missing key"):
        load_thresholds(path)
    path.write_text("[[threshold]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_thresholds(path)
    path.write_text('profile = "x"\n' + GOOD, encoding="utf-8")
    with pytest.raises(ConfigError, match="top-level"):
        load_thresholds(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_thresholds(tmp_path / "absent.toml")
    path.write_text(GOOD, encoding="utf-8")
    (t,) = load_thresholds(path)
    assert (t.id, t.value, t.model, t.note, t.fails_test) == ("t.one", 30.0, None, "", False)


def test_thinking_model_is_exempt_from_seed000_response_time_levels() -> None:
    thresholds = load_thresholds()
    slow = {"e2e_s": 600.0}
    thinking = evaluate(thresholds, slow, profile=P, model="qwen3-30b-thinking")
    assert not [b for b in thinking if b.fails_test]
    plain = evaluate(thresholds, slow, profile=P, model="qwen3-7b")
    assert "seed000.e2e_critical" in {b.threshold.id for b in plain if b.fails_test}
    too_slow = evaluate(thresholds, {"e2e_s": 2000.0}, profile=P, model="qwen3-30b-thinking")
    assert [b for b in too_slow if b.fails_test]


def test_except_models_must_be_a_list_of_labels(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[threshold]]\nid = "x"\nprofile = "p"\nmetric = "e2e_s"\ndirection = "max"\n'
        'value = 1\nseverity = "limit"\nsource = "s"\nsource_key = "k"\nexcept_models = "m"\n'
    )
    with pytest.raises(ConfigError, match="except_models must be a list"):
        load_thresholds(path)


def test_a_decode_limit_scaled_to_another_host_is_reported_not_failed(
    shipped: tuple[Threshold, ...],
) -> None:
    """On its own profile seed 002's qwen3-7b decode minimum fails a test; scaled to another
    host by a measured bandwidth it is a derived estimate: the breach is a note, no failure."""
    from lmgauge.judge import threshold_notes

    failures: list[str] = []
    notes = threshold_notes(
        shipped, "qwen3-7b", "decode_tokens_per_s", 41.2, P, lambda: 400e9, failures
    )
    assert any("seed002.qwen3-7b.decode_min" in n for n in notes)
    assert any("seed002.qwen3-7b.decode_min" in f for f in failures)

    failures = []
    notes = threshold_notes(
        shipped,
        "qwen3-7b",
        "decode_tokens_per_s",
        7.1,
        "linux-x86_64-2c-24gb",
        lambda: 61e9,
        failures,
    )
    assert any(
        "seed002.qwen3-7b.decode_min" in n and "derived, reported, not failed" in n for n in notes
    )
    assert failures == []
