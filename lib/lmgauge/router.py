"""Choose a model for a request under memory, latency and quality constraints.

The planning documents' three selection policies, made sound. Each policy only RANKS
the candidates; the router then takes the first candidate that fits the available
memory (the planner's estimate at the request's context). So the choice always fits,
more memory never turns a feasible request infeasible, and the same input always gives
the same output (ties break on memory, then name).

A policy's name (``route(policy="seed003-rules")``, ``RouteDecision.policy``) says which
planning document it comes from: seed 000 ("Local Model Processing Optimization"),
seed 002 ("Qwen3 Model Performance Optimization") and seed 003 ("Qwen3 Model Selection
Strategy for M3 Max Optimization").

Deviations from the seeds, and why:
- seed 003 guards its rules with fixed sizes (``memory_available > 8/16/24`` GB) and
  falls back to the 1.7B model even when that does not fit either; here the fit check is
  the planner's estimate for the actual quantization and context, and "nothing fits" is
  an error naming the smallest option.
- seeds 000 and 002 assess complexity from the prompt with functions they never define;
  here the caller states complexity, urgency, quality and reasoning needs.
- seed 002 ranks ``qwen3-14b``, which its score table lacks, nowhere; the seed 003
  candidate set gives it speed 5 and quality 8.5, interpolated between its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

from lmgauge.catalog import CATALOG, GB
from lmgauge.errors import ConfigError, NoFeasibleModelError
from lmgauge.planner import estimate_memory

Level = Literal["low", "medium", "high"]
Urgency = Literal["low", "normal", "high"]
QualityNeed = Literal["low", "balanced", "high"]


@dataclass(frozen=True)
class RouteRequest:
    complexity: Level = "medium"
    urgency: Urgency = "normal"
    quality: QualityNeed = "balanced"
    max_latency_s: float | None = None
    technical: bool = False
    reasoning: bool = False
    context_tokens: int = 4096


@dataclass(frozen=True)
class Candidate:
    """A model the router may pick, with the seeds' relative speed and quality (1-10)."""

    label: str
    quantization: str
    speed: float
    quality: float

    @property
    def name(self) -> str:
        return f"{self.label}-{self.quantization}"

    @property
    def thinking(self) -> bool:
        return CATALOG.model(self.label).thinking


@dataclass(frozen=True)
class RouteDecision:
    candidate: Candidate
    memory_bytes: int
    policy: str
    rank: int  # 0 = the policy's first preference
    reason: str


Policy = Callable[[RouteRequest, Sequence[Candidate]], list[Candidate]]


@lru_cache(maxsize=4096)
def candidate_memory_bytes(label: str, quantization: str, context_tokens: int) -> int:
    return estimate_memory(label, quantization, context_tokens).total_bytes


def _tie_break(request: RouteRequest) -> Callable[[Candidate], tuple[int, str]]:
    return lambda c: (
        candidate_memory_bytes(c.label, c.quantization, request.context_tokens),
        c.name,
    )


def rank_by_speed_quality_score(
    request: RouteRequest, candidates: Sequence[Candidate]
) -> list[Candidate]:
    """Highest score first: speed weighted by urgency plus quality weighted by the quality
    need, less a memory cost, plus bonuses for complexity, technical and reasoning work
    (seed 002's QwenModelRouter._calculate_model_score)."""

    def score(c: Candidate) -> float:
        value = {"high": 0.4, "normal": 0.2, "low": 0.0}[request.urgency] * c.speed
        value += {"high": 0.5, "balanced": 0.3, "low": 0.0}[request.quality] * c.quality
        memory_gb = candidate_memory_bytes(c.label, c.quantization, request.context_tokens) / GB
        value -= memory_gb / 30 * 0.1
        if request.complexity == "high":
            value += 3 if c.label == "qwen3-30b-thinking" else 2 if c.label == "qwen3-30b" else 0
        elif request.complexity == "low" and c.label == "qwen3-1.7b":
            value += 2
        if request.technical and c.label in ("qwen3-7b", "qwen3-30b"):
            value += 1
        if request.reasoning and c.label in ("qwen3-30b", "qwen3-30b-thinking"):
            value += 2
        return value

    tie = _tie_break(request)
    return sorted(candidates, key=lambda c: (-score(c), *tie(c)))


