"""The host: its fingerprint and profile slug, memory bandwidth, and the decode roofline.

Decoding one token reads every active weight once plus the KV cache so far, so
decode tokens/s <= bandwidth / (active weight bytes + KV bytes read per token).
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import psutil

from lmgauge.catalog import GB, GiB


@dataclass(frozen=True)
class ReferenceProfile:
    bandwidth_bytes_per_s: float
    source: str


REFERENCE_PROFILES = {
    "apple-m3-max-128gb": ReferenceProfile(
        400e9, "public: Apple M3 Max 16-core CPU / 40-core GPU, 400 GB/s (Apple M3 Max tech specs)"
    ),
}
"""Machines whose bandwidth is known from public figures rather than measured here."""


@dataclass(frozen=True)
class HostFingerprint:
    system: str  # "Linux", "Darwin"
    machine: str  # "x86_64", "arm64"
    cpu: str  # model name, or the Apple chip ("Apple M3 Max")
    logical_cores: int
    memory_bytes: int
    os_release: str
    gpu_cores: int | None = None  # Apple Silicon only
    power_source: str | None = None  # macOS: "AC Power" or "Battery Power"
    thermal_state: str | None = None  # macOS: pmset's CPU speed limit line

    @property
    def profile(self) -> str:
        """A slug such as ``apple-m3-max-128gb`` or ``linux-x86_64-2c-24gb``."""
        memory_gb = round(self.memory_bytes / GiB)
        if self.cpu.startswith("Apple "):
            chip = re.sub(r"[^a-z0-9]+", "-", self.cpu.lower()).strip("-")
            return f"{chip}-{memory_gb}gb"
        return f"{self.system.lower()}-{self.machine}-{self.logical_cores}c-{memory_gb}gb"


def run_tool(*command: str) -> str:
    """The standard output of a short system tool (sysctl, pmset, ioreg); "" if it fails."""
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _linux_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_name() -> str:
    """The CPU model, or the Apple chip ("Apple M3 Max")."""
    if platform.system() == "Darwin":
        return run_tool("sysctl", "-n", "machdep.cpu.brand_string").strip() or "unknown"
    return _linux_cpu()


def power_source() -> str | None:
    """macOS: "AC Power" or "Battery Power", from ``pmset -g batt``; None elsewhere."""
    if platform.system() != "Darwin":
        return None
    drawing = re.search(r"drawing from '([^']+)'", run_tool("pmset", "-g", "batt"))
    return drawing.group(1) if drawing else None


def thermal_state() -> str | None:
    """macOS: the CPU speed limit line of ``pmset -g therm`` ("CPU_Speed_Limit = 100");
    None elsewhere, or where pmset prints no such line."""
    if platform.system() != "Darwin":
        return None
    limit = re.search(r"CPU_Speed_Limit\s*=\s*\d+", run_tool("pmset", "-g", "therm"))
    return limit.group(0) if limit else None


def fingerprint() -> HostFingerprint:
    """Describe this host; macOS details are read where the tools allow, else left None."""
    system = platform.system()
    cpu, gpu_cores, power, thermal = cpu_name(), None, None, None
    if system == "Darwin":
        cores = re.search(
            r"Total Number of Cores:\s*(\d+)", run_tool("system_profiler", "SPDisplaysDataType")
        )
        gpu_cores = int(cores.group(1)) if cores else None
        power, thermal = power_source(), thermal_state()
    return HostFingerprint(
        system=system,
        machine=platform.machine(),
        cpu=cpu,
        logical_cores=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        os_release=platform.release(),
        gpu_cores=gpu_cores,
        power_source=power,
        thermal_state=thermal,
    )


@dataclass(frozen=True)
class BandwidthProbe:
    """Memory bandwidth measured here, in bytes per second."""

    read_bytes_per_s: float  # best of the runs: sum over a buffer far larger than the caches
    copy_bytes_per_s: float  # best of the runs, counting bytes read plus written; nan: not run
    buffer_bytes: int
    runs: int
    threads: int
    method: str = (
        "numpy, one thread per core on its own slice: an integer sum over a uint64 "
        "buffer (read), np.copyto between two buffers (read + write); best of the "
        "runs, after one warm-up"
    )
    read_runs_bytes_per_s: tuple[float, ...] = ()  # each run's figure, in order
    copy_runs_bytes_per_s: tuple[float, ...] = ()

    def describe(self) -> str:
        copy = (
            f", copy {self.copy_bytes_per_s / GB:.1f} GB/s"
            if math.isfinite(self.copy_bytes_per_s)
            else ""
        )
        return (
            f"read {self.read_bytes_per_s / GB:.1f} GB/s{copy} (measured here: "
            f"{self.threads} threads, best of {self.runs} runs over "
            f"{self.buffer_bytes / 2**20:.0f} MiB)"
        )


def probe_bandwidth(
    buffer_bytes: int = 256 * 2**20,
    runs: int = 5,
    threads: int | None = None,
    *,
    copy: bool = True,
) -> BandwidthProbe:
    """Measure read and (unless ``copy`` is false) copy bandwidth with numpy; about a
    second, most of it spent faulting in the buffers' pages."""
    threads = threads or os.cpu_count() or 1
    if buffer_bytes < 2**20 or runs < 1 or threads < 1:
        raise ValueError("probe_bandwidth needs at least 1 MiB, 1 run and 1 thread")
    # An integer sum vectorizes to pure loads; a float32 sum is pairwise and compute-bound
    # (measured here: 32 against 53 GB/s on 2 threads).
    source = np.ones(buffer_bytes // 8, dtype=np.uint64)  # ones: every page is touched
    target = np.empty_like(source) if copy else source
    slices = [
        slice(i * source.size // threads, (i + 1) * source.size // threads) for i in range(threads)
    ]
    reads: list[float] = []
    copies: list[float] = []
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in both loops
        for run in range(runs + 1):
            start = time.perf_counter()
            list(pool.map(lambda part: source[part].sum(), slices))
            middle = time.perf_counter()
            if copy:
                list(pool.map(lambda part: np.copyto(target[part], source[part]), slices))
            end = time.perf_counter()
            if run > 0:  # the first run is the warm-up
                reads.append(source.nbytes / (middle - start))
                if copy:
                    copies.append(2 * source.nbytes / (end - middle))
    return BandwidthProbe(
        read_bytes_per_s=max(reads),
        copy_bytes_per_s=max(copies, default=math.nan),
        buffer_bytes=source.nbytes,
        runs=runs,
        threads=threads,
        read_runs_bytes_per_s=tuple(reads),
        copy_runs_bytes_per_s=tuple(copies),
    )


def decode_roofline_tokens_per_s(
    bandwidth_bytes_per_s: float,
    active_weight_bytes: float,
    kv_bytes_per_token: float = 0.0,
    context_tokens: int = 0,
) -> float:
    """The most tokens/s a memory-bound decoder can reach (a derived figure)."""
    bytes_per_token = active_weight_bytes + kv_bytes_per_token * context_tokens
    if bytes_per_token <= 0:
        raise ValueError("bytes read per token must be positive")
    return bandwidth_bytes_per_s / bytes_per_token
