"""The planner's and the router's invariants against the server config under test
(``--config``): what it configures fits its memory budget, and the router never picks a
model the config does not serve. Skipped without a config."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.catalog import GB
from lmgauge.config import ServerConfig
from lmgauge.errors import NoFeasibleModelError
from lmgauge.planner import PlannedModel, estimate_memory, plan_deployment
from lmgauge.router import DEFAULT_CANDIDATES, POLICIES, Candidate, RouteRequest, route

EXAMPLES = settings(max_examples=200, deadline=None)


def _candidates(config: ServerConfig, policy: str) -> list[Candidate]:
    """The policy's candidates restricted to the config's models and quantizations."""
    known = {c.label: c for c in DEFAULT_CANDIDATES[policy]}
    return [
        Candidate(
            label,
            quant,
            known[label].speed if label in known else 5.0,
            known[label].quality if label in known else 5.0,
        )
        for label in config.models
        for quant in config.quantizations
    ]


@pytest.fixture(scope="session")
def config_under_test(lmgauge_server_config: ServerConfig) -> ServerConfig:
    """The --lmgauge-config file; these invariants skip without one."""
    return lmgauge_server_config


def test_every_configured_case_fits_the_memory_budget(config_under_test: ServerConfig) -> None:
    budget = config_under_test.memory_budget_bytes
    if budget is None:
        return  # no budget configured: the planner skips what the host cannot hold
    too_big = [
        estimate.describe()
        for label in config_under_test.models
        for quant in config_under_test.quantizations
        if (estimate := estimate_memory(label, quant, max(config_under_test.contexts))).total_bytes
        > budget
    ]
    assert not too_big, (
        f"over the {budget / GB:.0f} GB budget of {config_under_test.path}: {too_big}"
    )


def test_the_deployment_plan_preloads_within_the_budget(
    config_under_test: ServerConfig,
) -> None:
    budget = config_under_test.memory_budget_bytes or 0
    models = [
        PlannedModel(
            f"{label}-{quant}",
            estimate_memory(label, quant, max(config_under_test.contexts)).total_bytes,
            i + 1,
        )
        for i, (label, quant) in enumerate(
            (label, quant)
            for label in config_under_test.models
            for quant in config_under_test.quantizations
        )
    ]
    plan = plan_deployment(models, budget)
    assert plan.preloaded_bytes <= budget


@EXAMPLES
@given(
    complexity=st.sampled_from(["low", "medium", "high"]),
    urgency=st.sampled_from(["low", "normal", "high"]),
    quality=st.sampled_from(["low", "balanced", "high"]),
    reasoning=st.booleans(),
    policy=st.sampled_from(sorted(POLICIES)),
    tenths_of_gb=st.integers(0, 1400),
)
def test_the_router_only_picks_configured_models_that_fit(
    config_under_test: ServerConfig,
    complexity: str,
    urgency: str,
    quality: str,
    reasoning: bool,
    policy: str,
    tenths_of_gb: int,
) -> None:
    available = tenths_of_gb * GB // 10
    if config_under_test.memory_budget_bytes is not None:
        available = min(available, config_under_test.memory_budget_bytes)
    request = RouteRequest(
        complexity=complexity,  # type: ignore[arg-type]
        urgency=urgency,  # type: ignore[arg-type]
        quality=quality,  # type: ignore[arg-type]
        reasoning=reasoning,
        context_tokens=min(config_under_test.contexts),
    )
    try:
        decision = route(request, available, _candidates(config_under_test, policy), policy)
    except NoFeasibleModelError:
        return
    assert decision.candidate.label in config_under_test.models
    assert decision.candidate.quantization in config_under_test.quantizations
    assert decision.memory_bytes <= available