def rank_by_latency_and_complexity(
    request: RouteRequest, candidates: Sequence[Candidate]
) -> list[Candidate]:
    """Fastest first under a 1 s latency bound, best quality first for high complexity,
    otherwise the balanced middle (the best model is kept for high complexity); seed 003's
    select_optimal_model."""
    tie = _tie_break(request)
    if request.max_latency_s is not None and request.max_latency_s < 1.0:
        return sorted(candidates, key=lambda c: (-c.speed, *tie(c)))
    by_quality = sorted(candidates, key=lambda c: (-c.quality, *tie(c)))
    if request.complexity == "high":
        return by_quality
    best = by_quality[0].quality if by_quality else 0.0
    return [c for c in by_quality if c.quality < best] + [
        c for c in by_quality if c.quality >= best
    ]


def rank_by_complexity_tier(
    request: RouteRequest, candidates: Sequence[Candidate]
) -> list[Candidate]:
    """By complexity: high -> the thinking model, medium -> the large instruct model,
    low -> the fast model (seed 000's _select_optimal_model)."""
    tie = _tie_break(request)
    if request.complexity == "low":
        return sorted(candidates, key=lambda c: (-c.speed, *tie(c)))
    by_quality = sorted(candidates, key=lambda c: (-c.quality, *tie(c)))
    thinking = [c for c in by_quality if c.thinking]
    plain = [c for c in by_quality if not c.thinking]
    return thinking + plain if request.complexity == "high" else plain + thinking


POLICIES: dict[str, Policy] = {
    "seed002-score": rank_by_speed_quality_score,
    "seed003-rules": rank_by_latency_and_complexity,
    "seed000-complexity": rank_by_complexity_tier,
}

# seed 002 QwenModelRouter.models; Q4_K_M as in seed 000's variants
SPEED_QUALITY_SCORE_CANDIDATES = (
    Candidate("qwen3-1.7b", "Q4_K_M", speed=10, quality=6),
    Candidate("qwen3-7b", "Q4_K_M", speed=7, quality=8),
    Candidate("qwen3-30b", "Q4_K_M", speed=3, quality=9),
    Candidate("qwen3-30b-thinking", "Q4_K_M", speed=1, quality=10),
)
LATENCY_AND_COMPLEXITY_CANDIDATES = (  # seed 003 select_optimal_model's return values
    Candidate("qwen3-1.7b", "4bit", speed=10, quality=6),
    Candidate("qwen3-7b", "8bit", speed=7, quality=8),
    Candidate("qwen3-14b", "8bit", speed=5, quality=8.5),
)
COMPLEXITY_TIER_CANDIDATES = (  # seed 000 _select_optimal_model's return values
    Candidate("qwen3-7b", "Q4_K_M", speed=7, quality=8),
    Candidate("qwen3-30b", "Q4_K_M", speed=3, quality=9),
    Candidate("qwen3-30b-thinking", "Q4_K_M", speed=1, quality=10),
)
DEFAULT_CANDIDATES = MappingProxyType(
    {
        "seed002-score": SPEED_QUALITY_SCORE_CANDIDATES,
        "seed003-rules": LATENCY_AND_COMPLEXITY_CANDIDATES,
        "seed000-complexity": COMPLEXITY_TIER_CANDIDATES,
    }
)


def route(
    request: RouteRequest,
    available_bytes: int,
    candidates: Sequence[Candidate] | None = None,
    policy: str = "seed002-score",
) -> RouteDecision:
    """The policy's most preferred candidate that fits ``available_bytes``."""
    rank_candidates = POLICIES.get(policy)
    if rank_candidates is None:
        raise ConfigError(f"unknown routing policy {policy!r}; use one of: {', '.join(POLICIES)}")
    pool = DEFAULT_CANDIDATES[policy] if candidates is None else candidates
    if not pool:
        raise ConfigError("the router needs at least one candidate model")
    context = request.context_tokens
    for rank, candidate in enumerate(rank_candidates(request, pool)):
        needed = candidate_memory_bytes(candidate.label, candidate.quantization, context)
        if needed <= available_bytes:
            reason = (
                "first choice"
                if rank == 0
                else f"choice {rank + 1}: the {rank} preferred before it do not fit"
            )
            return RouteDecision(candidate, needed, policy, rank, reason)
    smallest = min(pool, key=_tie_break(request))
    needed = candidate_memory_bytes(smallest.label, smallest.quantization, context)
    raise NoFeasibleModelError(
        f"no candidate fits in {available_bytes / GB:.2f} GB: the smallest, {smallest.name}, "
        f"needs {needed / GB:.2f} GB at a {context}-token context; free memory, shorten the "
        "context or add a smaller model"
    )
