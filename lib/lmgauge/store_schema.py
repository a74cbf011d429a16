"""The results store's tables, their migrations, and the connection to a store.

Schema history (``meta.schema_version``):
    1 -- ``runs`` (one per report, unique on the report's identity), ``cases`` (one per case
         of a run, with its environment) and ``metric_values`` (per case and metric, the
         run's per-sample values as a JSON array).

A store is a SQLite file or a PostgreSQL database, through one code path (SQLAlchemy Core;
psycopg 3 for PostgreSQL). Opening one brings its schema forward through ``MIGRATIONS``
in one transaction that only one process at a time may run (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: an advisory lock), and refuses a store newer than this lmgauge knows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError

from lmgauge import __version__
from lmgauge.errors import ConfigError

DEFAULT_FILE_NAME = "results.sqlite"
SQLITE_BUSY_TIMEOUT_S = 60.0  # a writer waits this long for another process's transaction
_PG_MIGRATION_LOCK = 0x6C6D6761  # pg_advisory_xact_lock key of schema migration ("lmga")
_WRITE = "lmgauge_write"  # execution option: this transaction writes (SQLite: IMMEDIATE)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # sha256 of the run's identity (started_utc, machine, host, backend, profile): the
    # same run ingested twice, or from a copy of its report, is one row
    Column("report_key", String(64), nullable=False, unique=True),
    Column("content_sha256", String(64), nullable=False),  # of the report's canonical JSON
    Column("started_utc", String(40), nullable=False),
    Column("finished_utc", String(40)),
    Column("status", String(16), nullable=False),
    Column("machine_id", String(64)),
    Column("profile", Text, nullable=False),
    Column("backend", Text, nullable=False),
    Column("config_sha256", String(64)),
    Column("lmgauge_version", Text),
    Column("git_commit", String(64)),
    Column("host", Text),  # the report's host fingerprint, JSON
    Column("source_name", Text),  # the file name it was first ingested from
    Column("ingested_utc", String(40), nullable=False),
    Index("runs_machine_started", "machine_id", "started_utc"),
    Index("runs_started", "started_utc"),
)

cases = Table(
    "cases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("case_id", Text, nullable=False),
    Column("model", Text),
    Column("model_digest", Text),
    Column("quantization", Text),
    Column("context_tokens", Integer),
    Column("backend_version", Text),
    Column("environment", Text),  # the case's whole environment, JSON
    Column("error", Text),
    Index("cases_run_case", "run_id", "case_id", unique=True),
    Index("cases_case_id", "case_id"),
)

metric_values = Table(
    "metric_values",
    metadata,
    Column(
        "case_row_id",
        Integer,
        ForeignKey("cases.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("metric", String(200), primary_key=True),
    Column("sample_count", Integer, nullable=False),
    Column("sample_values", Text, nullable=False),  # JSON array of floats, in sample order
    Index("metric_values_metric", "metric"),
)


def _create_version_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[meta, runs, cases, metric_values])


MIGRATIONS: list[Callable[[Connection], None]] = [_create_version_1]
"""Step i takes a store from schema version i to i + 1. Append, never edit a step: a new
version is a new step (ALTER TABLE ...), and the table definitions above follow it."""


def latest_version() -> int:
    return len(MIGRATIONS)


def default_path() -> Path:
    """``$LMGAUGE_CACHE_DIR/results.sqlite``, or ``~/.cache/lmgauge/results.sqlite``."""
    root = os.environ.get("LMGAUGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmgauge") / DEFAULT_FILE_NAME


def normalize_url(url: str | None) -> str:
    """A SQLAlchemy URL for a store given as None (the default file), a file path,
    ``sqlite:///PATH`` or ``postgresql://...`` (driven by psycopg 3)."""
    if url is None or url == "default":
        return f"sqlite:///{default_path()}"
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().absolute()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        return url
    raise ConfigError(
        f"results store {url!r}: unknown kind {scheme!r}; give a SQLite file path, "
        "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
    )


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        folder = Path(database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot make the results store's folder {folder}: {exc.strerror or exc}; "
                "give a writable path with --store"
            ) from exc
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling starts transactions late and never
        # IMMEDIATE; take it over (SQLAlchemy's documented recipe) so that a writing
        # transaction holds the write lock from its first statement and waits for
        # another process's instead of failing with "database is locked".
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
        cursor.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        writing = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


def connect(url: str) -> Engine:
    """An engine for the store at ``url`` (normalized), not yet connected."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"results store {display_url(url)}: PostgreSQL needs psycopg 3, which is not "
            "installed: pip install 'psycopg[binary]>=3.1' (scripts/setup.sh installs it)"
        ) from exc


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One writing transaction: committed at the end, rolled back on any error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


def schema_version(conn: Connection) -> int:
    """0 for an empty database."""
    if not inspect(conn).has_table("meta"):
        return 0
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(engine: Engine, url: str) -> int:
    """Bring the store's schema to ``latest_version()``; returns the version it had."""
    latest = latest_version()
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":  # one migrating process at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        found = schema_version(conn)
        if found > latest:
            raise ConfigError(
                f"results store {display_url(url)} has schema version {found}, newer than "
                f"this lmgauge {__version__} knows (schema version {latest}): upgrade lmgauge "
                "(pip install -U lmgauge) to use this store, or give another with --store"
            )
        for step in MIGRATIONS[found:]:
            step(conn)
        if found == 0:
            conn.execute(meta.insert().values(key="schema_version", value=str(latest)))
        elif found < latest:
            conn.execute(
                meta.update().where(meta.c.key == "schema_version").values(value=str(latest))
            )
    return found


def store_error(url: str, exc: SQLAlchemyError) -> ConfigError:
    """A database error at the boundary, as one line naming the store and the fix."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = reason[0] if reason else type(exc).__name__
    shown = display_url(url)
    if url.startswith("sqlite"):
        fix = "give a writable path with --store, or move the damaged file aside"
    elif isinstance(exc, OperationalError | InterfaceError):  # no connection, or lost it
        fix = "start PostgreSQL there, or fix the URL given with --store"
    else:
        fix = "check that the database is an lmgauge results store (lmgauge store info)"
    return ConfigError(f"cannot use the results store {shown}: {first}; {fix}")
