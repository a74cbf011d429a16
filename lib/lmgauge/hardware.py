"""The host: its fingerprint and profile slug, memory bandwidth, and the decode roofline.

Decoding one token reads every active weight once plus the KV cache so far, so
decode tokens/s <= bandwidth / (active weight bytes + KV bytes read per token).
"""

from __future__ import annotations

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
        400e9, "public: Apple M3 Max 16-core CPU / 40-core GPU, 400 GB/s (FACTS.md)"
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


def _run(*command: str) -> str:
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
        return _run("sysctl", "-n", "machdep.cpu.brand_string").strip() or "unknown"
    return _linux_cpu()


def fingerprint() -> HostFingerprint:
    """Describe this host; macOS details are read where the tools allow, else left None."""
    system = platform.system()
    cpu, gpu_cores, power, thermal = cpu_name(), None, None, None
    if system == "Darwin":
        cores = re.search(
            r"Total Number of Cores:\s*(\d+)", _run("system_profiler", "SPDisplaysDataType")
        )
        gpu_cores = int(cores.group(1)) if cores else None
        drawing = re.search(r"drawing from '([^']+)'", _run("pmset", "-g", "batt"))
        power = drawing.group(1) if drawing else None
        limit = re.search(r"CPU_Speed_Limit\s*=\s*\d+", _run("pmset", "-g", "therm"))
        thermal = limit.group(0) if limit else None
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
    copy_bytes_per_s: float  # best of the runs: counts the bytes read plus the bytes written
    buffer_bytes: int
    runs: int
    threads: int
    method: str = (
        "numpy, one thread per core on its own slice: an integer sum over a uint64 "
        "buffer (read), np.copyto between two buffers (read + write); best of the "
        "runs, after one warm-up"
    )

    def describe(self) -> str:
        return (
            f"read {self.read_bytes_per_s / GB:.1f} GB/s, copy {self.copy_bytes_per_s / GB:.1f}"
            f" GB/s (measured here: {self.threads} threads, best of {self.runs} runs over "
            f"{self.buffer_bytes / 2**20:.0f} MiB)"
        )


def probe_bandwidth(
    buffer_bytes: int = 256 * 2**20, runs: int = 5, threads: int | None = None
) -> BandwidthProbe:
    """Measure read and copy bandwidth with numpy; takes about a second."""
    threads = threads or os.cpu_count() or 1
    if buffer_bytes < 2**20 or runs < 1 or threads < 1:
        raise ValueError("probe_bandwidth needs at least 1 MiB, 1 run and 1 thread")
    # An integer sum vectorizes to pure loads; a float32 sum is pairwise and compute-bound
    # (measured here: 32 against 53 GB/s on 2 threads).
    source = np.ones(buffer_bytes // 8, dtype=np.uint64)  # ones: every page is touched
    target = np.empty_like(source)
    slices = [
        slice(i * source.size // threads, (i + 1) * source.size // threads) for i in range(threads)
    ]
    read_best = copy_best = float("inf")
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in both loops
        for run in range(runs + 1):
            start = time.perf_counter()
            list(pool.map(lambda part: source[part].sum(), slices))
            middle = time.perf_counter()
            list(pool.map(lambda part: np.copyto(target[part], source[part]), slices))
            end = time.perf_counter()
            if run > 0:  # the first run is the warm-up
                read_best = min(read_best, middle - start)
                copy_best = min(copy_best, end - middle)
    return BandwidthProbe(
        read_bytes_per_s=source.nbytes / read_best,
        copy_bytes_per_s=2 * source.nbytes / copy_best,
        buffer_bytes=source.nbytes,
        runs=runs,
        threads=threads,
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
