"""The results store: many runs' reports in one database, for trends across runs.

Reports stay the unit of exchange: the store is built from them (``ingest_report``),
never the reverse. A run is stored once, keyed by its identity, a sha256 of the report's
``started_utc``, machine id, host fingerprint, backend and profile: ingesting the same
report again, or a copy of it, stores nothing (``False``), from any number of processes
at once (a unique key and ``INSERT ... ON CONFLICT DO NOTHING``, in SQLite and
PostgreSQL alike). Only finished runs are stored, ``complete`` or ``interrupted``: a
report still ``running`` is rewritten as its run goes on (and one left ``running`` by a
killed run never finished), so it is refused with ``NotFinishedError``. Each report goes
in as one transaction: all of it or nothing.

``series`` answers the question a trend asks: per case and metric, each run's per-sample
values in time order, with what identifies the run (machine, backend version, config,
model digest, lmgauge version, commit), so that only like runs are compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from lmgauge.errors import ConfigError
from lmgauge.report import load_report
from lmgauge.store_schema import (
    cases,
    connect,
    display_url,
    metric_values,
    migrate,
    normalize_url,
    runs,
    store_error,
    write_transaction,
)

FINISHED = ("complete", "interrupted")


class NotFinishedError(ConfigError):
    """A report whose run has not finished (status ``running``): not stored."""


@dataclass(frozen=True)
class StoredSeriesPoint:
    run_id: int
    started_utc: str  # ISO 8601, the report's started_utc
    machine_id: str | None
    profile: str
    backend: str
    backend_version: str | None
    config_sha256: str | None
    model_digest: str | None
    lmgauge_version: str | None
    git_commit: str | None
    case_id: str
    metric: str
    values: tuple[float, ...]  # that run's per-sample values of the metric


@dataclass(frozen=True)
class IngestResult:
    stored: bool  # False: the run was already there
    run_id: int
    differs: bool = False  # already there, from a report whose content differs


@dataclass(frozen=True)
class _Case:
    row: dict[str, Any]
    values: dict[str, list[float]]


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _utc(value: Any, path: Path) -> str:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"report {path} is malformed: started_utc {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _samples(values: Any, path: Path, case_id: str, metric: str) -> list[float]:
    if not isinstance(values, list):
        raise ConfigError(f"report {path} is malformed: {case_id} {metric} is not a list")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"report {path} is malformed: {case_id} {metric}: {exc}") from exc


def _run_row(report: Mapping[str, Any], path: Path) -> dict[str, Any]:
    backend = report.get("backend")
    backend_name = backend.get("name") if isinstance(backend, Mapping) else backend
    if not backend_name or not report.get("profile") or not report.get("started_utc"):
        raise ConfigError(
            f"report {path} is malformed: it lacks its backend, profile or started_utc"
        )
    machine_id = report.get("machine_id") or None  # reports before it was recorded: null
    config = (report.get("run") or {}).get("config") or {}
    config_sha256 = report.get("config_sha256") or config.get("sha256")
    started = _utc(report["started_utc"], path)
    identity = [started, machine_id, report.get("host"), str(backend_name), report["profile"]]
    return {
        "report_key": hashlib.sha256(_canonical(identity)).hexdigest(),
        "content_sha256": hashlib.sha256(_canonical(report)).hexdigest(),
        "started_utc": started,
        "finished_utc": _text(report.get("finished_utc")),
        "status": str(report["status"]),
        "machine_id": _text(machine_id),
        "profile": str(report["profile"]),
        "backend": str(backend_name),
        "config_sha256": _text(config_sha256),
        "lmgauge_version": _text(report.get("lmgauge_version")),
        "git_commit": _text(report.get("git_commit")),
        "host": json.dumps(report.get("host"), sort_keys=True),
        "source_name": path.name,
        "ingested_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _case_rows(report: Mapping[str, Any], path: Path) -> list[_Case]:
    found = []
    for case_id, case in report["cases"].items():
        if not isinstance(case, Mapping):
            raise ConfigError(f"report {path} is malformed: case {case_id} is not an object")
        environment = case.get("environment") or {}
        values = case.get("values") or {}
        if not isinstance(environment, Mapping) or not isinstance(values, Mapping):
            raise ConfigError(f"report {path} is malformed: case {case_id}")
        context = environment.get("context_tokens")
        row = {
            "case_id": str(case_id),
            "model": _text(environment.get("model")),
            "model_digest": _text(environment.get("model_digest")),
            "quantization": _text(environment.get("quantization")),
            "context_tokens": int(context) if isinstance(context, int) else None,
            "backend_version": _text(environment.get("backend_version")),
            "environment": json.dumps(environment, sort_keys=True),
            "error": _text(case.get("error")),
        }
        samples = {
            str(metric): _samples(v, path, str(case_id), str(metric))
            for metric, v in values.items()
        }
        found.append(_Case(row, {m: v for m, v in samples.items() if v}))
    return found


def _values_json(values: list[float]) -> str:
    # a NaN stays NaN, as the report has it (Python's JSON dialect, as reports are written)
    return json.dumps(values, allow_nan=True)


class Store:
    """A results store: ``Store.open(url)``, then ``ingest_report`` and ``series``."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """The store at ``url`` (None: the default SQLite file), its schema created or
        migrated forward; a store newer than this lmgauge is refused (ConfigError)."""
        normalized = normalize_url(url)
        engine = connect(normalized)
        try:
            migrate(engine, normalized)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise store_error(normalized, exc) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, normalized)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def __str__(self) -> str:
        return display_url(self.url)

    def _insert(self) -> Any:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(runs).on_conflict_do_nothing(index_elements=["report_key"])

    def ingest(self, path: Path) -> IngestResult:
        """Store the run of the report at ``path`` in one transaction, unless it is there."""
        try:
            report = load_report(path)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc}: not stored; give run reports only (reports/<UTC>-<backend>-"
                "<profile>.json, as pytest benchmarks writes them)"
            ) from exc
        status = report.get("status")
        if status not in FINISHED:
            raise NotFinishedError(
                f"{path} is a run that has not finished (status {status!r}): only finished "
                "runs (complete or interrupted) are stored; ingest it when its run ends "
                "(a run killed outright stays 'running' and is never stored)"
            )
        try:
            run = _run_row(report, path)
            case_rows = _case_rows(report, path)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-made file
            raise ConfigError(
                f"report {path} is malformed ({type(exc).__name__}: {exc}): not stored"
            ) from exc
        try:
            with write_transaction(self._engine) as conn:
                run_id = conn.execute(self._insert().values(run).returning(runs.c.id)).scalar()
                if run_id is None:
                    there = conn.execute(
                        select(runs.c.id, runs.c.content_sha256).where(
                            runs.c.report_key == run["report_key"]
                        )
                    ).one()
                    differs = there.content_sha256 != run["content_sha256"]
                    return IngestResult(False, there.id, differs)
                values = []
                for case in case_rows:
                    case_row_id = conn.execute(
                        insert(cases).values(run_id=run_id, **case.row).returning(cases.c.id)
                    ).scalar_one()
                    values += [
                        {
                            "case_row_id": case_row_id,
                            "metric": metric,
                            "sample_count": len(samples),
                            "sample_values": _values_json(samples),
                        }
                        for metric, samples in case.values.items()
                    ]
                if values:
                    conn.execute(insert(metric_values), values)
        except SQLAlchemyError as exc:
            raise store_error(self.url, exc) from exc
        return IngestResult(True, int(run_id))

    def ingest_report(self, path: Path) -> bool:
        """True if the run was newly stored, False if it was already there."""
        return self.ingest(path).stored

    def series(
        self,
        *,
        case_filter: str | None = None,
        metric: str | None = None,
        machine: str | None = None,
    ) -> list[StoredSeriesPoint]:
        """Per run, case and metric, the run's per-sample values, ordered by case id,
        metric and start time; ``case_filter`` keeps case ids containing it (any case),
        ``metric`` one metric, ``machine`` one machine id."""
        query = (
            select(
                runs.c.id,
                runs.c.started_utc,
                runs.c.machine_id,
                runs.c.profile,
                runs.c.backend,
                cases.c.backend_version,
                runs.c.config_sha256,
                cases.c.model_digest,
                runs.c.lmgauge_version,
                runs.c.git_commit,
                cases.c.case_id,
                metric_values.c.metric,
                metric_values.c.sample_values,
            )
            .select_from(
                metric_values.join(cases, cases.c.id == metric_values.c.case_row_id).join(
                    runs, runs.c.id == cases.c.run_id
                )
            )
            .order_by(cases.c.case_id, metric_values.c.metric, runs.c.started_utc, runs.c.id)
        )
        if case_filter:
            query = query.where(cases.c.case_id.icontains(case_filter, autoescape=True))
        if metric is not None:
            query = query.where(metric_values.c.metric == metric)
        if machine is not None:
            query = query.where(runs.c.machine_id == machine)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise store_error(self.url, exc) from exc
        return [
            StoredSeriesPoint(
                run_id=row[0],
                started_utc=row[1],
                machine_id=row[2],
                profile=row[3],
                backend=row[4],
                backend_version=row[5],
                config_sha256=row[6],
                model_digest=row[7],
                lmgauge_version=row[8],
                git_commit=row[9],
                case_id=row[10],
                metric=row[11],
                values=tuple(json.loads(row[12])),
            )
            for row in rows
        ]

    def counts(self) -> dict[str, int]:
        """How many runs, cases and (case, metric) series the store holds."""
        try:
            with self._engine.connect() as conn:
                return {
                    table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                    for table in (runs, cases, metric_values)
                }
        except SQLAlchemyError as exc:
            raise store_error(self.url, exc) from exc
