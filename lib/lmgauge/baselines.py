"""Baselines: ``baselines/<profile>/<backend>.json``, versioned, with their environment.

Format history:
    1 -- first version: per case, its environment and per-metric values with provenance;
         ``run_medians`` (optional) holds one median per recorded run.

Every metric of a case carries its provenance: ``measured`` (raw values from a run on
that profile), ``derived`` (computed, e.g. a bandwidth roofline times a stated
efficiency; one value) or ``public`` (a published figure; one value, with its source).
A baseline is written only when asked (``--update-baselines``), atomically, and the
previous file is kept beside it as ``<backend>.json.prev``. Recording again in the same
environment adds a run (the last ``MAX_RUNS`` are kept): on a noisy machine the spread
between runs is larger than the spread within one, and a verdict must know it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from scipy import stats as scipy_stats

from lmgauge.errors import ConfigError
from lmgauge.files import write_json_atomic

FORMAT = "lmgauge-baseline"
MAX_RUNS = 5
VERSION = 1
Provenance = Literal["measured", "derived", "public"]
ENVIRONMENT_KEYS = (
    "model",
    "model_digest",
    "quantization",
    "context_tokens",
    "backend",
    "backend_version",
    "profile",
    "host_cpu",
)
"""What must match before two measurements may be compared."""


@dataclass(frozen=True)
class MetricBaseline:
    values: tuple[float, ...]  # the samples of the recorded runs, pooled
    provenance: Provenance
    source: str = ""  # how a derived value was computed, or where a public one was published
    run_medians: tuple[float, ...] = ()  # one per recorded run, oldest first

    @property
    def run_spread(self) -> float:
        """Relative spread of the run medians (max / min - 1); 0 with fewer than 2 runs."""
        if len(self.run_medians) < 2 or min(self.run_medians) <= 0:
            return 0.0
        return max(self.run_medians) / min(self.run_medians) - 1

    @property
    def run_noise(self) -> float:
        """How far (relative) the next run's median may fall from the recorded runs' by
        chance: the one-sided 95% prediction bound t(0.95, n-1) * sd * sqrt(1 + 1/n) with
        three runs or more; the spread with two; 0 with one. (A new run falls outside the
        range of three earlier ones about half the time: the range alone is too tight.)"""
        n = len(self.run_medians)
        if n < 3:
            return self.run_spread
        mean = statistics.fmean(self.run_medians)
        if mean <= 0:
            return 0.0
        sd = statistics.stdev(self.run_medians) / mean
        return float(scipy_stats.t.ppf(0.95, n - 1)) * sd * math.sqrt(1 + 1 / n)


@dataclass(frozen=True)
class CaseBaseline:
    environment: Mapping[str, Any]
    metrics: Mapping[str, MetricBaseline]


@dataclass(frozen=True)
class BaselineFile:
    profile: str
    backend: str
    cases: Mapping[str, CaseBaseline] = field(default_factory=dict)
    host: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "profile": self.profile,
            "backend": self.backend,
            "host": dict(self.host),
            "cases": {
                case_id: {
                    "environment": dict(case.environment),
                    "metrics": {m: asdict(b) for m, b in case.metrics.items()},
                }
                for case_id, case in sorted(self.cases.items())
            },
        }


def baseline_path(root: Path, profile: str, backend: str) -> Path:
    return root / profile / f"{backend}.json"


def load_baseline(path: Path) -> BaselineFile | None:
    """The baseline at ``path``; None if there is none. A corrupt file is an error naming it."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"baseline {path} cannot be read ({exc}); restore it from "
            f"{path.name}.prev or git, or delete it and run with "
            "--update-baselines"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an lmgauge baseline (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ConfigError(
            f"baseline {path} has format version {data.get('version')!r}; this "
            f"lmgauge reads version {VERSION}: upgrade lmgauge or re-record it"
        )
    try:
        cases = {
            case_id: CaseBaseline(
                environment=dict(case["environment"]),
                metrics={
                    name: MetricBaseline(
                        tuple(float(v) for v in metric["values"]),
                        metric["provenance"],
                        metric.get("source", ""),
                        tuple(float(v) for v in metric.get("run_medians", ())),
                    )
                    for name, metric in case["metrics"].items()
                },
            )
            for case_id, case in data["cases"].items()
        }
        for case_id, case in cases.items():
            for name, metric in case.metrics.items():
                if metric.provenance not in ("measured", "derived", "public"):
                    raise ValueError(f"{case_id} {name}: provenance {metric.provenance!r}")
        return BaselineFile(data["profile"], data["backend"], cases, data.get("host", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"baseline {path} is malformed ({type(exc).__name__}: {exc}); "
            "restore it or re-record it with --update-baselines"
        ) from exc


def save_baseline(path: Path, baseline: BaselineFile) -> None:
    """Write atomically (temp file + rename), keeping the previous file as ``.prev``."""
    write_json_atomic(path, baseline.to_json(), keep_previous=True)


def add_runs(
    existing: BaselineFile | None,
    profile: str,
    backend: str,
    runs: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Sequence[float]]]],
    *,
    source: str,
    host: Mapping[str, Any],
) -> BaselineFile:
    """``existing`` with one more recorded run per case in ``runs`` (case id ->
    environment, metric values). A case whose environment changed starts over."""
    cases: dict[str, CaseBaseline] = dict(existing.cases) if existing else {}
    for case_id, (environment, recorded) in runs.items():
        previous = cases.get(case_id)
        same = previous is not None and not environment_differences(
            previous.environment, environment
        )
        metrics = {}
        for metric, values in recorded.items():
            if not values:
                continue
            old = previous.metrics.get(metric) if previous is not None and same else None
            earlier = () if old is None else (old.run_medians or (statistics.median(old.values),))
            medians = (*earlier, statistics.median(values))[-MAX_RUNS:]
            metrics[metric] = MetricBaseline(tuple(values), "measured", source, medians)
        cases[case_id] = CaseBaseline(dict(environment), metrics)
    return BaselineFile(profile, backend, cases, dict(host))


def environment_differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The environment keys that differ, as "key: baseline -> current" lines."""
    return [
        f"{key}: {baseline.get(key)!r} -> {current.get(key)!r}"
        for key in ENVIRONMENT_KEYS
        if baseline.get(key) != current.get(key)
    ]
