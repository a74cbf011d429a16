"""The results store's speed: ingesting 1,000 reports, and ``series`` over 10,000 runs,
in a SQLite file and a real PostgreSQL server (started here; skipped where it cannot).

The reports are synthetic (lmgauge.testing.reports: tests/data/report-contexts.json's
structure, 3 cases and 33 series each, with their own start, machine and values); every
one goes in through ``Store.ingest_report``, the path users take. Nothing is asserted
about time, machines are noisy: the figures go to ``extra_info``; only correctness is
asserted. Heavy: building 10,000 runs takes minutes on a 2-core machine.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from lmgauge.store import Store
from lmgauge.testing.postgres import PostgresServer, PostgresUnavailableError, shared_server
from lmgauge.testing.reports import write_synthetic_reports

pytestmark = pytest.mark.heavy

TEMPLATE = Path(__file__).parent.parent / "tests" / "data" / "report-contexts.json"
INGESTED = 1_000
RUNS = 10_000
CHUNK = 500  # reports on disk at once while building the 10,000-run store
CASES, SERIES = 3, 33  # per report of TEMPLATE


def _url(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'results.sqlite'}"
    try:
        server: PostgresServer = shared_server()
    except PostgresUnavailableError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    return server.new_database()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_synthetic_reports(TEMPLATE, tmp_path_factory.mktemp("reports"), INGESTED)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ingest_1000_reports(
    benchmark: BenchmarkFixture, kind: str, reports: list[Path], tmp_path: Path
) -> None:
    stores: list[Store] = []

    def fresh_store() -> tuple[tuple[Store], dict[str, object]]:
        folder = tmp_path / f"round-{len(stores)}"
        folder.mkdir()
        stores.append(Store.open(_url(kind, folder)))
        return (stores[-1],), {}

    elapsed: list[float] = []

    def ingest_all(store: Store) -> None:
        started = time.perf_counter()
        for path in reports:
            store.ingest_report(path)
        elapsed.append(time.perf_counter() - started)

    benchmark.pedantic(ingest_all, setup=fresh_store, rounds=2, iterations=1)  # type: ignore[no-untyped-call]
    for store in stores:
        assert store.counts() == {
            "runs": INGESTED,
            "cases": INGESTED * CASES,
            "metric_values": INGESTED * SERIES,
        }
        store.close()
    benchmark.extra_info["reports"] = INGESTED
    benchmark.extra_info["per_report_ms"] = round(min(elapsed) / INGESTED * 1000, 2)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def big_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, float]]:
    """A store of 10,000 runs, each ingested from its report file; and how long that took."""
    folder = tmp_path_factory.mktemp("big")
    store = Store.open(_url(request.param, folder))
    ingest_s = 0.0
    for first in range(0, RUNS, CHUNK):
        paths = write_synthetic_reports(TEMPLATE, folder / "chunk", CHUNK, first=first)
        started = time.perf_counter()
        for path in paths:
            assert store.ingest_report(path)
        ingest_s += time.perf_counter() - started
        shutil.rmtree(folder / "chunk")
    yield store, ingest_s
    store.close()


@pytest.mark.parametrize(
    ("case_filter", "metric", "points"),
    [
        ("ctx8192", "decode_tokens_per_s", RUNS),  # one case's trend: what a trend asks
        (None, "decode_tokens_per_s", RUNS * CASES),  # one metric, every case
        (None, None, RUNS * SERIES),  # everything
    ],
    ids=["one-case-one-metric", "one-metric", "everything"],
)
def test_series_over_10000_runs(
    benchmark: BenchmarkFixture,
    big_store: tuple[Store, float],
    case_filter: str | None,
    metric: str | None,
    points: int,
) -> None:
    store, ingest_s = big_store
    found: list[int] = []

    def query() -> None:
        found.append(len(store.series(case_filter=case_filter, metric=metric)))

    benchmark.pedantic(query, rounds=3, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert set(found) == {points}
    benchmark.extra_info["runs"] = RUNS
    benchmark.extra_info["points"] = points
    benchmark.extra_info["store_built_by_ingest_s"] = round(ingest_s, 1)
