"""This machine: its identity, a short calibration probe, and disturbance while measuring.

Two VMs of one profile and one CPU name can differ by 1.5-2x, so a measured baseline
holds only for the machine that recorded it, in the state it was in then: the identity
says which machine, the calibration says whether it still runs as fast, and the
disturbance of a stretch of measurement says whether something else (other processes,
the hypervisor, heat, the battery) was slowing it down while it was measured.
"""

from __future__ import annotations

import hashlib
import math
import platform
import re
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil

from lmgauge import hardware
from lmgauge.catalog import GB

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
"""Where Linux keeps the machine id; the second is the D-Bus copy (machine-id(5))."""


@dataclass(frozen=True)
class MachineIdentity:
    digest: str  # 16 hex digits of sha256("lmgauge:" + id); "" when no id was readable
    source: str  # where the id was read, or why there is none


def _digest(raw_id: str) -> str:
    # machine-id(5): the id "should be considered confidential" and an application that
    # needs a stable identifier must hash it with an application-specific key rather
    # than use it directly.
    return hashlib.sha256(f"lmgauge:{raw_id}".encode()).hexdigest()[:16]


def _linux_identity() -> MachineIdentity:
    problems = []
    for path in MACHINE_ID_PATHS:
        try:
            raw = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: {type(exc).__name__}")
            continue
        # machine-id(5): 32 lower-case hexadecimal characters; "uninitialized" (or an
        # empty file) until the first boot has written one.
        if re.fullmatch(r"[0-9a-f]{32}", raw):
            return MachineIdentity(_digest(raw), str(path))
        problems.append(f"{path}: holds no 32-hex-digit id")
    return MachineIdentity("", "no machine id readable (" + "; ".join(problems) + ")")


def _ioreg_platform_expert() -> str:
    return hardware.run_tool("ioreg", "-rd1", "-c", "IOPlatformExpertDevice")


def _macos_identity() -> MachineIdentity:
    found = re.search(r'"IOPlatformUUID"\s*=\s*"([0-9A-Fa-f-]{36})"', _ioreg_platform_expert())
    if found is None:
        return MachineIdentity("", "no machine id readable (ioreg printed no IOPlatformUUID)")
    return MachineIdentity(_digest(found.group(1)), "ioreg IOPlatformUUID")


def machine_identity() -> MachineIdentity:
    """Which machine this is, as a hash of its machine id (Linux) or platform UUID (macOS)."""
    if platform.system() == "Darwin":
        return _macos_identity()
    return _linux_identity()


# --- calibration ---------------------------------------------------------------------------

CALIBRATION_METHOD = (
    "lmgauge calibration 1: memory = integer sum over 256 MiB, one thread per core "
    "(hardware.probe_bandwidth); compute = 64x64 float64 matmul on one thread, 4000 per run"
)
"""Figures are compared only between calibrations made the same way."""

BUSY_SHARE = 0.25
"""The share of the CPU that other processes may use before a stretch reads as disturbed."""
_MATMUL_SIZE = 64
_MATMUL_REPEATS = 4000


