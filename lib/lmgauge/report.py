"""Run reports: ``reports/<UTC timestamp>-<backend>-<profile>.json``, one per run.

Format history:
    1 -- first version: environment, then per case its raw samples, the values of every
         metric, their summaries, and the verdict rows with the baseline figures and
         their provenance. Optional per case: ``paired`` (a paired A/B run: arms, rounds,
         per-metric intervals), added without a version bump since readers ignore it.
         Also added so, at the top level: ``machine_id`` (machine.machine_identity's
         digest, null where none is readable) and ``config_sha256`` (the sha256 of the
         --lmgauge-config file, null without one); older reports lack both (read: null).

The file is rewritten atomically (temp file + rename) each time a sample is measured or
a verdict reached, so at every moment it is one valid JSON document holding everything
measured so far; ``status`` says whether the run finished ("complete"), was interrupted,
or is still going (a run killed outright leaves "running"). Every figure under ``cases``
was measured on the host in ``environment``; baseline figures carry their provenance.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmgauge import __version__
from lmgauge.errors import ConfigError
from lmgauge.files import write_json_atomic
from lmgauge.machine import machine_identity
from lmgauge.metrics import metric_values
from lmgauge.stats import summarize

if TYPE_CHECKING:
    from lmgauge.runner import CaseRun

FORMAT = "lmgauge-report"
VERSION = 1


@dataclass(frozen=True)
class Row:
    """One verdict: a metric of a case against its baseline and thresholds."""

    case_id: str
    metric: str
    measured: str  # the figure as printed, with its provenance
    baseline: str
    verdict: str  # the full sentence
    failed: bool
    value: float | None = None
    baseline_value: float | None = None
    baseline_provenance: str | None = None  # measured | derived | public
    baseline_source: str = ""  # who measured it, or how it was derived, or where published
    baseline_values: tuple[float, ...] = ()  # the baseline's own samples, for its spread
    outcome: str = "reported"  # pass | regression | improvement | inconclusive | refused | ...
    ratio: float | None = None
    p_value: float | None = None
    thresholds: tuple[str, ...] = ()


def git_commit(directory: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def check_writable(directory: Path) -> None:
    """Fail now, before any benchmark runs, if reports cannot be written to ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write reports to {directory}: {exc.strerror or exc}; choose another "
            "directory with --lmgauge-report-dir, or fix its permissions"
        ) from exc


def case_record(run: CaseRun) -> dict[str, Any]:
    values = metric_values(run)
    return {
        "case": asdict(run.case),
        "environment": dict(run.environment),
        "skipped": run.skipped,
        "error": run.error,
        "load": asdict(run.load) if run.load else None,
        "memory": asdict(run.memory) if run.memory else None,
        "samples": [s.to_dict() for s in run.samples],
        "throughput": {
            str(level): {"tokens_per_s": rate, "samples": [s.to_dict() for s in samples]}
            for level, (rate, samples) in run.throughput.items()
        },
        "scenarios": {
            name: {
                "metric": r.metric,
                "value": r.value,
                "skipped": r.skipped,
                "errors": list(r.errors),
                "samples": [s.to_dict() for s in r.samples],
            }
            for name, r in run.scenarios.items()
        },
        "values": values,
        "summaries": {
            metric: summary.to_dict()
            for metric, v in values.items()
            if (summary := summarize(v)) is not None
        },
        "verdicts": [],
    }


@dataclass
class ReportWriter:
    """The report of one run, on disk after every change."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        backend: Mapping[str, Any],
        profile: str,
        host: Mapping[str, Any],
        run: Mapping[str, Any],
    ) -> ReportWriter:
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%SZ}-{backend['name']}-{profile}.json"
        writer = cls(directory / name)
        writer.data = {
            "format": FORMAT,
            "version": VERSION,
            "status": "running",
            "started_utc": now.isoformat(timespec="seconds"),
            "finished_utc": None,
            "lmgauge_version": __version__,
            "git_commit": git_commit(Path.cwd()),
            "machine_id": machine_identity().digest or None,
            "config_sha256": (run.get("config") or {}).get("sha256"),
            "profile": profile,
            "host": dict(host),
            "backend": dict(backend),
            "run": dict(run),
            "provenance": (
                "every figure under cases was measured on this host; baseline figures in "
                "verdicts carry their own provenance (measured, derived or public)"
            ),
            "messages": [],
            "cases": {},
        }
        writer.flush()
        return writer

    def record_case(self, run: CaseRun, *, derived: Mapping[str, Any] | None = None) -> None:
        """``derived``: figures computed, not measured, for the case (each says so)."""
        previous = self.data["cases"].get(run.case.id, {})
        record = case_record(run)
        record["derived"] = dict(derived or {})
        record["verdicts"] = previous.get("verdicts", [])
        self.data["cases"][run.case.id] = record
        self.flush()

    def record_paired(self, case_id: str, paired: Mapping[str, Any]) -> None:
        """A paired A/B case (paired_gate.py): its arms, rounds and per-metric intervals;
        the case's own record holds arm B's samples."""
        case = self.data["cases"].setdefault(case_id, {"verdicts": []})
        case["paired"] = dict(paired)
        self.flush()

    def record_verdict(self, row: Row) -> None:
        case = self.data["cases"].setdefault(row.case_id, {"verdicts": []})
        case["verdicts"].append(asdict(row))
        self.flush()

    def note(self, message: str) -> None:
        self.data["messages"].append(message)
        self.flush()

    def finish(self, status: str, *, failed_tests: int, exit_code: int) -> None:
        self.data["status"] = status
        self.data["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.data["summary"] = {"failed_tests": failed_tests, "pytest_exit_code": exit_code}
        self.flush()

    def flush(self) -> None:
        write_json_atomic(self.path, self.data)


def load_report(path: Path) -> dict[str, Any]:
    """A report, checked: a clear error names the file if it is not one this version reads."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"report {path} does not exist") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"report {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an lmgauge report (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ConfigError(
            f"report {path} has format version {data.get('version')!r}; this lmgauge "
            f"({__version__}) reads version {VERSION}: use the lmgauge that wrote it"
        )
    if not isinstance(data.get("cases"), dict):
        raise ConfigError(f"report {path} is malformed: no 'cases' object")
    return data
