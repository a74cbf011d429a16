"""Thresholds and targets as data with provenance (baselines/thresholds.toml), evaluated.

Each ``[[threshold]]`` names a metric, a bound, a severity and the seed key it came from.
``limit`` and ``critical`` breaches fail a test (:attr:`Threshold.fails_test`); ``warning``,
``trigger``, ``target`` and ``expectation`` are reported only. A boundary value passes
(``min``: measured >= value; ``max``: measured <= value); a NaN measurement never passes.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from lmgauge.errors import ConfigError

REFERENCE_PROFILE = "apple-m3-max-128gb"
"""The machine every seed threshold was written for (M3 Max 40-core GPU, 128 GB)."""

METRICS: Mapping[str, str] = {
    "decode_tokens_per_s": "generated tokens per second of decode, excluding prefill",
    "prefill_tokens_per_s": "prompt tokens per second of prefill",
    "ttft_s": "time to first token of one request, seconds",
    "e2e_s": "response time of one request, from send to last byte, seconds",
    "peak_memory_bytes": "peak memory of the serving process(es) during a run, bytes",
    "model_size_bytes": "size of the model's weights (GGUF or MLX files), bytes",
    "memory_utilization_ratio": "system-wide memory in use / physical memory, 0..1",
    "queue_length": "requests waiting, not yet being served, count",
    "error_rate_ratio": "failed requests / all requests, 0..1",
    "cache_hit_ratio": "cache hits / lookups (prompt or response cache), 0..1",
    "e2e_cv_ratio": "coefficient of variation (stdev / mean) of e2e_s, ratio",
    "concurrent_requests": "requests in flight at once, count",
    "classification_docs_per_min": "documents classified per minute",
    "embedding_chunks_per_min": "chunks embedded per minute",
    "extraction_docs_per_min": "documents through structured extraction per minute",
    "rag_response_s": "time to a complete RAG answer, seconds",
    "model_switch_s": "time to switch the served model (unload + load + ready), seconds",
    "docs_per_s": "documents through the whole pipeline per second",
    "request_timeout_s": "client timeout of one request; checked against its elapsed s",
}
"""Every metric a threshold may name, with its unit (the unit is also the name's suffix)."""

Direction = Literal["min", "max"]
# In report order: the failing severities first.
Severity = Literal["limit", "critical", "warning", "trigger", "target", "expectation"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
SEVERITIES: tuple[str, ...] = get_args(Severity)
FAILING_SEVERITIES = frozenset({"limit", "critical"})

_REQUIRED = ("id", "profile", "metric", "direction", "value", "severity", "source", "source_key")
_OPTIONAL = ("model", "note", "except_models")
_SEVERITY_ORDER = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Threshold:
    """One bound on one metric, for one profile and optionally one model."""

    id: str
    metric: str
    direction: Direction
    value: float
    severity: Severity
    profile: str
    source: str
    source_key: str
    model: str | None = None
    note: str = ""
    except_models: tuple[str, ...] = ()  # a model-less entry that does not apply to these

    @property
    def fails_test(self) -> bool:
        """True where a breach fails a test (severity ``limit`` or ``critical``)."""
        return self.severity in FAILING_SEVERITIES

    def check(self, value: float) -> bool:
        """True if ``value`` satisfies the bound; equality passes, NaN never does."""
        if self.direction == "min":
            return value >= self.value
        return value <= self.value


@dataclass(frozen=True)
class Breach:
    """A measurement that does not satisfy a threshold."""

    threshold: Threshold
    measured: float

    @property
    def fails_test(self) -> bool:
        return self.threshold.fails_test

    @property
    def message(self) -> str:
        t = self.threshold
        op = "<" if t.direction == "min" else ">"
        who = f"{t.model} " if t.model else ""
        return (
            f"{who}{t.metric} {self.measured:g} {op} {t.value:g} "
            f"({t.severity}, {t.source}: {t.source_key})"
        )


def default_path() -> Path:
    """``./baselines/thresholds.toml`` if it exists, else the source tree's copy.

    The source tree's copy is ``lib/lmgauge/../../baselines/thresholds.toml``; it only
    exists in a checkout or an editable install. Pass an explicit path otherwise.
    """
    cwd_copy = Path.cwd() / "baselines" / "thresholds.toml"
    if cwd_copy.is_file():
        return cwd_copy
    return Path(__file__).resolve().parents[2] / "baselines" / "thresholds.toml"


def load_thresholds(path: Path | None = None) -> tuple[Threshold, ...]:
    """Load and validate a thresholds file; raise ConfigError naming file, entry and fix."""
    file = path if path is not None else default_path()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{file}: cannot read the thresholds file ({exc}); pass the path of a readable "
            "baselines/thresholds.toml"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}; fix the syntax") from exc
    extra = sorted(set(data) - {"threshold"})
    if extra:
        raise ConfigError(
            f"{file}: unknown top-level key(s) {extra}; only [[threshold]] tables are allowed"
        )
    entries = data.get("threshold", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: 'threshold' must be an array of tables ([[threshold]])")
    result: list[Threshold] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        threshold = _parse_entry(file, index, entry)
        if threshold.id in seen:
            raise ConfigError(
                f"{file}: [[threshold]] #{index} id {threshold.id!r}: duplicate id; "
                "give every entry a unique id"
            )
        seen.add(threshold.id)
        result.append(threshold)
    return tuple(result)


def _parse_entry(file: Path, index: int, entry: object) -> Threshold:
    where = f"{file}: [[threshold]] #{index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    ident = entry.get("id")
    if isinstance(ident, str) and ident.strip():
        where = f"{where} id {ident!r}"

    def fail(problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{where}: {problem}; {fix}")

    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise fail(f"unknown key(s) {unknown}", f"allowed keys: {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise fail(f"missing key(s) {missing}", "add them")
    texts: dict[str, str] = {}
    for key in (*_REQUIRED, *_OPTIONAL):
        if key in ("value", "except_models") or key not in entry:
            continue
        text = entry[key]
        if not isinstance(text, str) or (key != "note" and not text.strip()):
            raise fail(f"{key} must be a non-empty string, got {text!r}", f"quote the {key}")
        texts[key] = text
    if any(c.isspace() for c in texts["id"]):
        raise fail("id contains whitespace", "use dots and dashes, e.g. 'seed002.qwen3-7b.x'")
    metric = texts["metric"]
    if metric not in METRICS:
        raise fail(f"unknown metric {metric!r}", f"use one of {sorted(METRICS)}")
    direction = texts["direction"]
    if direction not in DIRECTIONS:
        raise fail(f"direction {direction!r}", "use 'min' (>=) or 'max' (<=)")
    severity = texts["severity"]
    if severity not in SEVERITIES:
        raise fail(f"severity {severity!r}", f"use one of {list(SEVERITIES)}")
    raw = entry["value"]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise fail(f"value {raw!r} is not a number", "write a bare number, e.g. value = 50")
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise fail(f"value {raw!r} out of range", "use a finite number >= 0 in the base unit")
    if metric.endswith("_ratio") and value > 1:
        raise fail(f"value {raw!r} > 1 for a ratio", "write percent as a ratio: 95% -> 0.95")
    excepted = entry.get("except_models", [])
    if not isinstance(excepted, list) or not all(isinstance(m, str) for m in excepted):
        raise fail("except_models must be a list of model labels", 'e.g. ["qwen3-30b-thinking"]')
    if excepted and "model" in texts:
        raise fail("except_models on an entry for one model", "drop one of the two keys")
    return Threshold(
        id=texts["id"],
        metric=metric,
        direction=cast(Direction, direction),  # checked against DIRECTIONS above
        value=value,
        severity=cast(Severity, severity),  # checked against SEVERITIES above
        profile=texts["profile"],
        source=texts["source"],
        source_key=texts["source_key"],
        model=texts.get("model"),
        note=texts.get("note", ""),
        except_models=tuple(excepted),
    )


def select(
    thresholds: Iterable[Threshold],
    *,
    profile: str,
    model: str | None = None,
    metric: str | None = None,
) -> tuple[Threshold, ...]:
    """The entries for ``profile``; with ``model``, that model's plus the model-less ones.

    ``model=None`` and ``metric=None`` do not filter (every model's entries are returned).
    """
    return tuple(
        t
        for t in thresholds
        if t.profile == profile
        and (model is None or t.model is None or t.model == model)
        and not (model is not None and model in t.except_models)
        and (metric is None or t.metric == metric)
    )


def evaluate(
    thresholds: Iterable[Threshold],
    measurements: Mapping[str, float],
    *,
    profile: str,
    model: str | None,
) -> list[Breach]:
    """The breaches of ``measurements`` (keyed by metric), failing ones first.

    With ``model=None`` only the model-less thresholds apply. A metric absent from
    ``measurements`` is not a breach; an unknown metric name raises ConfigError.
    """
    unknown = sorted(set(measurements) - set(METRICS))
    if unknown:
        raise ConfigError(
            f"unknown metric(s) {unknown} in measurements; use names from "
            "lmgauge.thresholds.METRICS"
        )
    breaches = [
        Breach(t, float(measurements[t.metric]))
        for t in select(thresholds, profile=profile, model=model)
        if (model is not None or t.model is None)
        and t.metric in measurements
        and not t.check(float(measurements[t.metric]))
    ]
    rank = _SEVERITY_ORDER
    return sorted(breaches, key=lambda b: (rank[b.threshold.severity], b.threshold.id))
