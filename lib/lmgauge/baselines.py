"""Baselines: ``baselines/<profile>/<backend>.json``, versioned, with their environment.

Format history:
    1 -- first version: per case, its environment and per-metric values with provenance;
         ``run_medians`` (optional) holds one median per recorded run.
    2 -- ``machine``: the machine that recorded the measured runs (its identity digest,
         machine.machine_identity) and its latest calibration (machine.calibrate); null
         when none was known. Version 1 files load with no machine.

Every metric of a case carries its provenance: ``measured`` (raw values from a run on
that profile), ``derived`` (computed, e.g. a bandwidth roofline times a stated
efficiency; one value) or ``public`` (a published figure; one value, with its source).
A baseline is written only when asked (``--lmgauge-update-baselines``), atomically, and the
previous file is kept beside it as ``<backend>.json.prev``. Recording again in the same
environment adds a run (the last ``MAX_RUNS`` are kept): on a noisy machine the spread
between runs is larger than the spread within one, and a verdict must know it.

Measured runs hold for the machine that recorded them, in the state it was in: two VMs
of one profile and one CPU name read 1.5-2x apart. So a file is bound to one machine,
and ``add_runs`` keeps it so (every measured run in a file was recorded on
``machine.identity``; the file keeps the latest calibration), which is why the file
stores one machine rather than one per run. ``judgeable`` says whether
this machine, now, may be judged against a file.
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
from lmgauge.machine import Calibration, MachineIdentity, compare_calibration

FORMAT = "lmgauge-baseline"
MAX_RUNS = 5
VERSION = 2
READABLE_VERSIONS = (1, 2)
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
class BaselineMachine:
    """The machine a file's measured runs were recorded on."""

    identity: str  # MachineIdentity.digest
    calibration: Calibration | None  # of the latest recorded run; None if not measured

    def to_json(self) -> dict[str, Any]:
        calibration = self.calibration.to_dict() if self.calibration else None
        return {"identity": self.identity, "calibration": calibration}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaselineMachine:
        identity, calibration = data["identity"], data.get("calibration")
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"machine identity {identity!r}")
        return cls(identity, Calibration.from_dict(calibration) if calibration else None)


@dataclass(frozen=True)
class BaselineFile:
    profile: str
    backend: str
    cases: Mapping[str, CaseBaseline] = field(default_factory=dict)
    host: Mapping[str, Any] = field(default_factory=dict)
    machine: BaselineMachine | None = None  # None: not known (version 1, derived, public)
    format_version: int = VERSION  # as read; written as VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "profile": self.profile,
            "backend": self.backend,
            "host": dict(self.host),
            "machine": self.machine.to_json() if self.machine else None,
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
            "--lmgauge-update-baselines"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an lmgauge baseline (no format {FORMAT!r})")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"baseline {path} has format version {version!r}; this lmgauge reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade lmgauge or re-record it"
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
        machine = data.get("machine")
        return BaselineFile(
            data["profile"],
            data["backend"],
            cases,
            data.get("host", {}),
            BaselineMachine.from_json(machine) if machine else None,
            version,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"baseline {path} is malformed ({type(exc).__name__}: {exc}); "
            "restore it or re-record it with --lmgauge-update-baselines"
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
    identity: MachineIdentity | None = None,
    calibration: Calibration | None = None,
) -> BaselineFile:
    """``existing`` with one more recorded run per case in ``runs`` (case id ->
    environment, metric values), recorded on the machine ``identity`` calibrated as
    ``calibration``. A case whose environment changed starts over.

    A file bound to another machine, or to this one when it calibrates differently now,
    is refused (ConfigError), never replaced: the file is shared (committed under
    ``baselines/<profile>/``), and starting it afresh would silently throw away the
    other machine's runs, or record a busy or hot machine's runs as the baseline. Moving
    the file away is the deliberate way to record anew. A file bound to no machine
    (version 1, or recorded where no identity was readable) is bound to this one: its
    measured runs, from an unknown machine, are dropped, not pooled with this one's; its
    derived and public figures stay. With no identity (None or an empty digest) the run
    is recorded unbound, as before version 2, into an unbound file only.
    """
    machine = (
        BaselineMachine(identity.digest, calibration) if identity and identity.digest else None
    )
    bound = existing.machine if existing else None
    cases: dict[str, CaseBaseline] = dict(existing.cases) if existing else {}
    if bound is not None:
        _check_same_machine(bound, machine, identity)
        if machine is not None and machine.calibration is None:
            machine = bound  # keep the calibration there is
    elif machine is not None:
        cases = {
            case_id: CaseBaseline(case.environment, unmeasured)
            for case_id, case in cases.items()
            if (unmeasured := {m: b for m, b in case.metrics.items() if b.provenance != "measured"})
        }
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
            if old is not None and old.provenance != "measured":
                old = None  # a derived or public figure is not a recorded run
            earlier = () if old is None else (old.run_medians or (statistics.median(old.values),))
            medians = (*earlier, statistics.median(values))[-MAX_RUNS:]
            metrics[metric] = MetricBaseline(tuple(values), "measured", source, medians)
        cases[case_id] = CaseBaseline(dict(environment), metrics)
    return BaselineFile(profile, backend, cases, dict(host), machine)


