"""Router invariants, checked with Hypothesis under every policy."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.catalog import GB
from lmgauge.errors import NoFeasibleModelError
from lmgauge.router import DEFAULT_CANDIDATES, POLICIES, RouteDecision, RouteRequest, route

EXAMPLES = settings(max_examples=200, deadline=None)

requests = st.builds(
    RouteRequest,
    complexity=st.sampled_from(["low", "medium", "high"]),
    urgency=st.sampled_from(["low", "normal", "high"]),
    quality=st.sampled_from(["low", "balanced", "high"]),
    max_latency_s=st.none() | st.floats(0.05, 120),
    technical=st.booleans(),
    reasoning=st.booleans(),
    context_tokens=st.integers(256, 32768),
)
policies = st.sampled_from(sorted(POLICIES))
# Memory in 0.1 GB steps: integers over a byte range are drawn mostly near zero, which
# would leave the range where models start to fit (1-40 GB) almost untested.
memory = st.integers(0, 800).map(lambda tenths: tenths * GB // 10)


def _route(request: RouteRequest, available: int, policy: str) -> RouteDecision | None:
    try:
        return route(request, available, policy=policy)
    except NoFeasibleModelError:
        return None


@EXAMPLES
@given(requests, memory, policies)
def test_the_choice_always_fits(request: RouteRequest, available: int, policy: str) -> None:
    decision = _route(request, available, policy)
    if decision is not None:
        assert decision.memory_bytes <= available
        assert decision.candidate in DEFAULT_CANDIDATES[policy]


@EXAMPLES
@given(requests, memory, memory, policies)
def test_more_memory_never_makes_a_request_infeasible(
    request: RouteRequest, available: int, extra: int, policy: str
) -> None:
    if _route(request, available, policy) is not None:
        assert _route(request, available + extra, policy) is not None


@EXAMPLES
@given(requests, memory, policies)
def test_same_input_same_output(request: RouteRequest, available: int, policy: str) -> None:
    assert _route(request, available, policy) == _route(request, available, policy)


@EXAMPLES
@given(requests, memory, policies)
def test_infeasible_only_when_nothing_fits(
    request: RouteRequest, available: int, policy: str
) -> None:
    if _route(request, available, policy) is None:
        smallest = min(
            route(request, 10**15, [c], policy).memory_bytes for c in DEFAULT_CANDIDATES[policy]
        )
        assert smallest > available
