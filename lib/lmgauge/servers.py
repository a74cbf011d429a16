"""Servers lmgauge starts and stops itself: configs with a [server.start] table.

A paired comparison restarts the server between arms with each arm's [server] settings, so
the settings under test are the ones the server runs with. ``build_command`` turns a config
into an argv and environment (a pure function); ``ManagedServer`` runs them::

    with ManagedServer.from_config(config, log_dir=report_dir, model=path) as server:
        backend = backends.get("openai", base_url=server.base_url)

How [server] settings reach each kind of server:

- ollama: environment variables of ``ollama serve``, which reads them once at start-up
  (ollama envconfig/config.go); OLLAMA_HOST is set to host:port.
- mlx_lm, llama-server, llama_cpp.server: ``--key value`` flags after the command. A
  boolean is a bare ``--key`` when true. When false, mlx_lm (store_true flags,
  mlx_lm/server.py) gets nothing; llama-server gets ``--no-key`` (llama.cpp
  common/arg.cpp pairs its boolean flags with a --no- form); llama_cpp.server takes
  ``--key true|false`` (llama-cpp-python llama_cpp/server/cli.py parses booleans as
  values). A table becomes JSON (e.g. mlx_lm's --chat-template-args).
- mlx_lm also gets ``--prompt-cache-size 0`` unless [server] or the command sets it: its
  prefix cache (10 entries by default) cannot be turned off per request, and lmgauge's
  samples each pay their own prefill (mlx_lm/server.py reads no ``cache_prompt``).
- lmstudio: ``lms server start --port P`` (plus ``--cors``), which returns once LM Studio
  serves; stopping is ``lms server stop``. Load settings stay with the backend's REST load.

A server runs in its own session (so its own process group), stdout and stderr in its log;
stop() sends SIGTERM to the group, then SIGKILL after stop_grace_s. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from lmgauge.config import OWNED_KEYS, ServerConfig, ServerKind, ServerStart
from lmgauge.errors import BackendUnavailableError, ConfigError, ServerStartError
from lmgauge.llama_tools import find_llama_tool

LOG_TAIL_LINES = 20
KILL_WAIT_S = 5.0  # after SIGKILL: only a process stuck in the kernel takes longer
PROBE_TIMEOUT_S = 2.0  # one readiness request
NEEDS_MODEL: tuple[ServerKind, ...] = ("llama-server", "llama_cpp.server")
SECRET = re.compile(r"key|token|secret|passw", re.IGNORECASE)
MLX_PROMPT_CACHE_FLAG = "--prompt-cache-size"


def default_command(kind: ServerKind, *, with_model: bool) -> list[str]:
    """The kind's usual command line, with placeholders."""
    listen = ["--host", "{host}", "--port", "{port}"]
    model = ["--model", "{model}"] if with_model else []
    if kind == "ollama":
        return ["ollama", "serve"]
    if kind == "lmstudio":
        return ["lms", "server", "start", "--port", "{port}"]
    if kind == "mlx_lm":  # `python -m mlx_lm.server` prints a deprecation notice
        return [sys.executable, "-m", "mlx_lm", "server", *listen, *model]
    if kind == "llama_cpp.server":
        return [sys.executable, "-m", "llama_cpp.server", *listen, *model]
    return [_llama_server_path(), *listen, *model]


def _llama_server_path() -> str:
    """The llama-server scripts/setup.sh built into the venv (or on PATH); the bare name
    when there is none, so that the failed start reports it with its log and fix."""
    try:
        return str(find_llama_tool("llama-server"))
    except BackendUnavailableError:
        return "llama-server"