@dataclass(frozen=True)
class Calibration:
    memory_read_bytes_per_s: float  # median over the runs
    memory_read_spread: float  # relative spread of the runs, see _spread
    compute_flops_per_s: float  # median over the runs
    compute_spread: float
    runs: int
    method: str = CALIBRATION_METHOD
    other_cpu_share: float = 0.0  # used by other processes while it ran: a busy host reads slow

    def describe(self) -> str:
        busy = f"; other processes used {self.other_cpu_share:.0%} of the CPU meanwhile"
        return (
            f"memory read {self.memory_read_bytes_per_s / GB:.1f} GB/s "
            f"(±{self.memory_read_spread:.0%}), compute {self.compute_flops_per_s / 1e9:.1f} "
            f"GFLOP/s (±{self.compute_spread:.0%}), {self.runs} runs"
            f"{busy if self.other_cpu_share > BUSY_SHARE else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """The calibration in ``data``; ValueError (or KeyError) if it is not one."""
        calibration = cls(
            memory_read_bytes_per_s=float(data["memory_read_bytes_per_s"]),
            memory_read_spread=float(data["memory_read_spread"]),
            compute_flops_per_s=float(data["compute_flops_per_s"]),
            compute_spread=float(data["compute_spread"]),
            runs=int(data["runs"]),
            method=str(data["method"]),
            other_cpu_share=float(data.get("other_cpu_share", 0.0)),
        )
        figures = (calibration.memory_read_bytes_per_s, calibration.compute_flops_per_s)
        spreads = (calibration.memory_read_spread, calibration.compute_spread)
        if not all(math.isfinite(f) and f > 0 for f in figures) or not all(
            math.isfinite(s) and s >= 0 for s in spreads
        ):
            raise ValueError(f"calibration figures out of range: {dict(data)}")
        return calibration


def _spread(values: list[float]) -> float:
    """(max - min) / median; from five runs on, of the runs left after dropping the
    fastest and the slowest: on a shared machine one preempted run is common, and it
    must not widen the tolerance of every later comparison."""
    ordered = sorted(values)
    if len(ordered) >= 5:
        ordered = ordered[1:-1]
    return (ordered[-1] - ordered[0]) / statistics.median(values)


def _compute_runs(runs: int) -> list[float]:
    # A dense float64 matmul runs on the SIMD FMA units that LLM prefill runs on, so its
    # speed tracks what matters here; a pure-Python loop would track the interpreter
    # ("What's New In Python 3.11": 1.25x faster on pyperformance), so a Python upgrade
    # would read as a new machine. 64x64 stays on one thread in OpenBLAS
    # (interface/gemm.c: m*n*k <= SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD runs
    # single-threaded); a multithreaded product on this shared 2-core VM read anywhere
    # from 7 to 100 GFLOP/s within a minute (measured here).
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE))
    b = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE))
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up: caches, and numpy's first-call set-up
    flops = 2 * _MATMUL_SIZE**3 * _MATMUL_REPEATS
    figures = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(_MATMUL_REPEATS):
            np.matmul(a, b, out=out)
        figures.append(flops / (time.perf_counter() - start))
    return figures


def calibrate(runs: int = 5) -> Calibration:
    """Measure memory read bandwidth and compute speed; about a second."""
    if runs < 1:
        raise ValueError("calibrate needs at least 1 run")
    with DisturbanceMonitor() as monitor:
        # One thread: on a small shared machine a second thread competes with whatever else
        # runs, and the figure would follow the load rather than the machine.
        probe = hardware.probe_bandwidth(runs=runs, copy=False, threads=1)
        reads = list(probe.read_runs_bytes_per_s)
        computes = _compute_runs(runs)
    assert monitor.result is not None
    # The best run, as STREAM reports bandwidth: what the machine can do. Other load only
    # ever slows a run down, so the best of five moves far less with it than the median
    # (measured here: the median read 33 GB/s during another job, 50 GB/s a minute later).
    return Calibration(
        memory_read_bytes_per_s=max(reads),
        memory_read_spread=_spread(reads),
        compute_flops_per_s=max(computes),
        compute_spread=_spread(computes),
        runs=runs,
        other_cpu_share=monitor.result.other_cpu_share,
    )


def _differs(
    verb: str, recorded: float, now: float, tolerance: float, unit: str, scale: float
) -> tuple[str, str] | None:
    """("reads memory 31% slower", "41.2 vs 59.8 GB/s"), or None within the tolerance."""
    ratio = now / recorded
    if abs(ratio - 1) <= tolerance:
        return None
    direction = f"{1 - ratio:.0%} slower" if ratio < 1 else f"{ratio - 1:.0%} faster"
    return f"{verb} {direction}", f"{now / scale:.1f} vs {recorded / scale:.1f} {unit}"


CALIBRATION_FLOOR = 0.25
"""The least difference between two calibrations that means "another machine state": a
shared 2-core VM read memory at 37-53 GB/s from one minute to the next with nothing else
changed, so a tighter floor would stop a baseline from ever being judged there, while a
new machine of the same profile (1.5-2x slower here) still stands out."""


def compare_calibration(
    recorded: Calibration, now: Calibration, *, floor: float = CALIBRATION_FLOOR
) -> str | None:
    """None when each probe now is within max(either spread, ``floor``) of the recorded
    median; else why this host does not run as it did when the baseline was recorded."""
    if recorded.method != now.method:
        return (
            f"the baseline's machine was calibrated another way ({recorded.method!r}; "
            f"this lmgauge: {now.method!r}): re-record it with --lmgauge-update-baselines"
        )
    reasons = [
        _differs(
            "reads memory",
            recorded.memory_read_bytes_per_s,
            now.memory_read_bytes_per_s,
            max(recorded.memory_read_spread, now.memory_read_spread, floor),
            "GB/s",
            GB,
        ),
        _differs(
            "computes",
            recorded.compute_flops_per_s,
            now.compute_flops_per_s,
            max(recorded.compute_spread, now.compute_spread, floor),
            "GFLOP/s",
            1e9,
        ),
    ]
    found = [reason for reason in reasons if reason]
    if not found:
        return None
    if len(found) == 1:
        (what, figures), since = found[0], "than when the baseline was recorded"
        reason = f"this host {what} {since} ({figures})"
    else:
        both = " and ".join(f"{what} ({figures})" for what, figures in found)
        reason = f"this host {both} than when the baseline was recorded"
    busy = [
        f"other processes used {share:.0%} of the CPU while calibrating {when}"
        for share, when in ((recorded.other_cpu_share, "then"), (now.other_cpu_share, "now"))
        if share > BUSY_SHARE
    ]
    return reason + (f" ({'; '.join(busy)})" if busy else "")


# --- disturbance ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Disturbance:
    wall_s: float
    other_cpu_share: float  # of all logical cores: processes neither ours nor passed in
    own_cpu_share: float  # this process, its reaped children, the passed process trees
    thermal_state: str | None = None  # macOS: "CPU_Speed_Limit = 100"
    power_source: str | None = None  # macOS: "AC Power" or "Battery Power"
    steal_cpu_share: float = 0.0  # a VM's CPU time the hypervisor gave to other guests

    def disturbed(self, limit_share: float = BUSY_SHARE) -> str | None:
        """Why the measurement in this stretch may read slow, or None."""
        reasons = []
        if self.other_cpu_share > limit_share:
            reasons.append(f"other processes used {self.other_cpu_share:.0%} of the CPU")
        if self.steal_cpu_share > limit_share:
            reasons.append(
                f"the hypervisor withheld {self.steal_cpu_share:.0%} of the CPU (steal time)"
            )
        limit = re.search(r"CPU_Speed_Limit\s*=\s*(\d+)", self.thermal_state or "")
        if limit and int(limit.group(1)) < 100:
            reasons.append(f"thermal: CPU speed limited to {limit.group(1)}%")
        if self.power_source == "Battery Power":
            reasons.append("on battery power")
        return "; ".join(reasons) or None


def _system_cpu() -> tuple[float, float]:
    """Seconds of busy CPU time and of steal time, summed over all CPUs since boot."""
    times = psutil.cpu_times()
    fields = times._asdict()
    # As psutil's cpu_percent counts (psutil/__init__.py, _cpu_tot_time and
    # _cpu_busy_time): on Linux guest and guest_nice are already in user and nice, and
    # idle and iowait are not busy. Steal is kept apart: it is not any process of ours.
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    steal = fields.get("steal", 0.0)
    busy = total - times.idle - fields.get("iowait", 0.0) - steal
    return busy, steal


def _cpu_seconds(process: psutil.Process) -> float:
    # children_*: children that have exited and been waited for (getrusage(2),
    # RUSAGE_CHILDREN); a child still running counts only through its own entry.
    try:
        times = process.cpu_times()
    except psutil.Error:  # exited (or not ours to read) since it was found
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def _trees(roots: Iterable[psutil.Process]) -> set[psutil.Process]:
    found = set()
    for root in roots:
        try:
            if root.is_running():  # same pid and start time: not a reused pid
                found.add(root)
                found.update(root.children(recursive=True))  # one scan of /proc per root
        except psutil.Error:
            continue
    return found


class DisturbanceMonitor:
    """CPU time used by others (and thermal state, power source on macOS) over a stretch
    of measurement: ``start()`` ... ``stop()``, or ``with DisturbanceMonitor() as m:``
    and then ``m.result``.

    Ours is this process and the children it has waited for, plus the process trees of
    ``extra_pids`` (a managed server and its workers): a server still running is not in
    this process's children times until it exits and is waited for, so pass its pid.
    CPU time of a process in those trees that exits and is reaped outside them is lost
    (it reads as less of ours, never as more of others'), and shares are clamped to 0-1.
    """

    def __init__(self, extra_pids: Iterable[int] = ()) -> None:
        self.extra_pids = tuple(extra_pids)
        self.result: Disturbance | None = None
        self._own = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self._roots: list[psutil.Process] = []
        self._extra: set[psutil.Process] = set()
        self._started: tuple[float, float, float, float] | None = None

    def _ours(self, extra: set[psutil.Process]) -> float:
        return _cpu_seconds(self._own) + sum(_cpu_seconds(p) for p in extra)

    def start(self) -> None:
        self._roots = []
        for pid in self.extra_pids:
            try:
                self._roots.append(psutil.Process(pid))
            except psutil.Error:  # already gone: nothing of it to count
                continue
        self._extra = _trees(self._roots)
        busy, steal = _system_cpu()
        self._started = (time.perf_counter(), busy, steal, self._ours(self._extra))

    def stop(self) -> Disturbance:
        if self._started is None:
            raise RuntimeError("DisturbanceMonitor.stop() before start()")
        started, busy_before, steal_before, ours_before = self._started
        # The trees again: children born since start() count, the ones that exited drop
        # out, and those whose root exited are still found by what start() saw.
        extra = _trees(self._roots) | {p for p in self._extra if p.is_running()}
        ours = self._ours(extra) - ours_before
        busy, steal = _system_cpu()
        wall = time.perf_counter() - started
        capacity = max(wall, 1e-9) * self._cores

        def share(seconds: float) -> float:
            return min(1.0, max(0.0, seconds / capacity))

        self.result = Disturbance(
            wall_s=wall,
            other_cpu_share=share(busy - busy_before - ours),
            own_cpu_share=share(ours),
            # pmset is a subprocess (a few ms): read once per stretch, and only on macOS.
            thermal_state=hardware.thermal_state(),
            power_source=hardware.power_source(),
            steal_cpu_share=share(steal - steal_before),
        )
        self._started = None
        return self.result

    def __enter__(self) -> DisturbanceMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
