"""The paired gate in pytest: ``--lmgauge-config B.toml --lmgauge-against A.toml``.

Both configs are measured in one session, in randomized interleaved rounds (paired.py),
and each metric test judges the paired ratio B/A with its confidence interval
(paired_stats.py) instead of a stored baseline. The planning documents' thresholds still
apply to arm B, the candidate. What this session adds to CheckSession: making the two
arms (runners, managed servers), the verdict rows of a paired case, and its report record.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lmgauge.config import ServerConfig, load_settings, request_options
from lmgauge.errors import ConfigError
from lmgauge.judge import Judgement, memory_growth_bound
from lmgauge.metrics import format_value
from lmgauge.paired import ROUND_METRICS, Arm, PairedMeasurement, PairedPlan, PairedRun
from lmgauge.report import Row, case_record
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession

if TYPE_CHECKING:
    from lmgauge.servers import ManagedServer

PAIRED_TOLERANCE = 0.02
"""The default smallest change that counts in a paired run: the interval carries the
noise, so the tolerance is only what is too small to matter (5% against a stored baseline,
whose runs cannot see the machine's drift)."""
OUTCOMES = {"no change": "pass"}  # paired wording -> the report's outcome vocabulary


def check_pairable(base: ServerConfig, candidate: ServerConfig) -> None:
    """Refuse two configs that cannot be arms of one paired run, saying why."""
    if base.backend != candidate.backend:
        raise ConfigError(
            f"{candidate.path} is for {candidate.backend} and {base.path} for {base.backend}: "
            "the paired gate compares two configs of one backend"
        )
    server_differs = _settings(base.server) != _settings(candidate.server)
    if server_differs and (base.start is None or candidate.start is None):
        raise ConfigError(
            f"{base.path} and {candidate.path} differ in [server] settings, which a server "
            "reads only when it starts: give both a [server.start] section so lmgauge "
            "restarts the server with each arm's settings (configs/README.md)"
        )


def _settings(section: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(section).items() if k != "start"}


@dataclass
class PairedSession(CheckSession):
    against: ServerConfig | None = None  # arm A, the base; server_config is arm B
    plan: PairedPlan = field(default_factory=PairedPlan)
    _measurement: PairedMeasurement | None = None

    def measurement(self) -> PairedMeasurement:
        if self._measurement is None:
            base, candidate = self.against, self.server_config
            if base is None or candidate is None:
                raise ConfigError("the paired gate needs --lmgauge-config and --lmgauge-against")
            arm_b = self.runner()  # the candidate: its samples feed the report as before
            arm_a = self.runner_factory(
                base.backend,
                self.workload,
                base_url=self.base_url,
                load_settings=lambda case: load_settings(base, case.context_tokens),
                request_options=request_options(base),
            )
            logs = (self.report_dir or Path("reports")) / "servers"
            server_a, server_b = _managed(base, "A", logs), _managed(candidate, "B", logs)
            self._measurement = PairedMeasurement(
                {
                    "A": Arm("A", f"base: {base.path}", arm_a, server_a),
                    "B": Arm("B", f"candidate: {candidate.path}", arm_b, server_b),
                },
                self.plan,
                progress=self.progress,
                on_round=self._on_round,
                tolerance=self.tolerance,
            )
            self.messages.append(
                f"paired gate: A = {base.path} (sha256 {base.digest[:12]}), "
                f"B = {candidate.path} (sha256 {candidate.digest[:12]}); "
                f"{self.plan.samples_per_arm} samples per arm per round, rounds "
                f"{self.plan.sequential.min_rounds}-{self.plan.sequential.max_rounds}, "
                f"tolerance {self.tolerance:.0%}, a round is discarded when other processes "
                f"take over {self.plan.disturbance_limit:.0%} of the CPU"
            )
        return self._measurement

    def _paired(self, case: Case) -> PairedRun:
        self._refuse_a_mismatched_server(case)
        paired = self.measurement().run(case)
        if paired.skipped:
            pytest.skip(paired.skipped)
        if paired.error:
            self._fail(Row(case.id, "-", "-", "-", paired.error, True, outcome="error"))
        return paired

    def _refuse_a_mismatched_server(self, case: Case) -> None:
        # Managed servers are started with each arm's settings; an unmanaged Ollama is
        # checked against arm B's environment as in a single-arm run.
        config = self.server_config
        if config is not None and config.start is None:
            super()._refuse_a_mismatched_server(case)

    # --- the checks the benchmark tests call --------------------------------------------------

    def check(self, case: Case, metric: str) -> None:
        paired = self._paired(case)
        if metric in ROUND_METRICS:
            self._check_round_metric(case, paired, metric)
        elif metric == "rss_bytes":
            self._check_memory(case, paired)
        elif metric == "error_rate_ratio":
            self._check_error_rate(case, paired)
        else:
            pytest.skip(f"{metric} is not part of the paired gate")

    def check_throughput(self, case: Case, concurrency: int) -> None:
        pytest.skip(
            "throughput bursts are not paired yet: run without --lmgauge-against to measure "
            "them against a stored baseline"
        )

    def check_scenario(self, case: Case, scenario: str) -> None:
        pytest.skip("scenario workloads are not paired yet: run without --lmgauge-against")

    def _check_round_metric(self, case: Case, paired: PairedRun, metric: str) -> None:
        a_values, b_values = paired.arm_values("A", metric), paired.arm_values("B", metric)
        verdict = paired.verdicts.get(metric)
        if not b_values or not a_values or verdict is None:
            reason = f"{case.id}: {metric}: too few rounds with a value in both arms"
            pytest.skip(f"{reason} ({len(paired.ratios(metric))} of {len(paired.rounds)})")
        b_median, a_median = statistics.median(b_values), statistics.median(a_values)
        discarded = len(paired.discarded)
        measured = (
            f"B {format_value(metric, b_median)} (median of {len(b_values)} round medians, "
            f"measured{f'; {discarded} disturbed rounds discarded' if discarded else ''})"
        )
        outcome = OUTCOMES.get(verdict.outcome, verdict.outcome)
        text = verdict.describe()
        failures: list[str] = []
        if paired.not_gated:
            outcome, text = "not gated", f"{text}; {paired.not_gated}"
        elif outcome == "regression":
            failures.append(f"paired regression, B against A: {text}")
        judgement = Judgement(
            baseline=f"A {format_value(metric, a_median)} (measured, same session)",
            verdict=text,
            outcome=outcome,
            baseline_value=a_median,
            baseline_provenance="measured",
            baseline_source=self.measurement().arms["A"].title,
            baseline_values=tuple(a_values),
            ratio=verdict.ratio,
        )
        self._conclude(case, metric, b_median, measured, judgement, failures)

    def _check_memory(self, case: Case, paired: PairedRun) -> None:
        peaks: dict[str, int | None] = {
            name: max((rss for r in paired.kept if (rss := r.arms[name].rss_bytes)), default=None)
            for name in ("A", "B")
        }
        a_peak, b_peak = peaks["A"], peaks["B"]
        if a_peak is None or b_peak is None:
            pytest.skip("memory was not read in both arms")
        ratio = b_peak / a_peak
        bound = memory_growth_bound(self.tolerance)
        failures = []
        outcome = "reported"
        text = f"{ratio:.2f}x arm A's peak (one peak per arm: reported within {bound:.0%})"
        if ratio > 1 + bound:
            outcome, text = "regression", f"{ratio:.2f}x arm A's peak, beyond {bound:.0%}"
            failures.append(f"memory regression, B against A: {text}")
        judgement = Judgement(
            baseline=f"A {format_value('rss_bytes', a_peak)} (measured, same session)",
            verdict=text,
            outcome=outcome,
            baseline_value=float(a_peak),
            baseline_provenance="measured",
            baseline_source=self.measurement().arms["A"].title,
            ratio=ratio,
        )
        measured = f"B {format_value('rss_bytes', b_peak)} (peak RSS over the rounds, measured)"
        self._conclude(case, "rss_bytes", float(b_peak), measured, judgement, failures)

    def _check_error_rate(self, case: Case, paired: PairedRun) -> None:
        rates = {}
        for name in ("A", "B"):
            samples = [s for r in paired.rounds for s in r.arms[name].samples]
            rates[name] = sum(not s.ok for s in samples) / len(samples) if samples else 0.0
        judgement = Judgement(
            baseline=f"A {format_value('error_rate_ratio', rates['A'])} (measured, same session)",
            verdict=f"B {rates['B']:.1%} of requests failed, A {rates['A']:.1%} (reported; "
            "the planning documents' error-rate limit applies to B)",
            outcome="reported",
            baseline_value=rates["A"],
            baseline_provenance="measured",
        )
        measured = f"B {format_value('error_rate_ratio', rates['B'])} (measured)"
        self._conclude(case, "error_rate_ratio", rates["B"], measured, judgement, [])

    # --- the report -------------------------------------------------------------------

    def _on_round(self, paired: PairedRun) -> None:
        """After every round: arm B's samples as the case's record, and the pairing."""
        self._on_update(paired.runs["B"])
        if self.report is None:
            return
        measurement = self.measurement()
        record = paired.to_dict()
        record["arms"] = {
            name: {
                "title": arm.title,
                "server_log": str(arm.server.log_path) if arm.server else None,
                "environment": dict(paired.runs[name].environment),
                **({"run": case_record(paired.runs[name])} if name == "A" else {}),
            }
            for name, arm in measurement.arms.items()
        }
        record["plan"] = {
            "samples_per_arm": self.plan.samples_per_arm,
            "min_rounds": self.plan.sequential.min_rounds,
            "step_rounds": self.plan.sequential.step_rounds,
            "max_rounds": self.plan.sequential.max_rounds,
            "alpha": self.plan.sequential.alpha,
            "look_confidence": self.plan.sequential.look_confidence,
            "tolerance": self.tolerance,
            "disturbance_limit": self.plan.disturbance_limit,
            "budget_s": self.plan.budget_s,
        }
        self.report.record_paired(paired.case.id, record)

    def write_baselines(self) -> None:
        """A paired run writes no baseline: its arms are measured against each other."""

    def finish(self) -> None:
        if self._measurement is not None:
            self._measurement.close()
            self._runner = None  # closed with arm B
        super().finish()


def _managed(config: ServerConfig, arm: str, log_dir: Path) -> ManagedServer | None:
    if config.start is None:
        return None
    from lmgauge.servers import ManagedServer

    return ManagedServer(config.start, config.server, log_dir=log_dir / arm)