def _short(digest: str) -> str:
    return f"{digest[:4]}…"


def _check_same_machine(
    bound: BaselineMachine, machine: BaselineMachine | None, identity: MachineIdentity | None
) -> None:
    move = "move the baseline away (or delete it) and record again with --lmgauge-update-baselines"
    if machine is None:
        why = identity.source if identity else "no identity was given"
        raise ConfigError(
            f"cannot add a run to a baseline bound to machine {_short(bound.identity)}: this "
            f"machine has no readable identity ({why})"
        )
    if machine.identity != bound.identity:
        raise ConfigError(
            f"the baseline was recorded on another machine ({_short(bound.identity)}, this "
            f"machine is {_short(machine.identity)}): lmgauge neither mixes nor replaces its "
            f"runs; to record one for this machine, {move}"
        )
    # A calibration that moved is no reason to refuse a run of the same machine: on a
    # shared VM it moves from minute to minute (51% between two recordings here), the run's
    # disturbed samples are already left out, and the spread of the recorded runs is what
    # the verdict's tolerance comes from. The file keeps the latest calibration.


def judgeable(
    baseline_file: BaselineFile, identity: MachineIdentity, calibration_now: Calibration
) -> str | None:
    """None when this machine recorded the file's measured runs and calibrates as it did
    then (or when the file holds no measured run: derived and public figures are
    reported, never judged, on any machine); else why its runs are reported, not judged."""
    measured = any(
        metric.provenance == "measured"
        for case in baseline_file.cases.values()
        for metric in case.metrics.values()
    )
    if not measured:
        return None
    rerecord = "re-record it here with --lmgauge-update-baselines"
    machine = baseline_file.machine
    if machine is None:
        if baseline_file.format_version == 1:
            return (
                "the baseline records no machine identity (format 1, recorded before "
                f"lmgauge bound baselines to machines): {rerecord}"
            )
        return (
            "the baseline records no machine identity (recorded where none was "
            f"readable): {rerecord}"
        )
    if not identity.digest:
        return (
            f"this machine has no readable identity ({identity.source}): nothing can be "
            "judged against a stored baseline"
        )
    if identity.digest != machine.identity:
        return (
            f"the baseline was recorded on another machine ({_short(machine.identity)}, "
            f"this machine is {_short(identity.digest)})"
        )
    if machine.calibration is None:
        return f"the baseline records no calibration of its machine: {rerecord}"
    return compare_calibration(machine.calibration, calibration_now)


def environment_differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The environment keys that differ, as "key: baseline -> current" lines."""
    return [
        f"{key}: {baseline.get(key)!r} -> {current.get(key)!r}"
        for key in ENVIRONMENT_KEYS
        if baseline.get(key) != current.get(key)
    ]
