"""Synthetic GGUF models: the exact shape of a real model, with random weights.

Decode and prefill speed depend on a model's shape and quantization, not on its weight
values, so CI machines that cannot download weights benchmark llama.cpp on files built
here (as vLLM's dummy load format does). The text such a model writes is meaningless.

``synthetic_gguf("qwen3-0.6b", "Q4_K_M")`` writes the file straight in its block formats,
streamed tensor by tensor: each tensor in the type llama.cpp's quantizer would give it in
that file type (quant_mix.py: Q4_K_M keeps the output and some attn_v and ffn_down layers
at Q6_K), its blocks tiled from one seeded template per type that ggml's own quantizer
made from N(0, 0.02) weights (quant_blocks.py); F16 weights tiled from one seeded block of
N(0, 0.02) values, norms ones, biases zeros. Only those templates are quantized, so a
7B-shape file takes about as long as writing it: 12 s for the 7B Q4_K_M on 2 cores, where
an F16 file and llama.cpp's quantizer took ~5.5 min.

``builder="llama-quantize"`` makes the file the old way, F16 first and then llama.cpp's
quantizer, in its own cache folder (generator version 1): scripts/synthetic_identity.py
compares the two. Files are cached under ``cache_dir()``::

    <cache>/<arch name>/v<generator version>-s<seed>-<shape hash>/<arch name>-<QUANT>.gguf

each with a ``.json`` sidecar (expected size, tensor count); a file without a matching
sidecar is rebuilt. ``tokenizer.json`` is written next to the files.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import psutil

from lmgauge.catalog import Architecture, resolve_model, resolve_quant
from lmgauge.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InsufficientResourcesError,
)
from lmgauge.quant_mix import FILE_TYPES
from lmgauge.synthetic_write import (
    ALIGNMENT,
    BLOCK_VALUES,
    TEMPLATE_BYTES,
    Progress,
    TensorSpec,
    planned_types,
    tensor_plan,
    write_gguf,
)

GENERATOR_VERSION = 2
"""Bump when the bytes written change; part of the cache key. Version 1 wrote F16 and had
llama.cpp quantize it; version 2 writes every file type directly."""
QUANTIZER_GENERATOR_VERSION = 1
"""The cache version of ``builder="llama-quantize"`` files: version 1's recipe."""
Builder = Literal["direct", "llama-quantize"]

