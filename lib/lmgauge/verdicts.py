"""Judging one metric of one case: baseline comparison, thresholds, the verdict table.

Provenance is part of every row: figures measured here, baseline numbers as the file
labels them (measured, derived, public), and thresholds scaled from the reference
machine are said to be scaled, with the bandwidths used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lmgauge import __version__
from lmgauge.baselines import (
    MAX_RUNS,
    BaselineFile,
    CaseBaseline,
    MetricBaseline,
    baseline_path,
    environment_differences,
    load_baseline,
    save_baseline,
)
from lmgauge.catalog import GB
from lmgauge.hardware import REFERENCE_PROFILES, fingerprint, probe_bandwidth
from lmgauge.measure import Sample
from lmgauge.runner import Case, CaseRun, Runner, Workload
from lmgauge.scenarios import METRIC
from lmgauge.stats import compare, error_rate
from lmgauge.thresholds import Threshold, load_thresholds

REFERENCE_PROFILE = "apple-m3-max-128gb"
SAMPLE_METRICS: dict[str, tuple[Callable[[Sample], float | None], bool]] = {
    # metric: (value of one sample, higher is better)
    "decode_tokens_per_s": (lambda s: s.decode_tokens_per_s, True),
    "prefill_tokens_per_s": (lambda s: s.prefill_tokens_per_s, True),
    "ttft_s": (lambda s: s.ttft_s, False),
    "e2e_s": (lambda s: s.e2e_s, False),
    "itl_s": (lambda s: statistics.median(s.itl_s) if s.itl_s else None, False),
}
RUN_METRICS = ("rss_bytes", "load_s", "error_rate_ratio")
SCENARIO_METRICS = tuple(METRIC.values())
THRESHOLD_METRIC = {
    **{metric: metric for metric in SCENARIO_METRICS},
    "decode_tokens_per_s": "decode_tokens_per_s",
    "ttft_s": "ttft_s",
    "e2e_s": "e2e_s",
    "rss_bytes": "peak_memory_bytes",
    "error_rate_ratio": "error_rate_ratio",
}
MEMORY_TOLERANCE = 0.10


@dataclass
class Row:
    case_id: str
    metric: str
    measured: str
    baseline: str
    verdict: str
    failed: bool


def _run_value(run: CaseRun, metric: str) -> float | None:
    if metric == "rss_bytes":
        return float(run.memory.rss_bytes) if run.memory and run.memory.rss_bytes else None
    if metric == "load_s":
        return run.load.load_s if run.load and not run.load.already_loaded else None
    return error_rate(run.samples)


def _values(run: CaseRun, metric: str) -> list[float]:
    get = SAMPLE_METRICS[metric][0]
    return [v for s in run.samples if s.valid and (v := get(s)) is not None]


def _format(metric: str, value: float) -> str:
    if metric.endswith("_bytes"):
        return f"{value / GB:.2f} GB"
    if metric.endswith("_ratio"):
        return f"{value:.1%}"
    if metric.endswith("_tokens_per_s"):
        return f"{value:.4g} t/s"
    if metric.endswith("_per_min"):
        return f"{value:.4g}/min"
    return f"{value:.4g} s"


@dataclass
class CheckSession:
    requested_backend: str
    base_url: str | None
    workload: Workload
    profile_override: str | None
    baselines: Path
    tolerance: float
    update_baselines: bool
    runner_factory: Callable[..., Runner]
    heavy_scenarios: bool = False
    rows: list[Row] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    _runner: Runner | None = None
    _baseline: BaselineFile | None = None
    _baseline_loaded: bool = False
    _thresholds: tuple[Threshold, ...] | None = None
    _bandwidth: float | None = None
    _profile: str | None = None

    @property
    def profile(self) -> str:
        """The hardware profile, from --lmgauge-profile or this host's fingerprint, taken
        only when a benchmark needs it (on macOS the fingerprint runs system_profiler)."""
        if self._profile is None:
            self._profile = self.profile_override or fingerprint().profile
        return self._profile

    @classmethod
    def from_options(
        cls,
        *,
        backend: str,
        base_url: str | None,
        workload: Workload,
        profile: str | None,
        baselines: Path,
        tolerance: float,
        update_baselines: bool,
        runner_factory: Callable[..., Runner],
        heavy_scenarios: bool = False,
    ) -> CheckSession:
        return cls(
            backend,
            base_url,
            workload,
            profile,
            baselines,
            tolerance,
            update_baselines,
            runner_factory,
            heavy_scenarios,
        )

    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self.runner_factory(
                self.requested_backend, self.workload, base_url=self.base_url
            )
            self.messages.append(
                f"backend: {self._runner.backend_name} ({self._runner.detection_reason})"
            )
        return self._runner

    @property
    def backend_name(self) -> str:
        return self.runner().backend_name

    def baseline_file(self) -> BaselineFile | None:
        if not self._baseline_loaded:
            path = baseline_path(self.baselines, self.profile, self.backend_name)
            self._baseline = load_baseline(path)
            self._baseline_loaded = True
        return self._baseline

    # --- the check ------------------------------------------------------------------------

    def check(self, case: Case, metric: str) -> None:
        """Measure ``case`` (once per session), judge ``metric``, fail on a regression or
        a hard threshold breach."""
        run = self.runner().run(case)
        if run.skipped:
            pytest.skip(run.skipped)
        if run.error:
            self._record(case, metric, "-", "-", run.error, failed=True)
            pytest.fail(f"{case.id}: {run.error}", pytrace=False)
        if metric in SAMPLE_METRICS:
            self._sample_more_if_inconclusive(case, metric)
            values = _values(run, metric)
            if not values:
                reasons = sorted({s.invalid_reason or "" for s in run.samples if not s.valid})
                message = f"{case.id}: no valid sample for {metric}: {'; '.join(reasons)}"
                self._record(case, metric, "-", "-", message, failed=True)
                pytest.fail(message, pytrace=False)
            value = statistics.median(values)
            measured = f"{_format(metric, value)} (median of {len(values)}, measured)"
        else:
            single = _run_value(run, metric)
            if single is None:
                pytest.skip(f"{metric} was not reported for {case.id}")
            value, values = single, [single]
            measured = f"{_format(metric, value)} (measured)"
        failures: list[str] = []
        baseline_text, verdict = self._against_baseline(case, run, metric, values, failures)
        notes = self._thresholds_for(case, metric, value, failures)
        verdict = "; ".join([verdict, *notes])
        self._record(case, metric, measured, baseline_text, verdict, failed=bool(failures))
        if failures:
            pytest.fail(f"{case.id} {metric}: " + "\n".join(failures), pytrace=False)

    def check_throughput(self, case: Case, concurrency: int) -> None:
        """Aggregate tokens/s at ``concurrency`` requests in flight, through the batcher."""
        run = self.runner().throughput(case, concurrency)
        if run.skipped:
            pytest.skip(run.skipped)
        if run.error:
            pytest.fail(f"{case.id}: {run.error}", pytrace=False)
        tokens_per_s, samples = run.throughput[concurrency]
        metric = f"throughput_c{concurrency}_tokens_per_s"
        failed = [s for s in samples if not s.ok]
        measured = f"{_format(metric, tokens_per_s)} (measured, {len(samples)} requests)"
        failures = []
        if failed:
            failures.append(f"{len(failed)} of {len(samples)} requests failed: {failed[0].error}")
        stored = self._stored_metric(case, metric)
        if stored is None:
            baseline, verdict = "none", "no baseline for this profile"
        else:
            ratio = tokens_per_s / stored.values[0]
            baseline = f"{_format(metric, stored.values[0])} ({stored.provenance})"
            verdict = f"{ratio:.2f}x the baseline (single value: reported)"
        self._record(case, metric, measured, baseline, verdict, failed=bool(failures))
        if failures:
            pytest.fail(f"{case.id} {metric}: " + "\n".join(failures), pytrace=False)

    def check_scenario(self, case: Case, scenario: str) -> None:
        """One of seed 003's scenario workloads, against its target as a threshold."""
        if case.heavy and not self.heavy_scenarios:
            pytest.skip(
                "scenario workloads on a multi-billion-parameter embedded model take minutes "
                "on a small machine; add --lmgauge-scenarios to run them"
            )
        run = self.runner().scenario(case, scenario)
        if run.skipped:
            pytest.skip(run.skipped)
        if run.error:
            pytest.fail(f"{case.id}: {run.error}", pytrace=False)
        result = run.scenarios[scenario]
        if result.skipped:
            pytest.skip(f"{scenario}: {result.skipped}")
        metric = result.metric
        failures = []
        if result.errors:
            failures.append(f"{len(result.errors)} request(s) failed: {result.errors[0]}")
        if result.value is None:
            self._record(case, metric, "-", "-", "; ".join(failures), failed=True)
            pytest.fail(f"{case.id} {metric}: " + "\n".join(failures), pytrace=False)
        measured = f"{_format(metric, result.value)} (measured)"
        stored = self._stored_metric(case, metric)
        baseline, verdict = "none", "no baseline for this profile"
        if stored is not None:
            baseline = f"{_format(metric, stored.values[0])} ({stored.provenance})"
            ratio = result.value / stored.values[0]
            verdict = f"{ratio:.2f}x the baseline (single value: reported)"
        notes = self._thresholds_for(case, metric, result.value, failures)
        self._record(
            case, metric, measured, baseline, "; ".join([verdict, *notes]), failed=bool(failures)
        )
        if failures:
            pytest.fail(f"{case.id} {metric}: " + "\n".join(failures), pytrace=False)

    def _sample_more_if_inconclusive(self, case: Case, metric: str) -> None:
        runner = self.runner()
        run = runner.run(case)
        while len(run.samples) < self.workload.max_samples:
            stored = self._stored_metric(case, metric)
            if stored is None or stored.provenance != "measured":
                return
            result = compare(
                stored.values,
                _values(run, metric),
                higher_is_better=SAMPLE_METRICS[metric][1],
                tolerance=self._tolerance(stored)[0],
            )
            if result.verdict != "inconclusive":
                return
            runner.more_samples(case, min(5, self.workload.max_samples - len(run.samples)))

    def _stored_case(self, case: Case) -> CaseBaseline | None:
        baseline = self.baseline_file()
        return None if baseline is None else baseline.cases.get(case.id)

    def _stored_metric(self, case: Case, metric: str) -> MetricBaseline | None:
        stored = self._stored_case(case)
        return None if stored is None else stored.metrics.get(metric)

    def _against_baseline(
        self, case: Case, run: CaseRun, metric: str, values: list[float], failures: list[str]
    ) -> tuple[str, str]:
        stored_case = self._stored_case(case)
        stored = self._stored_metric(case, metric)
        if stored_case is None or stored is None:
            return "none", "no baseline for this profile (record one with --update-baselines)"
        base_text = f"{_format(metric, statistics.median(stored.values))} ({stored.provenance})"
        if stored.provenance != "measured":  # nothing to match: reported, never judged
            ratio = statistics.median(values) / statistics.median(stored.values)
            return base_text, (
                f"{ratio:.2f}x the {stored.provenance} baseline "
                f"({stored.source}); reported, not judged"
            )
        unlike = [
            d
            for d in environment_differences(stored_case.environment, run.environment)
            if not d.startswith("backend_version")
        ]
        if unlike:
            failures.append(
                "refusing to compare with a baseline from an unlike environment: "
                f"{'; '.join(unlike)}. Re-record it with --update-baselines"
            )
            return base_text, "refused: unlike environment"
        release = [
            d
            for d in environment_differences(stored_case.environment, run.environment)
            if d.startswith("backend_version")
        ]
        prefix = f"across releases ({release[0]}): " if release else ""
        if metric in SAMPLE_METRICS:
            tolerance, why = self._tolerance(stored)
            result = compare(
                stored.values,
                values,
                higher_is_better=SAMPLE_METRICS[metric][1],
                tolerance=tolerance,
            )
            if result.verdict == "regression":
                failures.append(f"regression against the baseline: {result.describe()}{why}")
            return base_text, prefix + result.describe() + why
        ratio = values[0] / stored.values[0] if stored.values[0] else float("nan")
        if metric == "rss_bytes" and ratio > 1 + max(self.tolerance, MEMORY_TOLERANCE):
            failures.append(f"memory regression: {ratio:.2f}x the baseline")
            return base_text, f"{prefix}{ratio:.2f}x higher (beyond {MEMORY_TOLERANCE:.0%})"
        return base_text, f"{prefix}{ratio:.2f}x the baseline (single value: reported)"

    def _tolerance(self, stored: MetricBaseline) -> tuple[float, str]:
        """The smallest change that counts: the configured tolerance, or the spread between
        the baseline's recorded runs where that is larger (run-to-run noise is no change)."""
        runs = len(stored.run_medians)
        if stored.run_noise > self.tolerance:
            how = "95% prediction bound of" if runs >= 3 else "the spread between"
            return stored.run_noise, (
                f" [tolerance {stored.run_noise:.0%}: {how} the {runs} baseline runs]"
            )
        if runs < 2:
            return self.tolerance, (
                " [1 baseline run: run-to-run noise unknown; record more runs with "
                "--update-baselines]"
            )
        return self.tolerance, ""

    def _thresholds_for(
        self, case: Case, metric: str, value: float, failures: list[str]
    ) -> list[str]:
        target = THRESHOLD_METRIC.get(metric)
        if target is None:
            return []
        if self._thresholds is None:
            self._thresholds = load_thresholds()
        notes = []
        for threshold in self._thresholds:
            applies = (
                threshold.metric == target
                and (threshold.model in (None, case.label))
                and case.label not in threshold.except_models
            )
            if not applies:
                continue
            limit, how = threshold.value, ""
            if threshold.profile != self.profile:
                if target == "error_rate_ratio":
                    how = " (applies on every profile)"
                elif target == "decode_tokens_per_s" and threshold.profile in REFERENCE_PROFILES:
                    reference = REFERENCE_PROFILES[threshold.profile].bandwidth_bytes_per_s
                    limit = threshold.value * self.bandwidth() / reference
                    how = (
                        f" (scaled from {threshold.value:g} on {threshold.profile} by this "
                        f"host's measured bandwidth {self.bandwidth() / 1e9:.0f} GB/s / "
                        f"{reference / 1e9:.0f} GB/s public)"
                    )
                else:
                    continue  # written for another machine and not scalable
            met = value >= limit if threshold.direction == "min" else value <= limit
            if met:
                continue
            text = (
                f"{threshold.severity} {threshold.id}: {_format(metric, value)} "
                f"{'<' if threshold.direction == 'min' else '>'} {_format(metric, limit)}"
                f"{how} [{threshold.source}: {threshold.source_key}]"
            )
            if threshold.fails_test:
                failures.append("threshold breach: " + text)
            notes.append(text)
        return notes

    def bandwidth(self) -> float:
        if self._bandwidth is None:
            self._bandwidth = probe_bandwidth().read_bytes_per_s
        return self._bandwidth

    def _record(
        self, case: Case, metric: str, measured: str, baseline: str, verdict: str, *, failed: bool
    ) -> None:
        self.rows.append(Row(case.id, metric, measured, baseline, verdict, failed))

    # --- the end of the session -----------------------------------------------------------

    def table_lines(self) -> list[str]:
        lines = [*self.messages, f"profile: {self.profile}; tolerance {self.tolerance:.0%}"]
        for row in self.rows:
            mark = "FAIL" if row.failed else "ok  "
            lines.append(
                f"{mark} {row.case_id} {row.metric}: {row.measured}; baseline "
                f"{row.baseline}; {row.verdict}"
            )
        return lines

    def write_baselines(self) -> None:
        if not self.update_baselines or self._runner is None:
            return
        runs = [r for r in self._runner.runs() if r.samples and not r.error]
        if not runs:
            return
        path = baseline_path(self.baselines, self.profile, self.backend_name)
        existing = self.baseline_file()
        cases: dict[str, CaseBaseline] = dict(existing.cases) if existing else {}
        source = f"measured on {self.profile} by lmgauge {__version__}, {time.strftime('%F')}"
        for run in runs:
            previous = cases.get(run.case.id)
            same = previous is not None and not environment_differences(
                previous.environment, run.environment
            )
            recorded = {m: _values(run, m) for m in SAMPLE_METRICS}
            recorded.update({m: [v] for m in RUN_METRICS if (v := _run_value(run, m)) is not None})
            recorded.update(
                {r.metric: [r.value] for r in run.scenarios.values() if r.value is not None}
            )
            recorded.update(
                {
                    f"throughput_c{level}_tokens_per_s": [tokens_per_s]
                    for level, (tokens_per_s, _) in run.throughput.items()
                }
            )
            metrics = {}
            for metric, values in recorded.items():
                if not values:
                    continue
                old = previous.metrics.get(metric) if previous is not None and same else None
                earlier = (
                    () if old is None else (old.run_medians or (statistics.median(old.values),))
                )
                medians = (*earlier, statistics.median(values))[-MAX_RUNS:]
                metrics[metric] = MetricBaseline(tuple(values), "measured", source, medians)
            cases[run.case.id] = CaseBaseline(run.environment, metrics)
        host: dict[str, Any] = dict(vars(fingerprint()))
        save_baseline(path, BaselineFile(self.profile, self.backend_name, cases, host))
        kept = f" (previous kept as {path.name}.prev)" if existing else ""
        self.messages.append(f"baseline written: {path}{kept}")

    def finish(self) -> None:
        if self._runner is not None:
            self._runner.close()
