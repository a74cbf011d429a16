"""A fleet ingesting into one results store at once: does every run go in exactly once?

N synthetic reports (tests/data/report-contexts.json's structure, each with its own start
time, machine and values) are dealt to P processes, some of them (--overlap) to two
processes, which open the store together (a fresh store: they race to create its schema
too), wait at a barrier, then ingest their share as fast as they can. Then the store must
hold every run once, with all its cases and series, and no process may have had an error.

    .venv/bin/python scripts/store_fleet.py                 # 1,000 reports, 8 processes,
                                                            # a temporary PostgreSQL + SQLite
    .venv/bin/python scripts/store_fleet.py --store postgresql://u@host/db --json

Exit 0 when every check holds, 1 otherwise. --json prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmgauge.store import Store
from lmgauge.testing.postgres import start_server
from lmgauge.testing.reports import write_synthetic_reports

TEMPLATE = Path(__file__).resolve().parent.parent / "tests" / "data" / "report-contexts.json"


def _worker(url: str, paths: list[str], barrier: Any, results: Any) -> None:
    outcome: dict[str, Any] = {"stored": 0, "already": 0, "errors": []}
    try:
        store = Store.open(url)
    except Exception as exc:
        outcome["errors"].append(f"open: {exc}")
        barrier.wait()
        results.put(outcome)
        return
    barrier.wait()
    with store:
        for path in paths:
            try:
                if store.ingest_report(Path(path)):
                    outcome["stored"] += 1
                else:
                    outcome["already"] += 1
            except Exception as exc:
                outcome["errors"].append(f"{path}: {type(exc).__name__}: {exc}")
    results.put(outcome)


def deal(count: int, processes: int, every: int, seed: int) -> list[list[int]]:
    """Report i to process i % P, and every ``every``-th one to the next process too.
    Each process takes the reports it shares first, in index order, so that the two
    holders of one report mostly ingest it at the same moment; the rest in random order."""
    shares: list[list[int]] = [[] for _ in range(processes)]
    twice = set()
    for index in range(count):
        shares[index % processes].append(index)
        if every and index % every == 0 and processes > 1:
            shares[(index + 1) % processes].append(index)
            twice.add(index)
    rng = random.Random(seed)
    for share in shares:
        rng.shuffle(share)
        share.sort(key=lambda i: (i not in twice, i if i in twice else 0))
    return shares


def run_fleet(url: str, paths: list[Path], processes: int, every: int) -> dict[str, Any]:
    template = json.loads(TEMPLATE.read_text())
    cases = len(template["cases"])
    series = sum(len([v for v in c["values"].values() if v]) for c in template["cases"].values())
    shares = deal(len(paths), processes, every, seed=1)
    # fork where there is one: the children start at once, with lmgauge imported; each
    # opens its own connection to the store after the fork
    methods = multiprocessing.get_all_start_methods()
    context: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, results = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(
            target=_worker, args=(url, [str(paths[i]) for i in share], barrier, results)
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    barrier.wait()  # every process has opened the store: go
    started = time.perf_counter()
    outcomes = [results.get(timeout=600) for _ in workers]
    wall_s = time.perf_counter() - started
    for worker in workers:
        worker.join()
    with Store.open(url) as store:
        counts = store.counts()
        one_metric = len(store.series(metric="decode_tokens_per_s"))
    given = sum(len(share) for share in shares)
    figures = {
        "store": url.split("://", 1)[0],
        "reports": len(paths),
        "processes": processes,
        "given_twice": given - len(paths),
        "stored": sum(o["stored"] for o in outcomes),
        "already_there": sum(o["already"] for o in outcomes),
        "errors": [e for o in outcomes for e in o["errors"]],
        "wall_s": round(wall_s, 2),
        "runs_in_store": counts["runs"],
        "cases_in_store": counts["cases"],
        "series_in_store": counts["metric_values"],
        "decode_points": one_metric,
    }
    figures["ok"] = (
        not figures["errors"]
        and figures["stored"] == len(paths) == counts["runs"]
        and figures["already_there"] == figures["given_twice"]
        and counts["cases"] == cases * len(paths)
        and counts["metric_values"] == series * len(paths)
        and one_metric == cases * len(paths)
        and all(worker.exitcode == 0 for worker in workers)
    )
    return figures


def describe(figures: dict[str, Any]) -> str:
    verdict = "OK" if figures["ok"] else "FAILED"
    errors = figures["errors"]
    return (
        f"{figures['store']}: {figures['reports']} reports ({figures['given_twice']} given to "
        f"two processes) by {figures['processes']} processes in {figures['wall_s']} s: "
        f"{figures['stored']} stored, {figures['already_there']} already there, "
        f"{len(errors)} errors; the store holds {figures['runs_in_store']} runs, "
        f"{figures['cases_in_store']} cases, {figures['series_in_store']} series: {verdict}"
        + "".join(f"\n  error: {e}" for e in errors[:10])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument(
        "--overlap-every", type=int, default=10, help="every Nth report goes to two processes"
    )
    parser.add_argument(
        "--store",
        action="append",
        help="a store URL, empty (repeatable; default: a temporary PostgreSQL server "
        "with fsync on, and a temporary SQLite file)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmgauge-fleet-") as folder:
        paths = write_synthetic_reports(TEMPLATE, Path(folder) / "reports", args.reports)
        server = None
        urls = args.store
        if not urls:
            server = start_server(durable=True)
            urls = [server.new_database(), f"sqlite:///{folder}/results.sqlite"]
        try:
            results = [run_fleet(url, paths, args.processes, args.overlap_every) for url in urls]
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for figures in results:
            print(describe(figures))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
