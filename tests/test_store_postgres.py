"""Many processes ingesting into one store at once (scripts/store_fleet.py, smaller): every
run stored once, nothing lost, no error; into a real PostgreSQL server and a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FLEET = Path(__file__).parent.parent / "scripts" / "store_fleet.py"


def test_eight_processes_store_every_run_once(store_url: str) -> None:
    fleet = ["--reports", "400", "--processes", "8", "--overlap-every", "5", "--json"]
    done = subprocess.run(
        [sys.executable, str(FLEET), *fleet, "--store", store_url],
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
