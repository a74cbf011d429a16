"""The results store (store.py, store_schema.py, store_cli.py): the same tests against a
SQLite file and a real PostgreSQL server (started here; skipped, with the reason, where
it cannot start)."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text

from lmgauge import store as store_module
from lmgauge import store_schema
from lmgauge.cli import main
from lmgauge.errors import ConfigError
from lmgauge.machine import machine_identity
from lmgauge.report import ReportWriter
from lmgauge.store import NotFinishedError, Store
from lmgauge.testing.reports import MACHINES, synthetic_report

pytest_plugins = ["pytester"]

DATA = Path(__file__).parent / "data"
CONTEXTS = DATA / "report-contexts.json"  # three cases, no machine_id (an older report)
REGRESSION = DATA / "report-regression.json"


@pytest.fixture
def write_report(tmp_path: Path) -> Callable[..., Path]:
    """A report file: report-contexts.json's structure with its own start and values."""
    template = json.loads(CONTEXTS.read_text())
    reports = tmp_path / "reports"
    reports.mkdir()

    def write(index: int, **changes: Any) -> Path:
        report = synthetic_report(template, index)
        report.update(changes)
        path = reports / f"report-{index}-{len(list(reports.iterdir()))}.json"
        path.write_text(json.dumps(report))
        return path

    return write


def _execute(url: str, sql: str) -> list[Any]:
    engine = create_engine(store_schema.normalize_url(url))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def test_a_report_round_trips_with_its_identity(store_url: str) -> None:
    report = json.loads(CONTEXTS.read_text())
    with Store.open(store_url) as store:
        assert store.ingest_report(CONTEXTS) is True
        points = store.series()
    case_ids = sorted(report["cases"])
    expected = sorted(
        (case_id, metric, tuple(values))
        for case_id in case_ids
        for metric, values in report["cases"][case_id]["values"].items()
    )
    assert [(p.case_id, p.metric, p.values) for p in points] == expected  # ordered, exact
    point = points[0]
    environment = report["cases"][point.case_id]["environment"]
    assert point.started_utc == report["started_utc"]
    assert (point.profile, point.backend) == (report["profile"], "llamacpp")
    assert point.backend_version == environment["backend_version"]
    assert point.model_digest == environment["model_digest"]
    assert (point.lmgauge_version, point.git_commit) == ("0.1.0", report["git_commit"])
    assert point.machine_id is None  # written before reports recorded it: null
    assert point.config_sha256 is None


def test_the_same_run_is_stored_once(store_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(json.loads(CONTEXTS.read_text()), indent=4))
    edited = json.loads(CONTEXTS.read_text())
    edited["messages"].append("edited after the run")
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with Store.open(store_url) as store:
        assert store.ingest_report(CONTEXTS) is True
        assert store.ingest_report(CONTEXTS) is False
        assert store.ingest_report(copy) is False  # another file, the same run
        result = store.ingest(tmp_path / "edited.json")
        assert (result.stored, result.differs) == (False, True)  # the first one is kept
        assert store.ingest_report(REGRESSION) is True
        assert store.counts()["runs"] == 2
        assert store.counts()["cases"] == 3 + len(json.loads(REGRESSION.read_text())["cases"])


def test_series_filters_and_orders_by_case_metric_and_time(
    store_url: str, write_report: Callable[..., Path]
) -> None:
    with Store.open(store_url) as store:
        for index in (5, 1, 4, 0, 3, 2):  # ingested out of order
            store.ingest_report(write_report(index))
        points = store.series(case_filter="CTX8192", metric="decode_tokens_per_s")
        assert [p.case_id for p in points] == ["llamacpp-qwen3-0.6b-Q4_K_M-ctx8192"] * 6
        assert [p.started_utc for p in points] == sorted(p.started_utc for p in points)
        on_one = store.series(metric="ttft_s", machine=MACHINES[1])
        assert {p.machine_id for p in on_one} == {MACHINES[1]}
        assert len(on_one) == 3 * 2  # three cases, reports 1 and 5 (machine = index % 4)
        assert store.series(case_filter="%") == []  # a literal substring, no wildcards
        assert store.series(metric="no_such_metric") == []
        everything = store.series()
        keys = [(p.case_id, p.metric, p.started_utc) for p in everything]
        assert keys == sorted(keys)
        assert len(everything) == 6 * 33