LLAMA_FTYPES = {
    q: f"LLAMA_FTYPE_MOSTLY_{q}"
    for q in ("Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
}
"""The quantizations llama.cpp builds here; F16 is the written file itself."""
_MARGIN = 512 * 1024**2
_HEADER_ALLOWANCE = 16 * 1024**2  # tokenizer and metadata: ~4 MB for Qwen's vocabulary

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$LMGAUGE_CACHE_DIR/models``, or ``~/.cache/lmgauge/models``."""
    root = os.environ.get("LMGAUGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmgauge") / "models"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def model_dir(
    arch: Architecture, cache: Path, seed: int = 0, version: int = GENERATOR_VERSION
) -> Path:
    """Where the files of one architecture and seed live; the shape is part of the key."""
    ignored = ("name", "published_params", "max_context")  # they change no byte written
    shape = {k: v for k, v in asdict(arch).items() if k not in ignored}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    return cache / _safe(arch.name).lower() / f"v{version}-s{seed}-{digest}"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_complete(path: Path) -> bool:
    """A cached file whose size and GGUF header match the sidecar written after it."""
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if path.stat().st_size != meta["size"]:
            return False
        with path.open("rb") as f:
            magic, version, n_tensors = struct.unpack("<4sIQ", f.read(16))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False
    return bool(magic == b"GGUF" and version == 3 and n_tensors == meta["n_tensors"])


def _build(
    final: Path, n_tensors: int, meta: dict[str, object], build: Callable[[Path], None]
) -> None:
    """Build into ``<final>.partial``, move it into place, then write the vouching sidecar."""
    partial, sidecar = final.with_name(final.name + ".partial"), _sidecar(final)
    start = time.monotonic()
    try:
        build(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sidecar.unlink(missing_ok=True)
    os.replace(partial, final)
    meta = {"size": final.stat().st_size, "n_tensors": n_tensors, **meta}
    meta["build_seconds"] = round(time.monotonic() - start, 1)
    sidecar.with_suffix(".partial").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(sidecar.with_suffix(".partial"), sidecar)


def _quant_bytes(arch: Architecture, quant: str) -> int:
    """An upper estimate: K-quant mixes put some tensors in wider types than the average."""
    return int(arch.total_params * resolve_quant(quant).bits_per_weight / 8 * 1.2) + 32 * 1024**2


def _check_resources(
    arch: Architecture,
    quant: str,
    directory: Path,
    plan: list[TensorSpec],
    *,
    need_f16: bool,
    quantizer: bool,
) -> None:
    """Refuse before writing anything where the disk or memory would run out. The direct
    writer's file size is exact; the quantizer's output is estimated."""
    f16 = sum(t.nbytes + ALIGNMENT for t in plan) + _HEADER_ALLOWANCE
    if quantizer:
        disk = (f16 if need_f16 else 0) + (_quant_bytes(arch, quant) if quant != "F16" else 0)
    else:
        types = planned_types(arch, quant, plan)
        disk = sum(t.nbytes_as(ty) + ALIGNMENT for t, ty in zip(plan, types, strict=True))
        disk += _HEADER_ALLOWANCE
    disk += _MARGIN
    probe = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(probe).free
    gb = 1e9
    if free < disk:
        raise InsufficientResourcesError(
            f"not enough disk to build synthetic {arch.name} {quant}: needs {disk:,} bytes "
            f"({disk / gb:.1f} GB), {free:,} bytes ({free / gb:.1f} GB) free in {probe}; "
            "free some space, set LMGAUGE_CACHE_DIR to a larger disk, or pick a smaller model"
        )
    largest = max(t.n_values for t in plan)
    # The writer holds one F16 block (F32 while drawing), a template per quantized type
    # (at most four in a file) and the tokenizer; llama.cpp's quantizer holds the largest
    # tensor as F32 plus an output buffer of the same size.
    memory = BLOCK_VALUES * 6 + 4 * TEMPLATE_BYTES + 256 * 1024**2
    if quantizer and quant != "F16":
        memory = max(memory, largest * 8 + 256 * 1024**2)
    available = psutil.virtual_memory().available
    if available < memory:
        raise InsufficientResourcesError(
            f"not enough memory to build synthetic {arch.name} {quant}: needs {memory:,} "
            f"bytes ({memory / gb:.1f} GB) available, {available:,} bytes "
            f"({available / gb:.1f} GB) are; close other programs or pick a smaller model"
        )


def _quantize(src: Path, dst: Path, quant: str, expected: int, progress: Progress) -> None:
    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError as exc:
        hint = "pip install 'lmgauge[llamacpp]', or ask for F16"
        raise BackendUnavailableError(
            f"quantizing to {quant} needs llama-cpp-python: {hint}"
        ) from exc
    progress(f"quantize {quant}", 0.0)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[quant])
    params.nthread = os.cpu_count() or 1
    result: list[int] = []
    stage, args = f"quantize {quant}", (str(src).encode(), str(dst).encode(), ctypes.byref(params))

    def run() -> None:
        result.append(llama_cpp.llama_model_quantize(*args))

    level = _logger.logger.level
    _logger.logger.setLevel(logging.ERROR)  # llama.cpp logs one line per tensor
    try:
        worker = threading.Thread(target=run, name="llama-quantize", daemon=True)
        worker.start()
        while worker.is_alive():  # ctypes drops the GIL: report progress from here
            worker.join(0.5)
            with contextlib.suppress(OSError):
                progress(stage, min(0.99, dst.stat().st_size / expected))
    finally:
        _logger.logger.setLevel(level)
    if result != [0]:
        raise BackendError(f"llama.cpp failed to quantize {src.name} to {quant} (code {result})")
    progress(stage, 1.0)


class _DefaultProgress:
    """One updating line on a terminal; otherwise a log record per stage and quarter."""

    def __init__(self, model: str) -> None:
        self.model, self.tty = model, sys.stderr.isatty()
        self.stage, self.logged, self.printed_at = "", -1.0, 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now, new_stage, done = time.monotonic(), stage != self.stage, fraction >= 1.0
        if self.tty:
            if new_stage or done or now - self.printed_at >= 0.2:
                line = f"\r{self.model}: {stage} {fraction:6.1%}\033[K"
                print(line, end="\n" if done else "", file=sys.stderr, flush=True)
                self.printed_at = now
        elif new_stage or done or fraction - self.logged >= 0.25:
            logger.info("%s: %s %.0f%%", self.model, stage, fraction * 100)
            self.logged = fraction
        self.stage = stage


def synthetic_gguf(
    label_or_arch: str | Architecture,
    quantization: str = "Q4_K_M",
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    builder: Builder = "direct",
) -> Path:
    """The cached synthetic GGUF of a catalog label or an architecture, built if absent.

    ``builder="direct"`` writes the file type's blocks directly; ``"llama-quantize"``
    writes F16 and has llama.cpp quantize it (the reference the direct files are checked
    against; slow). Building checks free disk and memory first and raises
    InsufficientResourcesError before writing anything. ``progress(stage, fraction)`` is
    called from this thread; without it a single line updates on a terminal, otherwise
    ``logging`` reports.
    """
    arch = label_or_arch
    if not isinstance(arch, Architecture):
        arch = resolve_model(arch).architecture
    quant = resolve_quant(quantization)
    if quant.format != "gguf":
        raise ConfigError(
            f"synthetic models are GGUF only; {quant.name!r} is an MLX quantization. "
            f"Use one of: {', '.join(FILE_TYPES)}"
        )
    quantizer = builder == "llama-quantize"
    version = QUANTIZER_GENERATOR_VERSION if quantizer else GENERATOR_VERSION
    root = cache if cache is not None else cache_dir()
    directory = model_dir(arch, root, seed, version)
    final = directory / f"{_safe(arch.name)}-{quant.name}.gguf"
    if is_complete(final):
        return final
    report = progress or _DefaultProgress(f"synthetic {arch.name} {quant.name}")
    plan = tensor_plan(arch)
    f16 = directory / f"{_safe(arch.name)}-F16.gguf"
    need_f16 = quantizer and quant.name != "F16" and not is_complete(f16)
    _check_resources(arch, quant.name, directory, plan, need_f16=need_f16, quantizer=quantizer)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per model; closing the file unlocks
        if is_complete(final):
            return final
        meta: dict[str, object] = {"generator_version": version, "seed": seed}
        meta["builder"] = builder
        meta["architecture"] = asdict(arch)

        def write(name: str) -> Callable[[Path], None]:
            return lambda p: write_gguf(arch, plan, name, root, p, seed, version, report)

        if not quantizer or quant.name == "F16":
            _build(final, len(plan), {**meta, "quantization": quant.name}, write(quant.name))
            return final
        if not is_complete(f16):
            _build(f16, len(plan), {**meta, "quantization": "F16"}, write("F16"))
        expected = int(arch.total_params * quant.bits_per_weight / 8)  # for progress only
        _build(
            final,
            len(plan),
            {**meta, "quantization": quant.name},
            lambda p: _quantize(f16, p, quant.name, expected, report),
        )
    return final
