"""A throwaway PostgreSQL server for the results store's tests and scripts.

``start_server()`` runs initdb in a new temporary folder and starts postgres on a free
loopback port, with its unix socket in that folder; ``stop()`` stops it and deletes the
folder. postgres refuses to run as root, so as root it runs as the ``postgres`` user
(through ``runuser``), and the folder is that user's. Where it cannot start,
``PostgresUnavailableError`` says exactly why (for a test's skip reason).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lmgauge.errors import LmgaugeError

SUPERUSER = "lmgauge"  # the cluster's superuser (trust authentication, loopback only)
INITDB_OPTIONS = ("-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync")
_databases = itertools.count(1)
_shared: PostgresServer | None = None


class PostgresUnavailableError(LmgaugeError):
    """No PostgreSQL server could be started here; the message says why."""


def find_bin_dir() -> Path:
    """The folder of initdb, pg_ctl and postgres: $LMGAUGE_PG_BIN, Debian's
    /usr/lib/postgresql/<newest>/bin, or PATH."""
    candidates = []
    if os.environ.get("LMGAUGE_PG_BIN"):
        candidates.append(Path(os.environ["LMGAUGE_PG_BIN"]))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresUnavailableError(
        "PostgreSQL's initdb, pg_ctl and postgres were not found ($LMGAUGE_PG_BIN, "
        "/usr/lib/postgresql/*/bin, PATH): install PostgreSQL (apt-get install postgresql)"
    )


def _run_as() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix that runs postgres as a non-root user, and that user's ids."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailableError(
            "running as root, and there is no 'postgres' user to run PostgreSQL as "
            "(postgres refuses root): create one, or run the tests as another user"
        ) from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailableError(
            "running as root without runuser(1) to run PostgreSQL as 'postgres' "
            "(postgres refuses root): install util-linux, or run as another user"
        )
    return [runuser, "-u", "postgres", "--"], (user.pw_uid, user.pw_gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@dataclass
class PostgresServer:
    directory: Path
    port: int
    bin_dir: Path
    run_as: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        name = f"lmgauge_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        _stop(self.run_as, self.bin_dir, self.directory)


def _tool(
    run_as: list[str], bin_dir: Path, tool: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*run_as, str(bin_dir / tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _stop(run_as: list[str], bin_dir: Path, directory: Path) -> None:
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        _tool(run_as, bin_dir, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    shutil.rmtree(directory, ignore_errors=True)


def start_server(*, durable: bool = False) -> PostgresServer:
    """A new server in a new temporary folder. ``durable``: fsync as in production
    (default off: tests need no crash safety, and it costs seconds on a slow disk)."""
    bin_dir = find_bin_dir()
    run_as, owner = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="lmgauge-pg-"))
    data, log = directory / "data", directory / "log"
    try:
        if owner is not None:
            os.chown(directory, *owner)
        init = _tool(run_as, bin_dir, "initdb", "-D", str(data), *INITDB_OPTIONS)
        if init.returncode != 0:
            raise PostgresUnavailableError(
                f"initdb failed (exit {init.returncode}): {_tail(init.stderr or init.stdout)}"
            )
        options = f"-k {directory} -c listen_addresses=127.0.0.1" + ("" if durable else " -F")
        problem = ""
        for _ in range(3):  # another process may take the free port first
            port = _free_port()
            started = _tool(
                run_as,
                bin_dir,
                "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"{options} -p {port}",
                "start",
            )
            if started.returncode == 0:
                return PostgresServer(directory, port, bin_dir, run_as)
            problem = _tail(log.read_text(errors="replace") if log.exists() else started.stderr)
        raise PostgresUnavailableError(f"postgres did not start: {problem}")
    except BaseException:
        _stop(run_as, bin_dir, directory)
        raise


def shared_server() -> PostgresServer:
    """One server for this process, started on first use and stopped at exit."""
    global _shared
    if _shared is None:
        _shared = start_server()
        atexit.register(_shared.stop)
    return _shared
