"""``lmgauge store ingest | info``: run reports into the results store, and what it holds.

SQLAlchemy loads only when a store command runs, so ``lmgauge diff`` and the others do
not pay for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

STORE_HELP = (
    "the results store: a SQLite file path, sqlite:///PATH, or postgresql://USER@HOST:PORT/DB "
    "(default: $LMGAUGE_CACHE_DIR/results.sqlite, else ~/.cache/lmgauge/results.sqlite)"
)


def cmd_ingest(args: argparse.Namespace) -> int:
    from lmgauge.errors import ConfigError
    from lmgauge.store import NotFinishedError, Store

    counts = {"stored": 0, "already there": 0, "not finished": 0, "failed": 0}
    with Store.open(args.store) as store:
        for path in args.reports:
            try:
                result = store.ingest(path)
            except NotFinishedError as exc:
                counts["not finished"] += 1
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            except ConfigError as exc:  # this file; the others still go in
                counts["failed"] += 1
                print(f"error: {exc}", file=sys.stderr)
                continue
            if result.stored:
                counts["stored"] += 1
                print(f"stored   {path} (run {result.run_id})")
            else:
                counts["already there"] += 1
                note = (
                    "; this file differs from the report first stored, which is kept"
                    if result.differs
                    else ""
                )
                print(f"already  {path} (run {result.run_id}){note}")
        summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "stored")
        print(f"{summary} (store: {store})")
    return 2 if counts["failed"] else 0


def cmd_info(args: argparse.Namespace) -> int:
    from lmgauge.store import Store
    from lmgauge.store_schema import latest_version

    with Store.open(args.store) as store:
        counts = store.counts()
        print(f"store: {store} (schema version {latest_version()})")
        for table, n in counts.items():
            print(f"  {table}: {n}")
    return 0


def add_parser(commands: Any) -> None:
    """``store`` and its subcommands, on the ``lmgauge`` command's subparsers."""
    store = commands.add_parser(
        "store", help="the results store: many runs' reports in SQLite or PostgreSQL"
    )
    store_commands = store.add_subparsers(dest="store_command", required=True)
    ingest = store_commands.add_parser(
        "ingest",
        help="store run reports (each once, however often given; finished runs only)",
        description="Store each run report in the results store, in one transaction per "
        "report. A run already stored is not stored again. Reports of runs still going "
        "(status 'running') are skipped. Exit 2 if any file could not be stored.",
    )
    ingest.add_argument("reports", type=Path, nargs="+", help="run reports, e.g. reports/*.json")
    ingest.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    ingest.set_defaults(func=cmd_ingest)
    info = store_commands.add_parser("info", help="the store's schema version and its counts")
    info.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    info.set_defaults(func=cmd_info)
