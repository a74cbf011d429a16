"""Judging one metric of one case: baseline comparison, thresholds, the verdict table.

Provenance is part of every row: figures measured here, baseline numbers as the file
labels them (measured, derived, public), and thresholds scaled from the reference
machine are said to be scaled, with the bandwidths used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import pytest

from lmgauge import __version__
from lmgauge.backends import DEFAULT_URLS
from lmgauge.baselines import (
    BaselineFile,
    CaseBaseline,
    MetricBaseline,
    add_runs,
    baseline_path,
    environment_differences,
    load_baseline,
    save_baseline,
)
from lmgauge.catalog import resolve_model
from lmgauge.config import ServerConfig, load_settings, request_options
from lmgauge.hardware import (
    REFERENCE_PROFILES,
    HostFingerprint,
    decode_roofline_tokens_per_s,
    fingerprint,
    probe_bandwidth,
)
from lmgauge.metrics import (
    SAMPLE_METRICS,
    SCENARIO_METRICS,
    format_value,
    metric_values,
    run_value,
    sample_values,
    throughput_metric,
)
from lmgauge.report import ReportWriter, Row
from lmgauge.runner import Case, CaseRun, Runner, Workload
from lmgauge.server_env import environment_mismatches, find_server_process
from lmgauge.settings_registry import REGISTRIES
from lmgauge.stats import Comparison, compare
from lmgauge.thresholds import Threshold, load_thresholds

REFERENCE_PROFILE = "apple-m3-max-128gb"
THRESHOLD_METRIC = {
    **{metric: metric for metric in SCENARIO_METRICS},
    "decode_tokens_per_s": "decode_tokens_per_s",
    "ttft_s": "ttft_s",
    "e2e_s": "e2e_s",
    "rss_bytes": "peak_memory_bytes",
    "error_rate_ratio": "error_rate_ratio",
}
MEMORY_TOLERANCE = 0.10


@dataclass(frozen=True)
class Judgement:
    """What the baseline says about one metric: the baseline fields of a verdict row."""

    baseline: str = "none"
    verdict: str = "no baseline for this profile (record one with --update-baselines)"
    outcome: str = "no baseline"
    baseline_value: float | None = None
    baseline_provenance: str | None = None
    baseline_source: str = ""
    baseline_values: tuple[float, ...] = ()
    comparison: Comparison | None = None
    ratio: float | None = None


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
    rows: list[Row] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    report: ReportWriter | None = None
    _runner: Runner | None = None
    _baseline: BaselineFile | None = None
    _baseline_loaded: bool = False
    _thresholds: tuple[Threshold, ...] | None = None
    _bandwidth: float | None = None
    _profile: str | None = None
    _host: HostFingerprint | None = None
    _config_mismatch: str | None = None

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
                self._config_mismatch = self._check_server_environment(config)
        return self._runner

    def _check_server_environment(self, config: ServerConfig) -> str | None:
        """Settings a server takes only at start-up ([server]) cannot be applied from here:
        check that the running server has them, and say so when it does not."""
        if not config.server or self.backend_name != "ollama":
            return None
        url = self.base_url or DEFAULT_URLS["ollama"]
        try:
            process = find_server_process(url)
        except (LookupError, PermissionError) as exc:
            return f"cannot check the [server] settings of {config.path}: {exc}"
        real, _ = REGISTRIES["ollama"]
        wanted = {k: str(v) for k, v in config.server.items()}
        defaults = {k: s.default for k, s in real.items()}
        mismatches = environment_mismatches(wanted, process.environment, defaults)
        if not mismatches:
            return None
        return (
            f"the running Ollama server (pid {process.pid}) does not run {config.path}: "
            + "; ".join(mismatches)
            + ". Restart it with that environment (e.g. `OLLAMA_FLASH_ATTENTION=1 ollama serve`)"
        )

    @property
    def backend_name(self) -> str:
        return self.runner().backend_name

    def baseline_file(self) -> BaselineFile | None:
        if not self._baseline_loaded:
            path = baseline_path(self.baselines, self.profile, self.backend_name)
            self._baseline = load_baseline(path)
            self._baseline_loaded = True
        return self._baseline

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
        self.report.record_case(run, derived={"decode_roofline": self._roofline(run.case)})

    def _roofline(self, case: Case) -> dict[str, Any]:
        """The most decode tokens/s this host's memory bandwidth allows for the case: a
        derived figure, from the public bandwidth of a reference machine or the one
        measured here."""
        if self.profile in REFERENCE_PROFILES:
            reference = REFERENCE_PROFILES[self.profile]
            bandwidth, bandwidth_source = reference.bandwidth_bytes_per_s, reference.source
        else:
            bandwidth = self.bandwidth()
            bandwidth_source = "measured here (numpy read probe, hardware.probe_bandwidth)"
        entry = resolve_model(case.label)
        weights = entry.active_weight_bytes(case.quantization)
        kv_per_token = entry.architecture.kv_bytes_per_token("f16")
        mean_context = self.workload.prompt_tokens + self.workload.max_tokens / 2
        return {
            "tokens_per_s": decode_roofline_tokens_per_s(
                bandwidth, weights, kv_per_token, round(mean_context)
            ),
            "provenance": "derived",
            "source": (
                f"bandwidth {bandwidth / 1e9:.1f} GB/s ({bandwidth_source}) / "
                f"({weights / 1e9:.2f} GB active weights + f16 KV cache at "
                f"{mean_context:.0f} tokens)"
            ),
        }

    # --- the check ------------------------------------------------------------------------

    def check(self, case: Case, metric: str) -> None:
        """Measure ``case`` (once per session), judge ``metric``, fail on a regression or
        a hard threshold breach."""
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
        judgement = self._against_baseline(case, run, metric, values, failures)
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
        judgement = self._single_value(case, metric, tokens_per_s)
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
        judgement = self._single_value(case, metric, result.value)
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
        runner = self.runner()
        run = runner.run(case)
        while len(run.samples) < self.workload.max_samples:
            stored = self._stored_metric(case, metric)
            if stored is None or stored.provenance != "measured":
                return
            result = compare(
                stored.values,
                sample_values(run.samples, metric),
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

    def _single_value(self, case: Case, metric: str, value: float) -> Judgement:
        """A metric measured once per run: its ratio to the baseline is reported."""
        stored = self._stored_metric(case, metric)
        if stored is None:
            return Judgement(verdict="no baseline for this profile")
        ratio = value / stored.values[0]
        return Judgement(
            f"{format_value(metric, stored.values[0])} ({stored.provenance})",
            f"{ratio:.2f}x the baseline (single value: reported)",
            "reported",
            stored.values[0],
            stored.provenance,
            stored.source,
            stored.values,
            ratio=ratio,
        )

    def _against_baseline(
        self, case: Case, run: CaseRun, metric: str, values: list[float], failures: list[str]
    ) -> Judgement:
        stored_case = self._stored_case(case)
        stored = self._stored_metric(case, metric)
        if stored_case is None or stored is None:
            return Judgement()
        median = statistics.median(stored.values)
        base = Judgement(
            baseline=f"{format_value(metric, median)} ({stored.provenance})",
            baseline_value=median,
            baseline_provenance=stored.provenance,
            baseline_source=stored.source,
            baseline_values=stored.values,
        )
        ratio = statistics.median(values) / median if median else None
        if stored.provenance != "measured":  # nothing to match: reported, never judged
            return replace(
                base,
                verdict=f"{ratio or float('nan'):.2f}x the {stored.provenance} baseline "
                f"({stored.source}); reported, not judged",
                outcome="reported",
                ratio=ratio,
            )
        differences = environment_differences(stored_case.environment, run.environment)
        unlike = [d for d in differences if not d.startswith("backend_version")]
        if unlike and not self.allow_unlike:
            failures.append(
                "refusing to compare with a baseline from an unlike environment: "
                f"{'; '.join(unlike)}. Re-record it with --update-baselines, or compare "
                "anyway with --lmgauge-allow-unlike"
            )
            return replace(base, verdict="refused: unlike environment", outcome="refused")
        release = [d for d in differences if d.startswith("backend_version")]
        prefix = f"across releases ({release[0]}): " if release else ""
        if unlike:
            prefix = (
                f"UNLIKE environment, allowed by --lmgauge-allow-unlike ({'; '.join(unlike)}): "
            )
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
            return replace(
                base,
                verdict=prefix + result.describe() + why,
                outcome=result.verdict,
                comparison=result,
            )
        if not stored.values[0]:  # e.g. an error rate of 0: no ratio, only equality
            same = "the same as" if values[0] == stored.values[0] else "against"
            verdict = f"{prefix}{format_value(metric, values[0])} {same} the baseline's"
            return replace(base, verdict=verdict, outcome="reported")
        single = values[0] / stored.values[0]
        if metric == "rss_bytes" and single > 1 + max(self.tolerance, MEMORY_TOLERANCE):
            failures.append(f"memory regression: {single:.2f}x the baseline")
            return replace(
                base,
                verdict=f"{prefix}{single:.2f}x higher (beyond {MEMORY_TOLERANCE:.0%})",
                outcome="regression",
                ratio=single,
            )
        return replace(
            base,
            verdict=f"{prefix}{single:.2f}x the baseline (single value: reported)",
            outcome="reported",
            ratio=single,
        )

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
                f"{threshold.severity} {threshold.id}: {format_value(metric, value)} "
                f"{'<' if threshold.direction == 'min' else '>'} {format_value(metric, limit)}"
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

    # --- the end of the session -----------------------------------------------------------

    def table_lines(self) -> list[str]:
        lines = [*self.messages, f"profile: {self.profile}; tolerance {self.tolerance:.0%}"]
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
        runs = {
            r.case.id: (r.environment, metric_values(r))
            for r in self._runner.runs()
            if r.samples and not r.error
        }
        if not runs:
            return
        path = baseline_path(self.baselines, self.profile, self.backend_name)
        existing = self.baseline_file()
        source = f"measured on {self.profile} by lmgauge {__version__}, {time.strftime('%F')}"
        baseline = add_runs(
            existing, self.profile, self.backend_name, runs, source=source, host=vars(self.host())
        )
        save_baseline(path, baseline)
        kept = f" (previous kept as {path.name}.prev)" if existing else ""
        self.messages.append(f"baseline written: {path}{kept}")
        if self.report is not None:
            self.report.note(f"baseline written: {path}{kept}")

    def finish(self) -> None:
        if self._runner is not None:
            self._runner.close()
