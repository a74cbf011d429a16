"""The stored-baseline gate: this run's figures against the baseline file of (hardware
profile, backend), recorded earlier on this machine.

What it decides: whether the file may judge this machine now (baselines.judgeable: the
machine that recorded it, calibrating as it did then), the judgement of one metric
(judge.against_baseline), whether an inconclusive metric should draw more samples, and
how this run is recorded as one more baseline run (``--lmgauge-update-baselines``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmgauge import __version__
from lmgauge.baselines import (
    BaselineFile,
    CaseBaseline,
    MetricBaseline,
    add_runs,
    environment_differences,
    judgeable,
    load_baseline,
    save_baseline,
)
from lmgauge.errors import ConfigError
from lmgauge.judge import Judgement, against_baseline, decide, tolerance_for
from lmgauge.machine import Calibration, MachineIdentity, calibrate, machine_identity
from lmgauge.metrics import format_value, metric_values
from lmgauge.runner import Case, CaseRun


@dataclass
class StoredBaselines:
    path: Path  # baselines/<profile>/<backend>.json
    profile: str
    backend: str
    tolerance: float
    allow_unlike: bool = False  # compare with an unlike environment's baseline anyway
    recording: bool = False  # --lmgauge-update-baselines: this run becomes a baseline run
    _file: BaselineFile | None = None
    _loaded: bool = False
    _machine: tuple[MachineIdentity, Calibration] | None = None
    _not_judged: str | None = None
    _checked: bool = False

    def file(self) -> BaselineFile | None:
        if not self._loaded:
            self._file = load_baseline(self.path)
            self._loaded = True
        return self._file

    def machine(self) -> tuple[MachineIdentity, Calibration]:
        """This machine's identity and a calibration probe (about a second), taken once."""
        if self._machine is None:
            self._machine = (machine_identity(), calibrate())
        return self._machine

    def calibrate_before_loading(self) -> None:
        """Calibrate before the first model loads, where a baseline will be compared or
        recorded: an engine's threads still spinning after a request halve what the probe
        reads on a small machine."""
        if self._machine is None and (self.recording or self.file() is not None):
            self.machine()

    def not_judged(self) -> str | None:
        """Why the file may not judge this run (another machine, a machine that calibrates
        differently now), or None; decided once."""
        if not self._checked:
            self._checked = True
            baseline = self.file()
            if baseline is not None:
                identity, calibration = self.machine()
                self._not_judged = judgeable(baseline, identity, calibration)
        return self._not_judged

    def case(self, case: Case) -> CaseBaseline | None:
        baseline = self.file()
        return None if baseline is None else baseline.cases.get(case.id)

    def metric(self, case: Case, metric: str) -> MetricBaseline | None:
        stored = self.case(case)
        return None if stored is None else stored.metrics.get(metric)

    def needs_more_samples(self, case: Case, metric: str, values: list[float]) -> bool:
        """True while ``values`` against a measured baseline that may judge them is
        inconclusive: sequential sampling draws more then."""
        stored = self.metric(case, metric)
        if stored is None or stored.provenance != "measured" or self.not_judged():
            return False
        bound = tolerance_for(stored, self.tolerance)[0]
        return decide(metric, stored.values, values, tolerance=bound).outcome == "inconclusive"

    def judgement(
        self, case: Case, run: CaseRun, metric: str, values: list[float], failures: list[str]
    ) -> Judgement:
        """``values`` of ``metric`` against the stored baseline; reasons to fail the test go
        to ``failures``."""
        stored_case = self.case(case)
        stored = None if stored_case is None else stored_case.metrics.get(metric)
        if stored_case is None or stored is None:
            return Judgement()
        why = self.not_judged() if stored.provenance == "measured" else None
        if why:
            median = statistics.median(stored.values)
            ratio = statistics.median(values) / median if median else None
            return Judgement(
                baseline=f"{format_value(metric, median)} (measured elsewhere)",
                verdict=f"{ratio or float('nan'):.2f}x the stored baseline; reported, not "
                f"judged: {why}",
                outcome="not judged",
                baseline_value=median,
                baseline_provenance=stored.provenance,
                baseline_source=stored.source,
                baseline_values=stored.values,
                ratio=ratio,
            )
        found: list[str] = []
        judgement = against_baseline(
            metric,
            values,
            stored,
            environment_differences(stored_case.environment, run.environment),
            tolerance=self.tolerance,
            allow_unlike=self.allow_unlike,
            failures=found,
        )
        # While recording, this run becomes part of the baseline: its difference from the
        # earlier runs is the run-to-run noise being measured, not a regression.
        if self.recording and found:
            return replace(
                judgement,
                verdict=f"{judgement.verdict} (recording a baseline run: reported, not failed)",
                outcome="reported",
            )
        failures.extend(found)
        return judgement

    def record(self, runs: Iterable[CaseRun], host: Mapping[str, Any]) -> str | None:
        """Add this run's measured cases to the file (the previous file kept as .prev);
        returns what happened, for the run's messages, or None with nothing to record."""
        measured = {
            r.case.id: (r.environment, metric_values(r)) for r in runs if r.samples and not r.error
        }
        if not measured:
            return None
        existing = self.file()
        source = f"measured on {self.profile} by lmgauge {__version__}, {time.strftime('%F')}"
        identity, calibration = self.machine()
        try:
            baseline = add_runs(
                existing,
                self.profile,
                self.backend,
                measured,
                source=source,
                host=host,
                identity=identity,
                calibration=calibration,
            )
        except ConfigError as exc:
            return f"baseline NOT written: {exc}"
        save_baseline(self.path, baseline)
        kept = f" (previous kept as {self.path.name}.prev)" if existing else ""
        return f"baseline written: {self.path}{kept}"
