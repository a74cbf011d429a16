"""Running the token server (in a thread or a child process) and its control endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from lmgauge.testing.schedule import Fault, Schedule, SendRecord
from lmgauge.testing.token_server import TokenServer


def records(url: str) -> list[SendRecord]:
    """The server's send records (a blocking call: use it outside a client's event loop)."""
    data = httpx.get(f"{url}/_lmgauge/schedule", timeout=30).raise_for_status().json()
    return [SendRecord(**r) for r in data["requests"]]


def server_cpu_s(url: str) -> float:
    """The server process's CPU time so far, in seconds (a blocking call)."""
    data = httpx.get(f"{url}/_lmgauge/status", timeout=30).raise_for_status().json()
    return float(data["cpu_s"])


def control(url: str, what: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``/_lmgauge/{what}`` (reset, config, fault) and return its JSON answer."""
    answer = httpx.post(f"{url}/_lmgauge/{what}", json=body or {}, timeout=30)
    return answer.raise_for_status().json()


def schedule_args(schedule: Schedule) -> list[str]:
    """The token server's command-line arguments for ``schedule`` (floats as exact reprs)."""
    args = ["--ttft-ms", repr(schedule.ttft_s * 1000), "--itl-ms", repr(schedule.itl_s * 1000)]
    args += ["--jitter-ms", repr(schedule.jitter_s * 1000), "--seed", str(schedule.seed)]
    if schedule.max_tokens is not None:
        args += ["--tokens", str(schedule.max_tokens)]
    for name in ("slowdown", "drift_amplitude", "drift_period_s", "drift_phase", "noise_sd"):
        args += [f"--{name.replace('_', '-')}", repr(float(getattr(schedule, name)))]
    if schedule.drift_epoch is not None:
        args += ["--drift-epoch", repr(float(schedule.drift_epoch))]
    return args


@contextlib.contextmanager
def serve_in_thread(
    schedule: Schedule | None = None, fault: Fault | None = None
) -> Iterator[TokenServer]:
    """A server on its own event loop in a thread of this process (for functional tests:
    it shares the GIL with the client, so its timing is not calibrated)."""
    server = TokenServer(schedule, fault=fault)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()
        tasks = asyncio.all_tasks(loop)  # connections still open: their handlers close them
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(server.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="lmgauge-token-server", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the token server did not start within 10 s")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextlib.contextmanager
def serve_in_process(
    *args: str, schedule: Schedule | None = None, startup_s: float = 20.0
) -> Iterator[str]:
    """The server in a child process, given ``schedule`` (as ``schedule_args``) and then these
    command-line arguments (which win); yields its URL."""
    given = schedule_args(schedule) if schedule is not None else []
    command = [sys.executable, "-m", "lmgauge.testing.token_server", "--port", "0", *given, *args]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a full pipe would block it
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = process.stdout
        assert stdout is not None
        try:
            first_line: list[str] = []
            reader = threading.Thread(target=lambda: first_line.append(stdout.readline()))
            reader.start()
            reader.join(startup_s)
            url = first_line[0].strip() if first_line else ""
            if not url.startswith("http://"):
                process.kill()
                log.seek(0)
                raise RuntimeError(f"the token server did not start: {log.read()[-2000:]}")
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
            stdout.close()
