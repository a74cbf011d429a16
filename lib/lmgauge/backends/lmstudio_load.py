"""What LM Studio's REST load takes, and what it applied: the load body from lmgauge's
LoadSettings, and the checks of LM Studio's answer (the echoed ``load_config``, the variant
it loaded), kept apart from the HTTP client in lmstudio.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmgauge.backends.base import LoadResult, LoadSettings
from lmgauge.errors import ConfigError

# The fields of POST /api/v1/models/load besides model and echo_load_config (lmstudio-ai/docs
# @c6854fb 1_developer/2_rest/load.md L13-43); a [load] config key of the same name reaches
# LoadSettings.extra (settings_registry.LMSTUDIO). Nothing else goes into the body.
REST_LOAD_FIELDS = (
    "context_length",
    "eval_batch_size",
    "flash_attention",
    "num_experts",
    "offload_kv_cache_to_gpu",
)
# LoadSettings field -> (field of the REST load, LM Studio's load setting as lmstudio-js
# names it in its LLMLoadModelConfig). Only a value the user set is sent: LM Studio's own
# defaults (evalBatchSize 2048, numParallelSessions 4: lmstudio-js@6ec11db
# packages/lms-kv-config/src/schema.ts L336-354) are not lmgauge's LoadSettings defaults. A
# setting the REST API cannot express is refused when asked for, never silently dropped.
LOAD_SETTING_NAMES: dict[str, tuple[str | None, str]] = {
    "context_tokens": ("context_length", "contextLength"),
    "batch_tokens": ("eval_batch_size", "evalBatchSize"),
    "flash_attention": ("flash_attention", "flashAttention"),
    "threads": (None, "llama.cpuThreadPoolSize"),
    "use_mmap": (None, "tryMmap"),
    "kv_cache_type": (None, "llamaKCacheQuantizationType/llamaVCacheQuantizationType"),
    "parallel_slots": (None, "numParallelSessions (`lms load --parallel`)"),
}
CLI_LOAD_FLAGS = {"context_tokens": "--context-length", "parallel_slots": "--parallel"}
_DEFAULTS = LoadSettings()


@dataclass(frozen=True)
class LMStudioLoadResult(LoadResult):
    """A load, with what LM Studio says it loaded (recorded in the report with the load)."""

    load_config: dict[str, Any] = field(default_factory=dict)  # echoed, or the instance's
    variant: str | None = None  # /api/v1/models selected_variant, e.g. "qwen/qwen3-8b@q8_0"
    quantization: str | None = None  # its quantization.name, e.g. "Q8_0"
    parallel: int | None = None  # the instance's parallel predictions (REST cannot set it)


def asked_settings(settings: LoadSettings, can_set: Mapping[str, str], how: str) -> dict[str, Any]:
    """{name in ``can_set``: value} of the settings set (the context always is: the case's);
    ConfigError for one asked but unsettable."""
    chosen: dict[str, Any] = {}
    for name, (_, lmstudio_name) in LOAD_SETTING_NAMES.items():
        value = getattr(settings, name)
        asked = value != getattr(_DEFAULTS, name) or name == "context_tokens"
        if name in can_set and value is not None and asked:
            chosen[can_set[name]] = value
        elif name not in can_set and asked:
            raise ConfigError(
                f"{how} cannot set {name}={value!r} (LM Studio's {lmstudio_name}): leave it at "
                "its default, or set it in LM Studio's per-model load settings"
            )
    return chosen


def rest_load_body(settings: LoadSettings) -> dict[str, Any]:
    """The REST load fields for ``settings``: its fields set, and ``extra``'s REST fields."""
    rest_names = {f: rest for f, (rest, _) in LOAD_SETTING_NAMES.items() if rest}
    wanted = asked_settings(settings, rest_names, "LM Studio's REST load API")
    other = sorted(set(settings.extra) - set(REST_LOAD_FIELDS))
    if other:
        raise ConfigError(
            f"LM Studio's REST load API has no field {', '.join(other)} (it takes "
            f"{', '.join(REST_LOAD_FIELDS)}): set it in LM Studio's per-model load settings"
        )
    return {**wanted, **settings.extra}


def not_applied(wanted: Mapping[str, Any], applied: Mapping[str, Any]) -> list[str]:
    """Each asked value LM Studio did not apply (a field it applied not at all is absent)."""
    wrong = []
    for key, value in wanted.items():
        if key not in applied:
            wrong.append(f"{key}={value!r} (not applied)")
        elif applied[key] != value:
            wrong.append(f"{key}={value!r} (applied: {applied[key]!r})")
    return wrong


def variant_of(model: str) -> str | None:
    """The quantization variant a model key asks for: ``qwen/qwen3-8b@q4_k_m`` -> q4_k_m."""
    return model.rsplit("@", 1)[1].lower() if "@" in model else None


def is_entry_of(entry: Mapping[str, Any], model: str) -> bool:
    """Whether an /api/v1/models entry is ``model``, by key, variant, or key@variant."""
    variants = entry.get("variants") or []
    names = {str(entry.get("key")), *(str(v) for v in variants if isinstance(v, str))}
    return model in names or model.rsplit("@", 1)[0] == entry.get("key")


def wrong_variant(model: str, entry: Mapping[str, Any]) -> str | None:
    """What LM Studio serves instead of ``model``'s variant, or None where it serves it."""
    wanted = variant_of(model)
    if wanted is None:
        return None
    selected = entry.get("selected_variant")
    quant = (entry.get("quantization") or {}).get("name")
    if isinstance(selected, str) and selected.lower() != model.lower():
        return f"the variant {selected!r} (quantization {quant!r})"
    if isinstance(quant, str) and quant.lower() != wanted:
        return f"quantization {quant!r}"
    return None
