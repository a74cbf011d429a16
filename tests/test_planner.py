"""Planner: memory estimates, the seeds' presets, deployment plans, LRU residency."""

import pytest

from lmgauge.catalog import GB, GiB
from lmgauge.errors import ConfigError, ContextTooLargeError, DoesNotFitError
from lmgauge.planner import (
    PRESETS,
    PlannedModel,
    Residency,
    estimate_memory,
    plan_deployment,
    preset_from_shares,
    preset_from_sizes,
)


def test_estimate_adds_weights_kv_and_overhead() -> None:
    est = estimate_memory("qwen3-8b", "Q4_K_M", 4096)
    assert est.total_bytes == est.weight_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert est.kv_cache_bytes == 144 * 1024 * 4096
    assert "derived estimate" in est.describe()


def test_kv_cache_scales_with_parallel_slots_and_cache_type() -> None:
    one = estimate_memory("qwen3-8b", "Q4_K_M", 8192)
    four = estimate_memory("qwen3-8b", "Q4_K_M", 8192, parallel_slots=4)
    q8 = estimate_memory("qwen3-8b", "Q4_K_M", 8192, kv_cache_type="q8_0")
    assert four.kv_cache_bytes == 4 * one.kv_cache_bytes
    assert q8.kv_cache_bytes < one.kv_cache_bytes


def test_estimate_errs_high_against_the_measured_rss() -> None:
    # Measured on a 2-core Linux machine: llama-cpp-python 0.3.36 ran the synthetic
    # Qwen3-0.6B Q4_K_M in 0.89 GB RSS.
    est = estimate_memory("qwen3-0.6b", "Q4_K_M", 2048)
    assert 0.89e9 < est.total_bytes < 1.3 * 0.89e9


def test_context_beyond_the_model_is_refused() -> None:
    with pytest.raises(ContextTooLargeError, match="at most 32768 tokens"):
        estimate_memory("qwen3-1.7b", "Q4_K_M", 65536)
    assert estimate_memory("qwen3-8b", "Q4_K_M", 131072).context_tokens == 131072


@pytest.mark.parametrize("kwargs", [{"context_tokens": 0}, {"parallel_slots": 0}])
def test_bad_sizes_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        estimate_memory("qwen3-8b", "Q4_K_M", **kwargs)


def test_seed_presets_are_valid_and_match_the_documents() -> None:
    seed000 = PRESETS["seed000"]
    assert seed000.model_budget_bytes == 116 * GiB
    assert seed000.pools["model_weights"] == pytest.approx(0.60 * 116 * GiB, abs=1)
    assert seed000.max_loaded == 4
    seed001 = PRESETS["seed001"]
    assert sum(seed001.pools.values()) == 128 * GiB
    assert seed001.pools["llm_models"] == 80 * GiB
    seed003 = PRESETS["seed003"]
    assert seed003.model_budget_bytes == 60 * GiB
    for preset in PRESETS.values():
        preset.validate()
        assert sum(preset.pools.values()) <= preset.machine_bytes


def test_invalid_presets_are_refused() -> None:
    with pytest.raises(ConfigError, match="sum to at most 100%"):
        preset_from_shares(
            "bad",
            128,
            116,
            {"a": 0.7, "b": 0.4},
            model_budget_gib=100,
            max_loaded=None,
            source="test",
        )
    with pytest.raises(ConfigError, match="more than the machine"):
        preset_from_sizes(
            "bad", 64, {"a": 60, "b": 20}, model_budget_gib=60, max_loaded=None, source="test"
        )


def test_a_preset_for_a_bigger_machine_does_not_fit_this_host() -> None:
    with pytest.raises(ConfigError, match="laid out for 128 GiB"):
        PRESETS["seed003"].check_fits(24 * GiB)
    PRESETS["seed003"].check_fits(128 * GiB)


def test_deployment_plan_follows_seed000_order() -> None:
    models = [
        PlannedModel("a", 60 * GB, 1),
        PlannedModel("b", 50 * GB, 1),
        PlannedModel("c", 10 * GB, 2),
        PlannedModel("d", 5 * GB, 3),
    ]
    plan = plan_deployment(models, 100 * GB)
    assert [m.name for m in plan.preloaded] == ["a", "c", "d"]
    assert [m.name for m in plan.on_demand] == ["b"]
    assert plan.preloaded_bytes == 75 * GB
    reasons = {p.model.name: p.reason for p in plan.placements}
    assert "40.0 GB of the budget left" in reasons["b"]


def test_deployment_plan_respects_max_loaded() -> None:
    models = [PlannedModel(str(i), GB, 1) for i in range(6)]
    plan = plan_deployment(models, 100 * GB, max_loaded=4)
    assert len(plan.preloaded) == 4
    assert len(plan.on_demand) == 2


def test_duplicate_models_in_a_plan_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        plan_deployment([PlannedModel("a", 1), PlannedModel("a", 2)], 10)


def test_residency_evicts_least_recently_used() -> None:
    residency = Residency(max_loaded=2)
    assert residency.use("a", 1) == []
    assert residency.use("b", 1) == []
    assert residency.use("a", 1) == []  # a is now the most recent
    assert residency.use("c", 1) == ["b"]
    assert residency.loaded == ("a", "c")


def test_residency_evicts_to_stay_within_the_budget() -> None:
    residency = Residency(max_loaded=4, budget_bytes=10)
    residency.use("a", 4)
    residency.use("b", 4)
    assert residency.use("c", 5) == ["a"]
    assert residency.loaded_bytes == 9
    with pytest.raises(DoesNotFitError, match="more than the whole budget"):
        residency.use("huge", 11)
