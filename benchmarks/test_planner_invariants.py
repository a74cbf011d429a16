"""Planner invariants, checked with Hypothesis: they gate a user's memory plan."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.catalog import CATALOG, GB, QUANTIZATIONS, resolve_model
from lmgauge.planner import PlannedModel, Residency, estimate_memory, plan_deployment

EXAMPLES = settings(max_examples=200, deadline=None)

# Sizes in 0.1 GB steps: integers over a byte range are drawn mostly near zero.
gigabytes = st.integers(0, 800).map(lambda tenths: tenths * GB // 10)
planned_models = st.lists(
    st.builds(
        PlannedModel,
        name=st.text("abcdefghij", min_size=1, max_size=6),
        size_bytes=gigabytes,
        priority=st.integers(1, 6),
    ),
    max_size=12,
    unique_by=lambda m: m.name,
)
budgets = st.integers(0, 1600).map(lambda tenths: tenths * GB // 10)
max_loaded = st.none() | st.integers(0, 6)


@EXAMPLES
@given(planned_models, budgets, max_loaded)
def test_preload_set_never_exceeds_budget_or_slots(
    models: list[PlannedModel], budget: int, slots: int | None
) -> None:
    plan = plan_deployment(models, budget, max_loaded=slots)
    assert plan.preloaded_bytes <= budget
    if slots is not None:
        assert len(plan.preloaded) <= slots


@EXAMPLES
@given(planned_models, budgets, max_loaded)
def test_every_model_is_placed_exactly_once(
    models: list[PlannedModel], budget: int, slots: int | None
) -> None:
    plan = plan_deployment(models, budget, max_loaded=slots)
    placed = [p.model.name for p in plan.placements]
    assert sorted(placed) == sorted(m.name for m in models)
    assert not set(m.name for m in plan.preloaded) & set(m.name for m in plan.on_demand)


@EXAMPLES
@given(planned_models, budgets, max_loaded)
def test_priority_is_never_inverted(
    models: list[PlannedModel], budget: int, slots: int | None
) -> None:
    plan = plan_deployment(models, budget, max_loaded=slots)
    for waiting in plan.on_demand:
        for loaded in plan.preloaded:
            lower_priority = loaded.priority > waiting.priority
            assert not (lower_priority and loaded.size_bytes >= waiting.size_bytes), (
                f"{waiting} left on demand while {loaded} is preloaded"
            )


labels = st.sampled_from(CATALOG.labels)
quants = st.sampled_from(sorted(QUANTIZATIONS))
kv_types = st.sampled_from(["f16", "q8_0", "q4_0"])


@EXAMPLES
@given(labels, quants, kv_types, st.integers(1, 32768), st.integers(1, 32768), st.integers(1, 4))
def test_estimate_grows_with_context(
    label: str, quant: str, kv: str, a: int, b: int, slots: int
) -> None:
    short, long = sorted((a, b))
    small = estimate_memory(label, quant, short, kv_cache_type=kv, parallel_slots=slots)
    large = estimate_memory(label, quant, long, kv_cache_type=kv, parallel_slots=slots)
    assert small.total_bytes <= large.total_bytes
    if long > short:
        assert small.total_bytes < large.total_bytes


@EXAMPLES
@given(labels, quants, quants, st.integers(1, 32768))
def test_estimate_grows_with_bits_per_weight(label: str, q1: str, q2: str, context: int) -> None:
    low, high = sorted((QUANTIZATIONS[q1], QUANTIZATIONS[q2]), key=lambda q: q.bits_per_weight)
    assert (
        estimate_memory(label, low, context).total_bytes
        <= estimate_memory(label, high, context).total_bytes
    )


@EXAMPLES
@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 40)), max_size=40),
    st.integers(1, 4),
    st.integers(40, 120),
)
def test_residency_stays_within_slots_and_budget(
    uses: list[tuple[str, int]], slots: int, budget: int
) -> None:
    residency = Residency(max_loaded=slots, budget_bytes=budget)
    for name, size in uses:
        residency.use(name, size)
        assert len(residency.loaded) <= slots
        assert residency.loaded_bytes <= budget
        assert residency.loaded[-1] == name


def test_labels_cover_every_architecture_family() -> None:
    families = {resolve_model(label).architecture.gguf_arch for label in CATALOG.labels}
    assert families == {"qwen3", "qwen3moe", "qwen2"}
