"""The paired verdict: Hodges-Lehmann estimate, exact signed-rank interval, sequential plan."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lmgauge.paired_stats import (
    PairedVerdict,
    SequentialPlan,
    judge_paired,
    ratio_interval,
    should_stop,
)

PLAN = SequentialPlan(min_rounds=8, step_rounds=4, max_rounds=20, alpha=0.05)  # one metric
SWAPPED = {
    "regression": "improvement",
    "improvement": "regression",
    "no change": "no change",
    "inconclusive": "inconclusive",
}
ratio_lists = st.lists(
    st.floats(min_value=0.5, max_value=2.0, allow_nan=False), min_size=2, max_size=30
)


def verdict(
    ratios: list[float] | np.ndarray,
    *,
    metric: str = "e2e_s",
    higher_is_better: bool = False,
    tolerance: float = 0.02,
    plan: SequentialPlan = PLAN,
) -> PairedVerdict:
    return judge_paired(
        list(ratios),
        metric=metric,
        higher_is_better=higher_is_better,
        tolerance=tolerance,
        plan=plan,
    )


def sequential_run(
    rng: np.random.Generator, true_log_ratio: float, plan: SequentialPlan = PLAN
) -> PairedVerdict:
    """One paired session: rounds with 3% noise on the log ratio, a verdict at each look."""
    logs = rng.normal(true_log_ratio, 0.03, plan.max_rounds)
    for rounds in plan.look_rounds:
        result = verdict(np.exp(logs[:rounds]), plan=plan)
        if should_stop([result], rounds, plan):
            return result
    raise AssertionError("the plan's last look always stops")


# --- the plan --------------------------------------------------------------------------


def test_the_default_plan_looks_four_times_at_bonferroni_confidence() -> None:
    assert PLAN.look_rounds == (8, 12, 16, 20)
    assert PLAN.looks == 4
    assert PLAN.look_confidence == pytest.approx(1 - 0.05 / 4)
    assert [r for r in range(30) if PLAN.is_look(r)] == [8, 12, 16, 20]


def test_max_rounds_off_the_step_grid_is_a_look_and_counted() -> None:
    plan = SequentialPlan(min_rounds=8, step_rounds=5, max_rounds=20, alpha=0.05)
    assert plan.look_rounds == (8, 13, 18, 20)
    assert plan.look_confidence == pytest.approx(1 - 0.05 / 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_rounds": 1}, "min_rounds must be at least 2"),
        ({"step_rounds": 0}, "step_rounds must be at least 1"),
        ({"max_rounds": 4}, r"max_rounds \(4\) must be at least min_rounds \(12\)"),
        ({"alpha": 0.0}, "alpha must be between 0 and 1"),
        ({"alpha": 1.5}, "alpha must be between 0 and 1"),
    ],
)
def test_bad_plans_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialPlan(**kwargs)  # type: ignore[arg-type]


# --- the interval ----------------------------------------------------------------------


def signed_rank_cdf_by_enumeration(n: int, t: int) -> float:
    """P(T+ <= t) over all 2^n equally likely sign patterns of the ranks 1..n."""
    hits = sum(
        sum(rank for rank, plus in zip(range(1, n + 1), signs, strict=True) if plus) <= t
        for signs in itertools.product((False, True), repeat=n)
    )
    return hits / 2.0**n


@pytest.mark.parametrize(("n", "confidence"), [(6, 0.9), (8, 0.95), (10, 0.95), (12, 0.9875)])
def test_achieved_confidence_is_the_exact_signed_rank_coverage(n: int, confidence: float) -> None:
    ratios = list(np.exp(np.random.default_rng(n).normal(0, 0.05, n)))
    interval = ratio_interval(ratios, confidence)
    assert interval.achieved_confidence >= confidence
    # The achieved coverage is 1 - 2 P(T+ <= k - 1) for some k: find it by enumeration.
    coverages = [1 - 2 * signed_rank_cdf_by_enumeration(n, t) for t in range(n * (n + 1) // 2)]
    assert any(c == pytest.approx(interval.achieved_confidence, abs=1e-12) for c in coverages)
    # ...and it is the narrowest interval that reaches the requested confidence.
    assert min(c for c in coverages if c >= confidence) == pytest.approx(
        interval.achieved_confidence, abs=1e-12
    )


def test_eight_rounds_reach_at_most_1_minus_2_over_2_to_the_8() -> None:
    ratios = [1.0 + 0.01 * i for i in range(8)]
    interval = ratio_interval(ratios, 0.999)
    assert interval.achieved_confidence == pytest.approx(1 - 2 / 2**8)
    assert (interval.low, interval.high) == pytest.approx((1.0, 1.07))  # min and max
    assert interval.n == 8


def test_the_normal_approximation_takes_over_smoothly_above_50() -> None:
    rng = np.random.default_rng(0)
    for n in (50, 51, 200):
        interval = ratio_interval(list(np.exp(rng.normal(0, 0.03, n))), 0.95)
        assert 0.95 <= interval.achieved_confidence < 0.955


@given(ratio_lists, st.sampled_from([0.8, 0.95, 0.9875]))
def test_inverting_the_ratios_mirrors_the_interval(ratios: list[float], confidence: float) -> None:
    forward = ratio_interval(ratios, confidence)
    backward = ratio_interval([1 / r for r in ratios], confidence)
    assert backward.estimate == pytest.approx(1 / forward.estimate, rel=1e-9)
    assert backward.low == pytest.approx(1 / forward.high, rel=1e-9)
    assert backward.high == pytest.approx(1 / forward.low, rel=1e-9)
    assert backward.achieved_confidence == forward.achieved_confidence


@pytest.mark.parametrize("noise", ["normal", "student-t 3 df"])
def test_the_interval_covers_the_true_ratio_as_often_as_it_says(noise: str) -> None:
    rng = np.random.default_rng(12)
    true_log = math.log(1.03)
    covered, stated = 0, []
    for _ in range(2000):
        spread = rng.normal(0, 0.05, 12) if noise == "normal" else 0.03 * rng.standard_t(3, 12)
        interval = ratio_interval(list(np.exp(true_log + spread)), 0.95)
        covered += interval.low <= math.exp(true_log) <= interval.high
        stated.append(interval.achieved_confidence)
    assert covered / 2000 >= min(stated) - 0.015  # 3 standard errors of 2000 draws


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ([1.0], "need at least 2 ratios"),
        ([], "need at least 2 ratios"),
        ([1.0, float("nan")], "finite and positive"),
        ([1.0, float("inf")], "finite and positive"),
        ([1.0, 0.0], "finite and positive"),
        ([1.0, -1.2], "finite and positive"),
    ],
)
def test_unusable_ratios_are_refused(ratios: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ratio_interval(ratios)
    with pytest.raises(ValueError, match=message):
        verdict(ratios)


def test_bad_confidence_and_tolerance_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        ratio_interval([1.0, 1.1], 1.0)
    with pytest.raises(ValueError, match="tolerance must be a finite fraction"):
        verdict([1.0, 1.1], tolerance=-0.01)


# --- the verdict -----------------------------------------------------------------------


@given(ratio_lists, st.sampled_from([0.0, 0.02, 0.05]), st.booleans())
def test_swapping_the_arms_inverts_the_verdict(
    ratios: list[float], tolerance: float, higher_is_better: bool
) -> None:
    metric = "decode_tokens_per_s" if higher_is_better else "ttft_s"
    forward = verdict(ratios, metric=metric, higher_is_better=higher_is_better, tolerance=tolerance)
    # An interval end within rounding of a bound may fall either side of it.
    bound = math.log1p(tolerance)
    for end in (forward.ratio_low, forward.ratio_high):
        assume(min(abs(math.log(end) - bound), abs(math.log(end) + bound)) > 1e-9)
    backward = verdict(
        [1 / r for r in ratios],
        metric=metric,
        higher_is_better=higher_is_better,
        tolerance=tolerance,
    )
    assert backward.outcome == SWAPPED[forward.outcome]
    assert backward.ratio == pytest.approx(1 / forward.ratio, rel=1e-9)
    assert backward.ratio_low == pytest.approx(1 / forward.ratio_high, rel=1e-9)
    assert backward.ratio_high == pytest.approx(1 / forward.ratio_low, rel=1e-9)


@given(
    st.lists(st.floats(min_value=-0.1, max_value=0.1), min_size=8, max_size=20),
    st.floats(min_value=0.0, max_value=0.2),
    st.floats(min_value=1e-6, max_value=0.2),
    st.booleans(),
)
def test_a_bigger_slowdown_never_makes_a_regression_go_away(
    noise_logs: list[float], slowdown: float, more: float, higher_is_better: bool
) -> None:
    # A slowdown raises a latency ratio and lowers a speed ratio.
    sign = -1 if higher_is_better else 1
    metric = "decode_tokens_per_s" if higher_is_better else "e2e_s"

    def slowed(by: float) -> PairedVerdict:
        ratios = [math.exp(x + sign * by) for x in noise_logs]
        return verdict(ratios, metric=metric, higher_is_better=higher_is_better)

    if slowed(slowdown).outcome == "regression":
        assert slowed(slowdown + more).outcome == "regression"


def test_a_clear_slowdown_of_a_latency_is_a_regression() -> None:
    logs = np.random.default_rng(3).normal(math.log(1.12), 0.02, 12)
    result = verdict(np.exp(logs), metric="ttft_s")
    assert result.outcome == "regression"
    assert result.rounds_to_settle is None
    assert result.confidence >= PLAN.look_confidence
    assert result.describe().startswith("1.1")
    assert "x slower [98.8% CI 1." in result.describe()
    assert "x slower], 12 rounds: regression beyond the 2% tolerance; this run could see" in (
        result.describe()
    )


def test_a_slower_decode_speed_is_a_regression_in_the_same_words() -> None:
    logs = np.random.default_rng(3).normal(-math.log(1.12), 0.02, 12)
    result = verdict(np.exp(logs), metric="decode_tokens_per_s", higher_is_better=True)
    assert result.outcome == "regression"
    assert result.ratio < 1
    assert "x slower [98.8% CI 1." in result.describe()


def test_a_speedup_is_an_improvement() -> None:
    logs = np.random.default_rng(3).normal(math.log(1.12), 0.02, 12)
    result = verdict(np.exp(logs), metric="decode_tokens_per_s", higher_is_better=True)
    assert result.outcome == "improvement"
    assert "x faster [98.8% CI" in result.describe()


def test_identical_arms_with_little_noise_are_no_change() -> None:
    logs = np.random.default_rng(4).normal(0, 0.005, 12)
    result = verdict(np.exp(logs))
    assert result.outcome == "no change"
    assert result.describe().startswith("no change: 0.996x-1.005x within")
    assert "within ±2% [98.8% CI], 12 rounds" in result.describe()


def test_an_interval_across_the_tolerance_says_how_many_rounds_would_settle_it() -> None:
    logs = np.random.default_rng(5).normal(math.log(1.02), 0.03, 20)
    result = verdict(np.exp(logs))
    assert result.outcome == "inconclusive"
    assert result.rounds_to_settle is not None
    assert result.rounds_to_settle > 20
    assert result.describe().startswith("inconclusive after 20 rounds: ")
    assert "straddles the 2% tolerance; about " in result.describe()
    assert result.describe().endswith(" rounds would settle it")


def test_too_few_rounds_for_the_plans_confidence_is_inconclusive() -> None:
    result = verdict([1.3, 1.31, 1.29, 1.3])  # clearly slower, but 4 rounds reach 87.5%
    assert result.outcome == "inconclusive"
    assert result.confidence == pytest.approx(1 - 2 / 2**4)
    assert result.rounds_to_settle == 8  # 1 - 2/2^8 >= 98.75%, 1 - 2/2^7 is not
    assert result.describe() == (
        "inconclusive after 4 rounds: too few rounds for the 98.8% interval the plan "
        "needs (4 rounds reach at most 87.5%); about 8 rounds would settle it"
    )


def test_detectable_change_follows_its_formula() -> None:
    logs = np.random.default_rng(6).normal(0.0, 0.03, 16)
    result = verdict(np.exp(logs))
    z_look, z_power = 2.4977054744, 0.8416212336  # z(1 - 0.0125 / 2), z(0.8)
    sd = float(np.std(logs, ddof=1)) * math.sqrt(math.pi / 3)
    expected = math.expm1(math.log1p(0.02) + (z_look + z_power) * sd / 4)
    assert result.detectable_change == pytest.approx(expected, rel=1e-6)


def test_to_dict_carries_the_sentence() -> None:
    result = verdict([1.0, 1.01, 0.99, 1.0, 1.0, 1.01, 0.99, 1.0])
    record = result.to_dict()
    assert record["outcome"] == result.outcome
    assert record["verdict"] == result.describe()


# --- the sequential plan ---------------------------------------------------------------


def test_should_stop_at_a_look_when_every_metric_is_settled_or_at_max_rounds() -> None:
    settled = verdict(np.exp(np.random.default_rng(4).normal(0, 0.005, 12)))
    unsettled = verdict([1.3, 1.31, 1.29, 1.3])
    assert should_stop([settled], 12, PLAN)
    assert not should_stop([settled], 13, PLAN)  # not a look
    assert not should_stop([settled, unsettled], 12, PLAN)
    assert should_stop([settled, unsettled], 20, PLAN)


def test_a_a_sessions_rarely_call_a_regression_under_the_sequential_plan() -> None:
    rng = np.random.default_rng(2026)
    outcomes = [sequential_run(rng, 0.0).outcome for _ in range(5000)]
    assert outcomes.count("regression") / len(outcomes) <= 0.01
    assert outcomes.count("improvement") / len(outcomes) <= 0.01


def test_a_5_percent_slowdown_is_flagged_by_the_last_look() -> None:
    # With 3% noise on the log ratio, Bonferroni over 4 looks and a 2% tolerance, 20
    # rounds flag a 5% slowdown about 93% of the time: a t interval does no better
    # (93% in the same simulation), so the rounds, not the interval, set the power.
    rng = np.random.default_rng(7)
    flagged = [sequential_run(rng, math.log(1.05)).outcome == "regression" for _ in range(1000)]
    assert sum(flagged) / len(flagged) >= 0.90
    # 24 rounds (5 looks) flag it at least 95% of the time.
    longer = SequentialPlan(min_rounds=8, step_rounds=4, max_rounds=24, alpha=0.05)
    flagged = [
        sequential_run(rng, math.log(1.05), longer).outcome == "regression" for _ in range(1000)
    ]
    assert sum(flagged) / len(flagged) >= 0.95


def test_the_default_plan_shares_its_error_rate_among_looks_and_metrics() -> None:
    # The paired gate judges 6 metrics of the same rounds (paired.ROUND_METRICS): each
    # interval gets alpha / (looks x metrics), so a run of identical arms is called a
    # regression in any metric with probability below alpha / 2 = 1%.
    plan = SequentialPlan(metrics=6)
    assert plan.look_rounds == (12, 16, 20, 24)
    assert plan.look_confidence == pytest.approx(1 - 0.02 / 24)
    # 12 rounds is the fewest for which the exact interval can reach that confidence.
    ratios = [1.0 + i / 100 for i in range(12)]
    assert ratio_interval(ratios, plan.look_confidence).achieved_confidence >= (
        plan.look_confidence
    )
    assert ratio_interval(ratios[:11], plan.look_confidence).achieved_confidence < (
        plan.look_confidence
    )
