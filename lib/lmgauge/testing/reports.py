"""Synthetic run reports for the results store's tests, benchmark and fleet script.

Each is a copy of a real report (its whole structure: cases, environments, samples,
summaries, verdicts) with its own start time, machine and values: every metric's samples
scaled by one random factor per run and jittered per sample. Not measurements: the
reports say so in ``messages``. ``series_point`` makes one point of a store's series
directly, for tests of what reads series (change points, the dashboard).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lmgauge.store import StoredSeriesPoint

MACHINES = tuple(f"{i:x}" * 16 for i in range(10, 16))  # 16-hex-digit machine ids
START = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_report(
    template: dict[str, Any], index: int, *, machines: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Report number ``index``: started ``index`` minutes after START (one run a minute,
    so no two share a start), on one of ``machines`` machines, with its own values."""
    rng = random.Random(seed * 1_000_003 + index)
    report = copy.deepcopy(template)
    started = START + timedelta(minutes=index)
    report["status"] = "complete"
    report["started_utc"] = started.isoformat(timespec="seconds")
    report["finished_utc"] = (started + timedelta(seconds=50)).isoformat(timespec="seconds")
    report["machine_id"] = MACHINES[index % max(1, min(machines, len(MACHINES)))]
    report["config_sha256"] = None
    report.setdefault("messages", []).append(
        "synthetic: lmgauge.testing.reports varied a real report's values; nothing measured"
    )
    for case in report["cases"].values():
        run_factor = rng.lognormvariate(0.0, 0.05)
        case["values"] = {
            metric: [v * run_factor * rng.lognormvariate(0.0, 0.02) for v in values]
            for metric, values in (case.get("values") or {}).items()
        }
    return report


def write_synthetic_reports(
    template_path: Path,
    directory: Path,
    count: int,
    *,
    machines: int = 4,
    seed: int = 0,
    first: int = 0,
) -> list[Path]:
    """``count`` reports (numbers ``first``...) from the report at ``template_path``."""
    template = json.loads(template_path.read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(first, first + count):
        report = synthetic_report(template, index, machines=machines, seed=seed)
        stamp = datetime.fromisoformat(report["started_utc"])
        backend = report["backend"]["name"]
        path = directory / f"{stamp:%Y%m%dT%H%M%SZ}-{backend}-{report['profile']}-{index}.json"
        path.write_text(json.dumps(report, allow_nan=True), encoding="utf-8")
        paths.append(path)
    return paths


def series_point(
    *,
    run_id: int,
    started_utc: str,
    machine_id: str,
    release: int,
    case_id: str,
    metric: str,
    values: tuple[float, ...],
) -> StoredSeriesPoint:
    """One run's values of one metric, as ``Store.series`` returns them: one backend on one
    profile, each release a backend version (``0.3.<release>``), the rest fixed."""
    return StoredSeriesPoint(
        run_id=run_id,
        started_utc=started_utc,
        machine_id=machine_id,
        profile="linux-x86_64-2c-24gb",
        backend="llamacpp",
        backend_version=f"0.3.{release}",
        config_sha256="c0ffee",
        model_digest="sha256:aaa",
        lmgauge_version="0.1.0",
        git_commit=None,
        case_id=case_id,
        metric=metric,
        values=values,
    )