def test_only_finished_runs_are_stored(store_url: str, write_report: Callable[..., Path]) -> None:
    with Store.open(store_url) as store:
        with pytest.raises(NotFinishedError, match=r"status 'running'.*when its run ends"):
            store.ingest(write_report(0, status="running"))
        assert store.ingest_report(write_report(1, status="interrupted")) is True
        assert store.counts()["runs"] == 1


def test_a_report_goes_in_whole_or_not_at_all(
    store_url: str, write_report: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_report(0)
    real = store_module._values_json
    seen: list[int] = []

    def fail_on_the_second_case(values: list[float]) -> str:
        seen.append(1)
        if len(seen) > 11:  # the run and its first case's rows are written by now
            raise RuntimeError("the disk is full")
        return real(values)

    with Store.open(store_url) as store:
        monkeypatch.setattr(store_module, "_values_json", fail_on_the_second_case)
        with pytest.raises(RuntimeError, match="disk is full"):
            store.ingest(path)
        assert store.counts() == {"runs": 0, "cases": 0, "metric_values": 0}
        monkeypatch.setattr(store_module, "_values_json", real)
        assert store.ingest_report(path) is True
        assert store.counts() == {"runs": 1, "cases": 3, "metric_values": 33}


def test_the_report_records_machine_and_config(tmp_path: Path, store_url: str) -> None:
    def start(run: dict[str, Any]) -> ReportWriter:
        return ReportWriter.start(
            tmp_path, backend={"name": "llamacpp"}, profile="p", host={"cpu": "x"}, run=run
        )

    plain = start({})
    assert plain.data["machine_id"] == (machine_identity().digest or None)
    assert plain.data["config_sha256"] is None
    gated = start({"config": {"path": "configs/x.toml", "sha256": "ab" * 32}})
    gated.path = tmp_path / "gated.json"  # both started within the same second
    gated.data["started_utc"] = "2026-01-01T00:00:00+00:00"
    gated.finish("complete", failed_tests=0, exit_code=0)
    assert gated.data["config_sha256"] == "ab" * 32
    with Store.open(store_url) as store:
        assert store.ingest_report(gated.path) is True
        run = store.series()
    assert run == []  # no case measured; the run is stored all the same
    stored = _execute(store_url, "SELECT machine_id, config_sha256 FROM runs")
    assert [tuple(row) for row in stored] == [(gated.data["machine_id"], "ab" * 32)]


def test_a_store_migrates_forward(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.open(store_url) as store:
        store.ingest_report(CONTEXTS)
    assert _execute(store_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]

    def add_notes(conn: Connection) -> None:  # a version 2 as a later lmgauge may have it
        conn.execute(text("ALTER TABLE runs ADD COLUMN note TEXT"))
        conn.execute(text("UPDATE runs SET note = 'migrated'"))

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, add_notes])
    with Store.open(store_url) as store:
        assert len(store.series()) == 33  # the runs stored at version 1 are all there
        assert store.ingest_report(REGRESSION) is True
    assert _execute(store_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert _execute(store_url, "SELECT note FROM runs ORDER BY id") == [("migrated",), (None,)]
    with Store.open(store_url):  # at the latest version: nothing runs again
        pass


def test_a_newer_store_is_refused(store_url: str) -> None:
    Store.open(store_url).close()
    _execute(store_url, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(ConfigError, match=r"schema version 7, newer .*\(schema version 1\): upgr"):
        Store.open(store_url)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "results.sqlite"  # the folder is made
    Store.open(str(path)).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_default_store_is_in_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMGAUGE_CACHE_DIR", str(tmp_path))
    with Store.open() as store:
        assert store.ingest_report(CONTEXTS) is True
    assert (tmp_path / "results.sqlite").exists()


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_text("not a database, " * 100)
    with pytest.raises(ConfigError, match=r"results store sqlite:///.*results.sqlite: file is not"):
        Store.open(str(path))


def test_an_unknown_url_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'mysql'; give a SQLite file path"):
        Store.open("mysql://localhost/x")


def test_cli_ingest_stores_the_good_files_and_names_the_bad(
    tmp_path: Path, write_report: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "results.sqlite")
    not_json = tmp_path / "notes.json"
    not_json.write_text("{ not json")
    not_report = tmp_path / "other.json"
    not_report.write_text('{"model": "x"}')
    good, running = write_report(0), write_report(1, status="running")
    files = [str(p) for p in (not_json, good, not_report, running, CONTEXTS, good)]
    assert main(["store", "ingest", *files, "--store", url]) == 2
    out, err = capsys.readouterr()
    assert f"stored   {good} (run 1)" in out
    assert f"already  {good} (run 1)" in out
    assert "2 stored, 1 already there, 1 not finished, 2 failed (store: sqlite:///" in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert f"{not_json} cannot be read" in errors[0]
    assert f"{not_report} is not an lmgauge report" in errors[1]
    assert all("give run reports only" in line for line in errors)
    assert f"skipped: {running} is a run that has not finished" in err
    assert main(["store", "ingest", str(good), "--store", url]) == 0
    assert main(["store", "info", "--store", url]) == 0
    assert "runs: 2" in capsys.readouterr().out


def test_cli_an_unreachable_postgresql_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://someone:secret@127.0.0.1:9/lmgauge"  # port 9: discard, nothing there
    assert main(["store", "ingest", str(CONTEXTS), "--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: cannot use the results store postgresql+psycopg://someone:***@")
    assert "secret" not in err
    assert err.endswith("start PostgreSQL there, or fix the URL given with --store")


def test_the_store_loads_sqlalchemy_only_when_used() -> None:
    import subprocess

    code = "import sys, lmgauge.cli; print('sqlalchemy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


PLUGIN_SUITE = """
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")
"""


def test_pytest_stores_the_run_at_its_end(pytester: pytest.Pytester) -> None:
    """--lmgauge-store: the finished report goes in; an unusable store keeps the report,
    says how to store it later, and leaves the run's outcome alone."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_ollama import FakeModel, FakeOllama

    pytester.makepyfile(test_suite=PLUGIN_SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    tag = "qwen2.5:7b-instruct-q4_K_M"  # the catalog's Ollama name of qwen3-7b at Q4_K_M
    url = str(pytester.path / "results.sqlite")
    args = ["--lmgauge-backend", "ollama", "--lmgauge-models", "qwen3-7b"]
    args += ["--lmgauge-quants", "Q4_K_M", "--lmgauge-contexts", "4096"]
    args += ["--lmgauge-samples", "3", "--lmgauge-max-tokens", "4", "-p", "no:cacheprovider"]
    args += ["--lmgauge-disturbance-limit", "1"]  # a busy shared machine is not the point
    with FakeOllama({tag: FakeModel(size=4_680_000_000)}, ttft_s=0.01, itl_s=0.001) as fake:
        stored = pytester.runpytest_subprocess(
            *args, "--lmgauge-url", fake.url, "--lmgauge-store", url
        )
        broken = pytester.runpytest_subprocess(
            *args, "--lmgauge-url", fake.url, "--lmgauge-store", "postgresql://x@127.0.0.1:9/x"
        )
    stored.assert_outcomes(passed=1)
    stored.stdout.fnmatch_lines([f"lmgauge: stored sqlite:///{url} (run 1)"])
    broken.assert_outcomes(passed=1)
    assert broken.ret == 0
    broken.stdout.fnmatch_lines(
        [
            "lmgauge: could not store the run: cannot use the results store postgresql*"
            "*the report is kept: store it later with lmgauge store ingest reports/*.json "
            "--store postgresql://x@127.0.0.1:9/x"
        ]
    )
    reports = sorted((pytester.path / "reports").glob("*-ollama-*.json"))
    assert len(reports) == 2
    unknown = pytester.runpytest_subprocess(*args, "--lmgauge-store", "mysql://h/x")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--lmgauge-store: results store 'mysql://h/x': unknown kind*"])
    with Store.open(url) as store:
        points = store.series(metric="decode_tokens_per_s")
        assert store.ingest_report(reports[-1]) is True  # the one the broken store missed
    assert len(points) == 1
    assert points[0].machine_id == (machine_identity().digest or None)
    assert len(points[0].values) == 3


def test_a_malformed_report_is_named_and_nothing_is_stored(
    store_url: str, write_report: Callable[..., Path]
) -> None:
    bad_values = json.loads(write_report(0).read_text())
    next(iter(bad_values["cases"].values()))["values"]["ttft_s"] = [0.1, "fast"]
    (bad := write_report(1)).write_text(json.dumps(bad_values))
    no_backend = write_report(2, backend=None)
    with Store.open(store_url) as store:
        with pytest.raises(ConfigError, match=r"is malformed: .* ttft_s: could not convert"):
            store.ingest(bad)
        with pytest.raises(ConfigError, match=r"is malformed: it lacks its backend"):
            store.ingest(no_backend)
        assert store.counts()["runs"] == 0


def test_a_store_in_a_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot make the results store's folder .*/file: "):
        Store.open(str(tmp_path / "file" / "results.sqlite"))
