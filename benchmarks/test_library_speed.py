"""Speed of the library's own decisions, reported by pytest-benchmark, never asserted.

Targets (issue 2): a routing decision <= 20 us; planning 100 models <= 5 ms. Machines are
noisy, so the figures go into the benchmark table (and --benchmark-json), not into asserts.
"""

import random

from pytest_benchmark.fixture import BenchmarkFixture

from lmgauge.catalog import CATALOG, GB, QUANTIZATIONS
from lmgauge.planner import PlannedModel, estimate_memory, plan_deployment
from lmgauge.router import RouteRequest, route


def test_routing_decision(benchmark: BenchmarkFixture) -> None:
    request = RouteRequest(complexity="high", urgency="normal", quality="high", reasoning=True)
    decision = benchmark(route, request, 40 * GB)
    benchmark.extra_info["target_us"] = 20
    assert decision.memory_bytes <= 40 * GB


def test_routing_decision_with_fallback(benchmark: BenchmarkFixture) -> None:
    request = RouteRequest(complexity="high")
    decision = benchmark(route, request, 10 * GB, policy="seed003-rules")
    benchmark.extra_info["target_us"] = 20
    assert decision.rank > 0


def _hundred_models() -> list[PlannedModel]:
    rng = random.Random(0)
    labels, quants = CATALOG.labels, sorted(QUANTIZATIONS)
    models = []
    for i in range(100):
        est = estimate_memory(rng.choice(labels), rng.choice(quants), rng.choice([4096, 16384]))
        models.append(PlannedModel(f"m{i}", est.total_bytes, rng.randint(1, 5)))
    return models


def test_plan_100_models(benchmark: BenchmarkFixture) -> None:
    models = _hundred_models()
    plan = benchmark(plan_deployment, models, 116 * GB, max_loaded=4)
    benchmark.extra_info["target_ms"] = 5
    assert len(plan.placements) == 100


def test_estimate_and_plan_100_models(benchmark: BenchmarkFixture) -> None:
    """Planning from labels, estimates included: what `lmgauge plan` does."""
    plan = benchmark(lambda: plan_deployment(_hundred_models(), 116 * GB, max_loaded=4))
    benchmark.extra_info["target_ms"] = 5
    assert len(plan.preloaded) <= 4
