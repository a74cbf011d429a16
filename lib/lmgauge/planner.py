"""Memory estimates, deployment plans and LRU residency.

An estimate is weights + KV cache + overhead:
- weights: parameters x whole-file bits per weight (catalog);
- KV cache: per-token bytes x context x parallel slots (Ollama and llama-server allocate
  ``num_ctx`` for every parallel slot);
- overhead: llama.cpp's compute buffer for one micro-batch, approximated as
  ``batch_tokens x 4 B x (vocab + 2 x active FFN width + 4 x hidden)`` (f32 logits and
  activations), plus a fixed 128 MiB for the engine's runtime. It errs high: on a 2-core
  Linux machine, llama-cpp-python 0.3.36 ran the synthetic Qwen3-0.6B Q4_K_M in 0.89 GB
  RSS, where this estimate gives 1.06 GB at a 2048-token context. A planner that errs
  high skips a case that might have fit; one that errs low crashes a run.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from lmgauge.catalog import CATALOG, GB, Catalog, GiB, Quantization, resolve_quant
from lmgauge.errors import ConfigError, ContextTooLargeError, DoesNotFitError

DEFAULT_BATCH_TOKENS = 512  # n_batch default of llama.cpp and Ollama
RUNTIME_OVERHEAD_BYTES = 128 * 1024**2
OLLAMA_DEFAULT_MAX_LOADED = 3  # OLLAMA_MAX_LOADED_MODELS=0 means 3 per GPU
# seed 000 ("Local Model Processing Optimization"): model_queue = deque(maxlen=4) and
# OLLAMA_MAX_LOADED_MODELS=4
SEED000_MAX_LOADED = 4


@dataclass(frozen=True)
class MemoryEstimate:
    label: str
    quantization: str
    context_tokens: int
    kv_cache_type: str
    parallel_slots: int
    weight_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.overhead_bytes

    def describe(self) -> str:
        return (
            f"{self.label} {self.quantization} at {self.context_tokens}-token context: "
            f"{self.total_bytes / GB:.2f} GB (weights {self.weight_bytes / GB:.2f}, "
            f"KV {self.kv_cache_bytes / GB:.2f}, overhead {self.overhead_bytes / GB:.2f}; "
            "derived estimate)"
        )


def estimate_memory(
    label: str,
    quantization: str | Quantization,
    context_tokens: int = 4096,
    *,
    kv_cache_type: str = "f16",
    parallel_slots: int = 1,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    catalog: Catalog = CATALOG,
) -> MemoryEstimate:
    """Memory to serve ``label`` at ``quantization`` with ``context_tokens`` per slot."""
    entry = catalog.model(label)
    quant = quantization if isinstance(quantization, Quantization) else resolve_quant(quantization)
    arch = entry.architecture
    if context_tokens < 1:
        raise ConfigError(f"context must be at least 1 token, got {context_tokens}")
    if context_tokens > arch.max_context:
        raise ContextTooLargeError(
            f"{entry.label} ({arch.name}) supports at most {arch.max_context} tokens of "
            f"context, {context_tokens} asked; use a context of {arch.max_context} or less"
        )
    if parallel_slots < 1 or batch_tokens < 1:
        raise ConfigError(
            "parallel_slots and batch_tokens must be at least 1, got "
            f"{parallel_slots} and {batch_tokens}"
        )
    kv_bytes = round(arch.kv_bytes_per_token(kv_cache_type) * context_tokens * parallel_slots)
    ffn_width = arch.intermediate_size * max(1, arch.n_active_experts)
    compute_bytes = batch_tokens * 4 * (arch.vocab_size + 2 * ffn_width + 4 * arch.hidden_size)
    return MemoryEstimate(
        label=entry.label,
        quantization=quant.name,
        context_tokens=context_tokens,
        kv_cache_type=kv_cache_type.lower(),
        parallel_slots=parallel_slots,
        weight_bytes=entry.weight_bytes(quant),
        kv_cache_bytes=kv_bytes,
        overhead_bytes=compute_bytes + RUNTIME_OVERHEAD_BYTES,
    )


# --- deployment plan (seed 000's _create_deployment_plan, made sound) --------------------


@dataclass(frozen=True)
class PlannedModel:
    name: str
    size_bytes: int
    priority: int = 5  # seed 000: 1 is the most important, 5 the default


@dataclass(frozen=True)
class Placement:
    model: PlannedModel
    mode: Literal["preload", "on_demand"]
    reason: str


@dataclass(frozen=True)
class DeploymentPlan:
    budget_bytes: int
    max_loaded: int | None
    placements: tuple[Placement, ...]

    @property
    def preloaded(self) -> tuple[PlannedModel, ...]:
        return tuple(p.model for p in self.placements if p.mode == "preload")

    @property
    def on_demand(self) -> tuple[PlannedModel, ...]:
        return tuple(p.model for p in self.placements if p.mode == "on_demand")

    @property
    def preloaded_bytes(self) -> int:
        return sum(m.size_bytes for m in self.preloaded)


def plan_deployment(
    models: Sequence[PlannedModel], budget_bytes: int, *, max_loaded: int | None = None
) -> DeploymentPlan:
    """Preload by priority (then larger first) while the budget and slot count allow.

    Greedy in seed 000's order. Because a model is skipped only when it does not fit,
    a more important model is never left on demand while a less important model at
    least as large is preloaded.
    """
    if budget_bytes < 0:
        raise ConfigError(f"memory budget must not be negative, got {budget_bytes}")
    if max_loaded is not None and max_loaded < 0:
        raise ConfigError(f"max_loaded must not be negative, got {max_loaded}")
    duplicates = sorted(n for n, k in Counter(m.name for m in models).items() if k > 1)
    if duplicates:
        raise ConfigError(f"models listed twice in the deployment: {', '.join(duplicates)}")
    allocated = 0
    loaded = 0
    placements = []
    for model in sorted(models, key=lambda m: (m.priority, -m.size_bytes, m.name)):
        if max_loaded is not None and loaded >= max_loaded:
            placements.append(
                Placement(
                    model, "on_demand", f"{max_loaded} models already preloaded (max loaded models)"
                )
            )
        elif allocated + model.size_bytes <= budget_bytes:
            allocated += model.size_bytes
            loaded += 1
            placements.append(Placement(model, "preload", "fits the budget"))
        else:
            free = budget_bytes - allocated
            placements.append(
                Placement(
                    model,
                    "on_demand",
                    f"needs {model.size_bytes / GB:.1f} GB, {free / GB:.1f} GB of the budget left",
                )
            )
    return DeploymentPlan(budget_bytes, max_loaded, tuple(placements))


# --- the seeds' memory layouts ----------------------------------------------------------


@dataclass(frozen=True)
class MemoryPreset:
    """A memory layout from a planning document. Sizes are GiB: Apple's "128 GB" is 128 GiB."""

    name: str
    machine_bytes: int
    model_budget_bytes: int  # what the deployment plan may preload
    pools: Mapping[str, int]
    max_loaded: int | None
    source: str

    def validate(self) -> None:
        if any(size < 0 for size in self.pools.values()):
            raise ConfigError(f"preset {self.name}: pool sizes must not be negative")
        pooled = sum(self.pools.values())
        if pooled > self.machine_bytes:
            raise ConfigError(
                f"preset {self.name}: pools add up to {pooled / GiB:.1f} GiB, "
                f"more than the machine's {self.machine_bytes / GiB:.1f} GiB"
            )
        if self.model_budget_bytes > self.machine_bytes:
            raise ConfigError(f"preset {self.name}: model budget exceeds the machine")

    def check_fits(self, host_memory_bytes: int) -> None:
        """Refuse a layout written for a bigger machine than the host."""
        if self.machine_bytes > host_memory_bytes:
            raise ConfigError(
                f"preset {self.name} is laid out for {self.machine_bytes / GiB:.0f} GiB, this "
                f"host has {host_memory_bytes / GiB:.1f} GiB; pick a preset or budget that fits"
            )


