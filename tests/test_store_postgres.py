"""Many processes ingesting into one store at once (scripts/store_fleet.py, smaller): every
run stored once, nothing lost, no error; into a real PostgreSQL server and a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmgauge.testing.postgres import PostgresServer, PostgresUnavailableError, shared_server

FLEET = Path(__file__).parent.parent / "scripts" / "store_fleet.py"


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    try:
        return shared_server()
    except PostgresUnavailableError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_eight_processes_store_every_run_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
    else:
        url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    fleet = ["--reports", "400", "--processes", "8", "--overlap-every", "5", "--json"]
    done = subprocess.run(
        [sys.executable, str(FLEET), *fleet, "--store", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    (figures,) = json.loads(done.stdout)
    assert figures["errors"] == []
    assert figures["given_twice"] == 80
    assert (figures["stored"], figures["already_there"]) == (400, 80)
    assert (figures["runs_in_store"], figures["cases_in_store"]) == (400, 1200)
    assert figures["series_in_store"] == 400 * 33
    assert figures["decode_points"] == 1200
    assert figures["ok"], figures
    assert done.returncode == 0
