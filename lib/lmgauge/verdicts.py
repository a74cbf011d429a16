"""The session of a pytest run: it measures each case once (runner.py), judges each metric
against the stored baseline (stored_gate.py) and the planning documents' thresholds
(judge.py), records one row per metric in the report and the table printed at the end, and
fails a test on a regression or a breach.

Provenance is part of every row: figures measured here, baseline numbers as the file
labels them (measured, derived, public), and thresholds scaled from the reference
machine are said to be scaled, with the bandwidths used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from lmgauge.backends import DEFAULT_URLS
from lmgauge.baselines import (
    MetricBaseline,
    baseline_path,
)
from lmgauge.config import ServerConfig, load_settings, request_options
from lmgauge.hardware import (
    HostFingerprint,
    fingerprint,
    probe_bandwidth,
)
from lmgauge.judge import (
    Judgement,
    case_roofline,
    single_value,
    threshold_notes,
)
from lmgauge.metrics import (
    SAMPLE_METRICS,
    format_value,
    run_value,
    sample_values,
    throughput_metric,
)
from lmgauge.report import ReportWriter, Row
from lmgauge.runner import Case, CaseRun, Runner, Workload
from lmgauge.server_env import check_ollama_environment
from lmgauge.stored_gate import StoredBaselines
from lmgauge.thresholds import Threshold, load_thresholds

REFERENCE_PROFILE = "apple-m3-max-128gb"


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
    allow_unlike: bool = False  # compare with a baseline from an unlike environment anyway
    report_dir: Path | None = None
    server_config: ServerConfig | None = None
    run_settings: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda _message: None  # a line on the terminal
    rows: list[Row] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    report: ReportWriter | None = None
    _runner: Runner | None = None
    _stored: StoredBaselines | None = None
    _thresholds: tuple[Threshold, ...] | None = None
    _bandwidth: float | None = None
    _profile: str | None = None
    _host: HostFingerprint | None = None
    _config_mismatch: str | None = None
    _extra_sampling_s: dict[Case, float] = field(default_factory=dict)
    _not_judged_said: bool = False

    @property
    def profile(self) -> str:
        """The hardware profile, from --lmgauge-profile or this host's fingerprint, taken
        only when a benchmark needs it (on macOS the fingerprint runs system_profiler)."""
        if self._profile is None:
            self._profile = self.profile_override or self.host().profile
        return self._profile

    def host(self) -> HostFingerprint:
        if self._host is None:
            self._host = fingerprint()
        return self._host

    def runner(self) -> Runner:
        if self._runner is None:
            config = self.server_config
            self._runner = self.runner_factory(
                self.requested_backend,
                self.workload,
                base_url=self.base_url,
                progress=self.progress,
                on_update=self._on_update,
                load_settings=(
                    None
                    if config is None
                    else lambda case: load_settings(config, case.context_tokens)
                ),
                request_options=None if config is None else request_options(config),
            )
            self.messages.append(
                f"backend: {self._runner.backend_name} ({self._runner.detection_reason})"
            )
            if config is not None:
                self.messages.append(
                    f"config under test: {config.path} (sha256 {config.digest[:12]})"
                )
                if self.backend_name == "ollama":
                    url = self.base_url or DEFAULT_URLS["ollama"]
                    self._config_mismatch = check_ollama_environment(config, url)
        return self._runner

    @property
    def backend_name(self) -> str:
        return self.runner().backend_name

    def stored(self) -> StoredBaselines:
        """The stored-baseline gate of this profile and backend (stored_gate.py)."""
        if self._stored is None:
            self._stored = StoredBaselines(
                baseline_path(self.baselines, self.profile, self.backend_name),
                self.profile,
                self.backend_name,
                self.tolerance,
                allow_unlike=self.allow_unlike,
                recording=self.update_baselines,
            )
        return self._stored

    def not_judged(self) -> str | None:
        """Why the stored baseline may not judge this run; said once in the table."""
        why = self.stored().not_judged()
        if why and not self._not_judged_said:
            self._not_judged_said = True
            self.messages.append(
                f"nothing is judged against {self.stored().path}: {why}. To judge on this "
                "machine, record a baseline here (run the same command with "
                "--lmgauge-update-baselines, three times or more), or compare two configs in "
                "one session: --lmgauge-config B.toml --lmgauge-against A.toml"
            )
        return why

    # --- the report -----------------------------------------------------------------------

    def _on_update(self, run: CaseRun) -> None:
        """Every new sample goes to the report on disk before the next one is measured."""
        if self.report_dir is None:
            return
        if self.report is None:
            runner = self.runner()
            self.report = ReportWriter.start(
                self.report_dir,
                backend={
                    "name": runner.backend_name,
                    "requested": self.requested_backend,
                    "detection": runner.detection_reason,
                    "base_url": self.base_url,
                },
                profile=self.profile,
                host=vars(self.host()),
                run={
                    "workload": asdict(self.workload),
                    "tolerance": self.tolerance,
                    "baselines": str(self.baselines),
                    "update_baselines": self.update_baselines,
                    "allow_unlike": self.allow_unlike,
                    "config": None
                    if self.server_config is None
                    else {
                        "path": str(self.server_config.path),
                        "sha256": self.server_config.digest,
                        "server": dict(self.server_config.server),
                        "load": dict(self.server_config.load),
                        "options": dict(self.server_config.options),
                    },
                    **self.run_settings,
                },
            )
        roofline = case_roofline(run.case, self.workload, self.profile, self.bandwidth)
        self.report.record_case(run, derived={"decode_roofline": roofline})

    # --- the check ------------------------------------------------------------------------

    def check(self, case: Case, metric: str) -> None:
        """Measure ``case`` (once per session), judge ``metric``, fail on a regression or
        a hard threshold breach."""
        self.stored().calibrate_before_loading()
        self._refuse_a_mismatched_server(case)
        run = self._measured(case, self.runner().run(case))
        if metric in SAMPLE_METRICS:
            self._sample_more_if_inconclusive(case, metric)
            values = sample_values(run.samples, metric)
            if not values:
                reasons = sorted({s.invalid_reason or "" for s in run.samples if not s.valid})
                message = f"{case.id}: no valid sample for {metric}: {'; '.join(reasons)}"
                self._fail(Row(case.id, metric, "-", "-", message, True, outcome="error"))
            value = statistics.median(values)
            measured = f"{format_value(metric, value)} (median of {len(values)}, measured)"
        else:
            single = run_value(run, metric)
            if single is None:
                pytest.skip(f"{metric} was not reported for {case.id}")
            value, values = single, [single]
            measured = f"{format_value(metric, value)} (measured)"
        failures: list[str] = []
        judgement = self._stored_judgement(case, run, metric, values, failures)
        self._conclude(case, metric, value, measured, judgement, failures)

    def check_throughput(self, case: Case, concurrency: int) -> None:
        """Aggregate tokens/s at ``concurrency`` requests in flight, through the batcher."""
        self._refuse_a_mismatched_server(case)
        run = self._measured(case, self.runner().throughput(case, concurrency))
        tokens_per_s, samples = run.throughput[concurrency]
        metric = throughput_metric(concurrency)
        failed = [s for s in samples if not s.ok]
        measured = f"{format_value(metric, tokens_per_s)} (measured, {len(samples)} requests)"
        failures = []
        if failed:
            failures.append(f"{len(failed)} of {len(samples)} requests failed: {failed[0].error}")
        judgement = single_value(metric, tokens_per_s, self._stored_metric(case, metric))
        self._conclude(case, metric, tokens_per_s, measured, judgement, failures)

    def check_scenario(self, case: Case, scenario: str) -> None:
        """One of seed 003's scenario workloads, against its target as a threshold."""
        if case.heavy and not self.heavy_scenarios:
            pytest.skip(
                "scenario workloads on a multi-billion-parameter embedded model take minutes "
                "on a small machine; add --lmgauge-scenarios to run them"
            )
        self._refuse_a_mismatched_server(case)
        run = self._measured(case, self.runner().scenario(case, scenario))
        result = run.scenarios[scenario]
        if result.skipped:
            pytest.skip(f"{scenario}: {result.skipped}")
        metric = result.metric
        failures = []
        if result.errors:
            failures.append(f"{len(result.errors)} request(s) failed: {result.errors[0]}")
        if result.value is None:
            self._fail(Row(case.id, metric, "-", "-", "; ".join(failures), True, outcome="error"))
        measured = f"{format_value(metric, result.value)} (measured)"
        judgement = single_value(metric, result.value, self._stored_metric(case, metric))
        self._conclude(case, metric, result.value, measured, judgement, failures)

    def _refuse_a_mismatched_server(self, case: Case) -> None:
        self.runner()
        if self._config_mismatch:
            self._fail(Row(case.id, "-", "-", "-", self._config_mismatch, True, outcome="error"))

    def _measured(self, case: Case, run: CaseRun) -> CaseRun:
        if run.skipped:
            pytest.skip(run.skipped)
        if run.error:
            self._fail(Row(case.id, "-", "-", "-", run.error, True, outcome="error"))
        return run

    def _conclude(
        self,
        case: Case,
        metric: str,
        value: float,
        measured: str,
        judgement: Judgement,
        failures: list[str],
    ) -> None:
        notes = self._thresholds_for(case, metric, value, failures)
        comparison = judgement.comparison
        outcome = judgement.outcome
        if failures and outcome not in ("regression", "refused"):
            breach = any(f.startswith("threshold breach") for f in failures)
            outcome = "breach" if breach else "error"
        row = Row(
            case.id,
            metric,
            measured,
            judgement.baseline,
            "; ".join([judgement.verdict, *notes]),
            bool(failures),
            value=value,
            baseline_value=judgement.baseline_value,
            baseline_provenance=judgement.baseline_provenance,
            baseline_source=judgement.baseline_source,
            baseline_values=judgement.baseline_values,
            outcome=outcome,
            ratio=comparison.ratio if comparison else judgement.ratio,
            p_value=comparison.p_value if comparison else None,
            thresholds=tuple(notes),
        )
        if failures:
            self._fail(row, "\n".join(failures))
        self._record(row)

    def _fail(self, row: Row, why: str | None = None) -> NoReturn:
        self._record(row)
        pytest.fail(f"{row.case_id} {row.metric}: {why or row.verdict}", pytrace=False)

    def _record(self, row: Row) -> None:
        self.rows.append(row)
        if self.report is not None:
            self.report.record_verdict(row)

    def _sample_more_if_inconclusive(self, case: Case, metric: str) -> None:
        """Draw more samples, two at a time, while the verdict is inconclusive: up to the
        sample cap, and while the case's extra sampling stays within its time budget."""
        runner = self.runner()
        run = runner.run(case)
        while len(run.samples) < self.workload.max_samples:
            if self._extra_sampling_s.get(case, 0.0) >= self.workload.max_extra_sampling_s:
                return
            self.not_judged()  # said in the table when it applies
            values = sample_values(run.samples, metric)
            if not self.stored().needs_more_samples(case, metric, values):
                return
            started = time.perf_counter()
            runner.more_samples(case, min(2, self.workload.max_samples - len(run.samples)))
            spent = time.perf_counter() - started
            self._extra_sampling_s[case] = self._extra_sampling_s.get(case, 0.0) + spent

    def _stored_metric(self, case: Case, metric: str) -> MetricBaseline | None:
        return self.stored().metric(case, metric)

    def _stored_judgement(
        self, case: Case, run: CaseRun, metric: str, values: list[float], failures: list[str]
    ) -> Judgement:
        self.not_judged()  # said in the table when it applies
        return self.stored().judgement(case, run, metric, values, failures)

    def _thresholds_for(
        self, case: Case, metric: str, value: float, failures: list[str]
    ) -> list[str]:
        if self._thresholds is None:
            self._thresholds = load_thresholds()
        return threshold_notes(
            self._thresholds, case.label, metric, value, self.profile, self.bandwidth, failures
        )

    def bandwidth(self) -> float:
        if self._bandwidth is None:
            self._bandwidth = probe_bandwidth().read_bytes_per_s
        return self._bandwidth

    # --- the end of the session -----------------------------------------------------------

    def table_lines(self) -> list[str]:
        lines = [*self.messages, f"profile: {self.profile}; tolerance {self.tolerance:.0%}"]
        if self._runner is not None and self._runner.guard_note:
            lines.insert(len(self.messages), f"note: {self._runner.guard_note}")
        for row in self.rows:
            mark = "FAIL" if row.failed else "ok  "
            lines.append(
                f"{mark} {row.case_id} {row.metric}: {row.measured}; baseline "
                f"{row.baseline}; {row.verdict}"
            )
        if self.report is not None:
            cases = self.report.data["cases"].values()
            samples = sum(len(c.get("samples", [])) for c in cases)
            lines.append(
                f"report ({self.report.data['status']}, {samples} samples of "
                f"{len(cases)} case(s)): {self.report.path}"
            )
        return lines

    def write_baselines(self) -> None:
        if not self.update_baselines or self._runner is None:
            return
        message = self.stored().record(self._runner.runs(), vars(self.host()))
        if message is None:
            return
        self.messages.append(message)
        if self.report is not None:
            self.report.note(message)

    def finish(self) -> None:
        if self._runner is not None:
            self._runner.close()