def preset_from_shares(
    name: str,
    machine_gib: float,
    available_gib: float,
    shares: Mapping[str, float],
    *,
    model_budget_gib: float,
    max_loaded: int | None,
    source: str,
) -> MemoryPreset:
    """A preset whose pools are shares of the available memory; shares sum to at most 100%."""
    total_share = sum(shares.values())
    if any(s < 0 for s in shares.values()) or total_share > 1.0 + 1e-9:
        raise ConfigError(
            f"preset {name}: shares must be non-negative and sum to at most 100%,"
            f" they sum to {total_share:.0%}"
        )
    if available_gib > machine_gib:
        raise ConfigError(
            f"preset {name}: {available_gib} GiB available on a {machine_gib} GiB machine"
        )
    pools = {k: round(available_gib * share * GiB) for k, share in shares.items()}
    pools["system_reserve"] = round((machine_gib - available_gib) * GiB)
    preset = MemoryPreset(
        name,
        round(machine_gib * GiB),
        round(model_budget_gib * GiB),
        MappingProxyType(pools),
        max_loaded,
        source,
    )
    preset.validate()
    return preset


def preset_from_sizes(
    name: str,
    machine_gib: float,
    sizes_gib: Mapping[str, float],
    *,
    model_budget_gib: float,
    max_loaded: int | None,
    source: str,
) -> MemoryPreset:
    pools = MappingProxyType({k: round(v * GiB) for k, v in sizes_gib.items()})
    preset = MemoryPreset(
        name, round(machine_gib * GiB), round(model_budget_gib * GiB), pools, max_loaded, source
    )
    preset.validate()
    return preset


