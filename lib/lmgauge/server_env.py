"""The environment of a running server process, and whether it matches a config.

Ollama reads its server settings (OLLAMA_FLASH_ATTENTION, OLLAMA_KV_CACHE_TYPE...) from
its environment at start-up and reports none of them over its API, so the only way to
check that the server under test runs the config under test is to read the environment
of its process: the process listening on the server's port, else one whose command line
is ``ollama serve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from lmgauge.config import ServerConfig
from lmgauge.settings_registry import REGISTRIES


@dataclass(frozen=True)
class ServerProcess:
    pid: int
    how: str  # how it was found
    environment: Mapping[str, str]


def _port(base_url: str) -> int | None:
    parts = urlsplit(base_url)
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def find_server_process(base_url: str, names: tuple[str, ...] = ("ollama",)) -> ServerProcess:
    """The process serving ``base_url`` on this host, with its environment.

    Raises LookupError with what was tried, or PermissionError when the process is found
    but its environment cannot be read (another user's process)."""
    port = _port(base_url)
    candidates: list[tuple[psutil.Process, str]] = []
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.pid is not None
            if listening and conn.laddr and conn.laddr.port == port:
                candidates.append((psutil.Process(conn.pid), f"listening on port {port}"))
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass  # macOS lists other processes' sockets only to root: fall back to names
    for process in psutil.process_iter(["name", "cmdline"]):
        name = (process.info.get("name") or "").lower()
        cmdline = process.info.get("cmdline") or []
        if name in names and "serve" in cmdline:
            candidates.append((process, f"named {name!r} with 'serve' in its command line"))
    if not candidates:
        raise LookupError(
            f"no process listens on port {port} (or none this user may see), and none is "
            f"named {' or '.join(names)} with 'serve' in its command line"
        )
    process, how = candidates[0]
    try:
        environment = process.environ()
    except psutil.AccessDenied as exc:
        raise PermissionError(
            f"the server process (pid {process.pid}, {how}) belongs to another user: its "
            "environment cannot be read; run the benchmark as that user"
        ) from exc
    return ServerProcess(process.pid, how, dict(environment))


def environment_mismatches(
    wanted: Mapping[str, str],
    running: Mapping[str, str],
    defaults: Mapping[str, str | None],
) -> list[str]:
    """One line per setting whose value in the running server differs from ``wanted``.
    A setting the server does not have set counts as its default."""
    lines = []
    for key, value in sorted(wanted.items()):
        actual = running.get(key)
        effective = actual if actual is not None else defaults.get(key)
        if _normal(effective) == _normal(value):
            continue
        shown = repr(actual) if actual is not None else f"unset (default {defaults.get(key)!r})"
        lines.append(f"{key}: the config says {value!r}, the running server has {shown}")
    return lines


def _normal(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    return {"true": "1", "false": "0", "yes": "1", "no": "0"}.get(lowered, lowered)


def check_ollama_environment(config: ServerConfig, base_url: str) -> str | None:
    """Settings Ollama takes only at start-up ([server]) cannot be applied by lmgauge:
    the running server must have them. None when it does, else why not."""
    if not config.server:
        return None
    try:
        process = find_server_process(base_url)
    except (LookupError, PermissionError) as exc:
        return f"cannot check the [server] settings of {config.path}: {exc}"
    real, _ = REGISTRIES["ollama"]
    wanted = {k: str(v) for k, v in config.server.items()}
    defaults = {k: s.default for k, s in real.items()}
    mismatches = environment_mismatches(wanted, process.environment, defaults)
    if not mismatches:
        return None
    return (
        f"the running Ollama server (pid {process.pid}) does not run {config.path}: "
        + "; ".join(mismatches)
        + ". Restart it with that environment (e.g. `OLLAMA_FLASH_ATTENTION=1 ollama serve`)"
    )