def build_command(
    source: ServerConfig | ServerStart,
    model: str | Path | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment variables (on top of the current environment) that
    start the server. ``settings`` defaults to a config's [server] keys; ``port`` to the
    spec's, which must then not be 0."""
    if isinstance(source, ServerConfig):
        if source.start is None:
            raise ConfigError(f"{source.path} has no [server.start]: lmgauge cannot start it")
        spec, settings = source.start, source.server if settings is None else settings
    else:
        spec, settings = source, settings or {}
    port = spec.port if port is None else port
    if not port:
        raise ValueError("build_command needs a port: pick a free one first (ManagedServer does)")
    if owned := sorted(set(settings) & set(OWNED_KEYS[spec.kind])):
        raise ConfigError(
            f"[server] sets {', '.join(owned)}, which lmgauge sets from [server.start] when it "
            f"starts {spec.kind}: remove them from [server]"
        )
    if model is None and spec.command is None and spec.kind in NEEDS_MODEL:
        raise ConfigError(f"{spec.kind} needs a model file to start: pass the case's model")
    argv = list(spec.command or default_command(spec.kind, with_model=model is not None))
    if model is None and any("{model}" in part for part in argv):
        raise ConfigError(f"[server.start].command has {{model}} but no model was given: {argv}")
    values = {"{host}": spec.host, "{port}": str(port), "{model}": str(model)}
    for i, part in enumerate(argv):  # str.replace, not format: JSON arguments have braces
        for placeholder, value in values.items():
            part = part.replace(placeholder, value)
        argv[i] = part
    env = dict(spec.env)
    if spec.kind == "ollama":
        env.update({key: _env_value(key, value) for key, value in settings.items()})
        listen = f"[{spec.host}]" if ":" in spec.host else spec.host
        env["OLLAMA_HOST"] = f"{listen}:{port}"
    else:
        for key, value in settings.items():
            argv += _flag(spec.kind, key, value)
    if spec.kind == "mlx_lm" and not any(a.startswith(MLX_PROMPT_CACHE_FLAG) for a in argv):
        argv += [MLX_PROMPT_CACHE_FLAG, "0"]  # size 0: every entry is evicted as it is stored
    return argv, env


def _env_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"  # Go's strconv.ParseBool reads both 1/0 and true/false
    if isinstance(value, dict | list):
        raise ConfigError(f"[server].{key} is an environment variable: give one value")
    return str(value)


def _flag(kind: ServerKind, key: str, value: Any) -> list[str]:
    flag = f"--{key}"
    if isinstance(value, bool):
        if kind == "llama_cpp.server":
            return [flag, "true" if value else "false"]
        if value:
            return [flag]
        negatable = kind == "llama-server" and not key.startswith("no-")
        return [f"--no-{key}"] if negatable else []
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    if isinstance(value, list):
        if kind != "llama_cpp.server":  # its list fields are argparse nargs="*"
            raise ConfigError(f"[server].{key}: {kind} takes one value per flag")
        return [flag, *map(str, value)]
    return [flag, str(value)]


def stop_command(spec: ServerStart) -> list[str] | None:
    """The command that stops a server lmgauge did not spawn itself: ``lms server stop``
    beside the ``lms`` that started it. None for the kinds stopped by signal."""
    if spec.kind != "lmstudio":
        return None
    command = list(spec.command or default_command("lmstudio", with_model=False))
    if "start" in command:
        return [*command[: command.index("start")], "stop"]
    return [command[0], "server", "stop"]


def shown(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    """A command line for logs and messages, with the values of secret-looking flags and
    variables (an API key, a token) masked: lmgauge writes no secret into a log."""
    words = [f"{k}={'***' if SECRET.search(k) else shlex.quote(v)}" for k, v in (env or {}).items()]
    masked = list(argv)
    for i, part in enumerate(argv):
        name, equals, _ = part.partition("=")
        if part.startswith("-") and SECRET.search(name):
            if equals:
                masked[i] = f"{name}=***"
            elif i + 1 < len(argv):
                masked[i + 1] = "***"
    return " ".join([*words, shlex.join(masked)])


def _url_host(host: str) -> str:
    """Where to connect to a server listening on ``host``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(host: str, port: int, path: str, timeout: float) -> bool:
    """Whether GET ``path`` answers 200."""
    connection = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read(65536)
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=1.0):
            return True
    except OSError:
        return False


def _listener_pids(port: int) -> list[int]:
    """The processes listening on ``port``; empty where the OS hides them (macOS lists
    other processes' sockets to root only)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return []
    return sorted(
        {
            c.pid
            for c in connections
            if c.status == psutil.CONN_LISTEN and c.pid and c.laddr and c.laddr.port == port
        }
    )


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group, children that moved away from the server
    included (psutil.Process checks its creation time, so a reused pid is never killed)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    live = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                live.append(process)
    return live


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    try:
        return process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the process has ended, without reaping it: while it is an unreaped zombie
    its pid, and so its process group id, cannot be reused, and signalling the group
    reaches only what it left behind."""
    if process.returncode is not None:
        return True
    try:
        return psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _terminate(process: subprocess.Popen[bytes], grace_s: float) -> int | None:
    """SIGTERM to the process group of ``process`` (a session leader), SIGKILL to what is
    left after ``grace_s``; its exit code, or None if even SIGKILL did not end it."""
    if process.returncode is not None:
        return process.returncode  # reaped already: its group id may belong to another now
    pgid = process.pid
    members = _tree(process.pid)  # before they are signalled and reparented
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    code = _wait(process, deadline)
    while time.monotonic() < deadline and (_alive(members) or _group(pgid)):
        time.sleep(0.05)
    leftovers = _alive(members) + _group(pgid)
    if code is None or leftovers:
        if code is None:  # the leader is unreaped: its group id cannot have been reused
            _signal_group(pgid, signal.SIGKILL)
        for leftover in leftovers:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        if code is None:
            code = _wait(process, time.monotonic() + KILL_WAIT_S)
    return code


def _kill_at_exit(pgid: int) -> None:
    # A server still running when the interpreter exits (a crashed test) must not outlive it.
    _signal_group(pgid, signal.SIGKILL)


class ManagedServer:
    """One server lmgauge starts, stops and restarts; see the module docstring."""

    def __init__(
        self,
        spec: ServerStart,
        settings: Mapping[str, Any] | None = None,
        *,
        log_dir: Path,
        model: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        self.spec = spec
        self.settings: dict[str, Any] = dict(settings or {})
        self.model = model
        self.name = name or spec.kind.replace(".", "-")  # in the log file's name
        self.exit_code: int | None = None  # of the last stop
        self._log_dir = Path(log_dir)
        self._log_path = None if spec.log is None else self._log_dir / spec.log
        self._log_offset = 0  # where the current start's output begins
        self._port = spec.port
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._detached = False  # lmstudio: serving through `lms`, not a child of ours

    @classmethod
    def from_config(
        cls,
        config: ServerConfig,
        *,
        log_dir: Path,
        model: str | Path | None = None,
        name: str | None = None,
    ) -> ManagedServer:
        if config.start is None:
            raise ConfigError(
                f"{config.path} has no [server.start] table, so lmgauge cannot start its "
                "server: add one (configs/README.md), or start the server yourself"
            )
        return cls(config.start, config.server, log_dir=log_dir, model=model, name=name)

    @property
    def log_path(self) -> Path:
        """The log file (its name is settled at the first start)."""
        return self._log_path or self._log_dir / f"server-{self.name}.log"

    @property
    def base_url(self) -> str:
        """The server's URL; a free port is picked on first use when the spec says 0."""
        if not self._port:
            self._port = _free_port(self.spec.host)
        return f"http://{_url_host(self.spec.host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._detached or (self._process is not None and not _exited(self._process))

    def pids(self) -> list[int]:
        """The server's processes (its runners and workers included), so that their CPU
        time is not counted as another process's disturbance."""
        roots = [self._process.pid] if self._process is not None else []
        if self._detached:
            roots += _listener_pids(self._port)
        return sorted({p.pid for root in roots for p in _alive(_tree(root))})

    def start(self) -> str:
        """Start the server and wait until its ready path answers 200; its base URL."""
        if self.running:
            return self.base_url
        if self._process is not None:  # it ended on its own: reap it and what it left
            self.stop()
        url = self.base_url
        argv, extra = build_command(self.spec, self.model, settings=self.settings, port=self._port)
        host = _url_host(self.spec.host)
        if _listening(host, self._port):
            raise ServerStartError(
                f"cannot start {self.spec.kind} on {url}: something already listens there "
                f"(pids {_listener_pids(self._port) or 'not visible'}). Stop it, or set "
                "[server.start].port = 0 for a free port"
            )
        # Unbuffered: the log then holds a Python server's last words when it is killed.
        env = {"PYTHONUNBUFFERED": "1", **os.environ, **extra}
        log = self._open_log(argv, extra)
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerStartError(
                f"cannot run `{shown(argv)}`: {exc.strerror or exc}. Install "
                f"{argv[0]}, or give its full path in [server.start].command"
            ) from exc
        finally:
            log.close()
        self._process, self.exit_code = process, None
        self._finalizer = weakref.finalize(self, _kill_at_exit, process.pid)
        self._wait_ready(process, argv, url)
        return url

    def _open_log(self, argv: list[str], extra: Mapping[str, str]) -> IO[bytes]:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        if self._log_path is None:  # first start: a name no other server's log has
            for n in itertools.count(1):
                suffix = "" if n == 1 else f"-{n}"
                candidate = self._log_dir / f"server-{self.name}{suffix}.log"
                with contextlib.suppress(FileExistsError):
                    candidate.open("x").close()
                    self._log_path = candidate
                    break
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"--- lmgauge {stamp}: {shown(argv, dict(sorted(extra.items())))}\n".encode())
        log.flush()
        self._log_offset = log.tell()
        return log

    def _wait_ready(self, process: subprocess.Popen[bytes], argv: list[str], url: str) -> None:
        spec = self.spec
        deadline = time.monotonic() + spec.ready_timeout_s
        # `lms server start` exits 0 once LM Studio serves; the server is not our child.
        lms = spec.kind == "lmstudio"
        host = _url_host(spec.host)
        while True:
            if not self._detached and _exited(process):
                if lms and _wait(process, time.monotonic() + KILL_WAIT_S) == 0:
                    if self._finalizer is not None:  # reaped: its group id is free again
                        self._finalizer.detach()
                    self._detached = True
                else:
                    code = self.stop()
                    raise self._failure(
                        argv,
                        f"exited with code {code} before {url}{spec.ready_path} answered",
                        "its log above says why (a missing model, a wrong flag, a port in "
                        "use); run the command by hand to try a fix",
                    )
            probe_s = min(PROBE_TIMEOUT_S, max(0.1, deadline - time.monotonic()))
            if _answers(host, self._port, spec.ready_path, probe_s):
                self._detached = self._detached or lms
                return
            if time.monotonic() >= deadline:
                self._detached = self._detached or lms
                self.stop()
                raise self._failure(
                    argv,
                    f"did not answer 200 on {url}{spec.ready_path} within "
                    f"{spec.ready_timeout_s:g} s, and was stopped",
                    "raise [server.start].ready_timeout_s if it loads slowly, or set "
                    "ready_path to a route this server answers",
                )
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _failure(self, argv: list[str], what: str, fix: str) -> ServerStartError:
        return ServerStartError(
            f"{self.spec.kind} did not start: `{shown(argv)}` {what}.\n"
            f"Last lines of its log ({self.log_path}):\n{self.log_tail()}\nFix: {fix}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server wrote since it was last started, indented."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"    (cannot read the log: {exc})"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in tail) if tail else "    (the log is empty)"

    def stop(self) -> int | None:
        """Stop the server (idempotent); its exit code (for lmstudio, `lms server stop`'s):
        negative when a signal ended it (-15: it died of SIGTERM, as mlx_lm's and uvicorn's
        servers do after their shutdown; -9: it had to be killed), None if never reaped."""
        process, detached = self._process, self._detached
        self._process, self._detached = None, False
        if process is None and not detached:
            return self.exit_code
        if self._finalizer is not None:
            self._finalizer.detach()
        code = None if process is None else _terminate(process, self.spec.stop_grace_s)
        command = stop_command(self.spec)
        if detached and command is not None:
            code = self._run(command)
        self.exit_code = code
        with contextlib.suppress(OSError), self.log_path.open("a") as log:
            log.write(f"--- lmgauge: stopped, exit code {code}\n")
        return code

    def _run(self, command: list[str]) -> int | None:
        """Run ``command`` to its end within stop_grace_s (at least 1 s), output to the log."""
        with self.log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PYTHONUNBUFFERED": "1", **os.environ, **self.spec.env},
                    start_new_session=True,
                )
            except OSError as exc:
                log.write(f"--- lmgauge: cannot run {shown(command)}: {exc}\n".encode())
                return None
        code = _wait(process, time.monotonic() + max(self.spec.stop_grace_s, 1.0))
        return code if code is not None else _terminate(process, 0.0)

    def restart(self, settings: Mapping[str, Any] | None = None) -> str:
        """Stop, then start with ``settings`` (default: the current ones) on the same port,
        so a backend keeps its URL."""
        self.stop()
        if settings is not None:
            self.settings = dict(settings)
        return self.start()

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