PRESETS: Mapping[str, MemoryPreset] = MappingProxyType(
    {
        p.name: p
        for p in (
            # The deployment plan preloads into all 116 GB; the 60/25/10/5 split is of those 116 GB.
            preset_from_shares(
                "seed000",
                128,
                116,
                {
                    "model_weights": 0.60,
                    "kv_cache": 0.25,
                    "context_buffer": 0.10,
                    "working_memory": 0.05,
                },
                model_budget_gib=116,
                max_loaded=SEED000_MAX_LOADED,
                source='seed 000 ("Local Model Processing Optimization"): '
                "LMStudioMemoryOptimizer.memory_allocation; "
                "_create_deployment_plan available_memory = 116",
            ),
            preset_from_sizes(
                "seed001",
                128,
                {
                    "llm_models": 80,
                    "inference_cache": 20,
                    "processing_buffer": 16,
                    "system_reserve": 12,
                },
                model_budget_gib=80,
                max_loaded=3,
                source='seed 001 ("M3 Max Performance Optimization Strategies"): '
                "MEMORY_POOLS; export OLLAMA_MAX_LOADED_MODELS=3",
            ),
            preset_from_sizes(
                "seed003",
                128,
                {"models": 60, "system_reserve": 20, "processing_buffer": 48},
                model_budget_gib=60,
                max_loaded=3,
                source='seed 003 ("Qwen3 Model Selection Strategy for M3 Max Optimization"): '
                "Memory Configuration (60GB max for models, 20GB for macOS, 48GB buffer); "
                "Concurrent Multi-Model loads 3 models",
            ),
        )
    }
)


# --- LRU residency ----------------------------------------------------------------------


class Residency:
    """Which models stay loaded: at most ``max_loaded``, within ``budget_bytes``, LRU evicted."""

    def __init__(
        self, max_loaded: int = OLLAMA_DEFAULT_MAX_LOADED, budget_bytes: int | None = None
    ) -> None:
        if max_loaded < 1:
            raise ConfigError(f"max_loaded must be at least 1, got {max_loaded}")
        self.max_loaded = max_loaded
        self.budget_bytes = budget_bytes
        self._loaded: OrderedDict[str, int] = OrderedDict()  # least recently used first

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        return sum(self._loaded.values())

    def use(self, name: str, size_bytes: int) -> list[str]:
        """Mark ``name`` used (loading it if needed); return the models evicted, oldest first."""
        if self.budget_bytes is not None and size_bytes > self.budget_bytes:
            raise DoesNotFitError(
                f"{name} needs {size_bytes / GB:.2f} GB, more than the whole "
                f"budget of {self.budget_bytes / GB:.2f} GB"
            )
        self._loaded.pop(name, None)
        evicted = []
        while self._loaded and (len(self._loaded) >= self.max_loaded or self._over(size_bytes)):
            victim, _ = self._loaded.popitem(last=False)
            evicted.append(victim)
        self._loaded[name] = size_bytes
        return evicted

    def unload(self, names: Iterable[str]) -> None:
        for name in names:
            self._loaded.pop(name, None)

    def _over(self, incoming_bytes: int) -> bool:
        return (
            self.budget_bytes is not None and self.loaded_bytes + incoming_bytes > self.budget_bytes
        )
