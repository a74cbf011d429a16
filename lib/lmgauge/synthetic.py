"""Synthetic GGUF models: the exact shape of a real model, with random weights.

Decode and prefill speed depend on a model's shape and quantization, not on its weight
values, so CI machines that cannot download weights benchmark llama.cpp on files built
here (as vLLM's dummy load format does). The text such a model writes is meaningless.

``synthetic_gguf("qwen3-0.6b", "Q4_K_M")`` writes an F16 GGUF (streamed tensor by
tensor; weights tiled from one seeded block of N(0, 0.02) values, norms ones, biases
zeros), then quantizes it with llama.cpp's own quantizer. Files are cached under
``cache_dir()``::

    <cache>/<arch name>/v<GENERATOR_VERSION>-s<seed>-<shape hash>/<arch name>-<QUANT>.gguf

each with a ``.json`` sidecar (expected size, tensor count); a file without a matching
sidecar is rebuilt. The ``-F16.gguf`` intermediate is kept to make other quantizations
fast; it can be deleted at any time (it is rebuilt when needed). ``tokenizer.json`` is
written next to the files.
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
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import psutil

from lmgauge.catalog import Architecture, resolve_model, resolve_quant
from lmgauge.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InsufficientResourcesError,
)
from lmgauge.synthetic_tokenizer import tokenizer_data

GENERATOR_VERSION = 1
"""Bump when the bytes written change; part of the cache key."""

Progress = Callable[[str, float], None]
F16Array = np.ndarray[tuple[int], np.dtype[np.float16]]
LLAMA_FTYPES = {
    q: f"LLAMA_FTYPE_MOSTLY_{q}"
    for q in ("Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
}
"""The quantizations llama.cpp builds here; F16 is the written file itself."""
ROPE_THETA = 1e6
RMS_NORM_EPS = 1e-6
INIT_STD = 0.02
_BLOCK_VALUES = 16_777_259  # one seeded block (~32 MiB of F16), tiled into every tensor
_ALIGNMENT = 32  # GGUF's default data alignment
_MARGIN = 512 * 1024**2
_HEADER_ALLOWANCE = 16 * 1024**2  # tokenizer and metadata: ~4 MB for Qwen's vocabulary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: GGUF name, Hugging Face (out, in) shape, and how it is filled."""

    name: str
    shape: tuple[int, ...]
    fill: str  # "random" (F16), "ones" or "zeros" (F32), "random32" (F32)

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.n_values * (2 if self.fill == "random" else 4)


def tensor_plan(arch: Architecture) -> list[TensorSpec]:
    """Every tensor llama.cpp expects for this architecture, in file order."""
    h, hd, ffn, e = arch.hidden_size, arch.head_dim, arch.intermediate_size, arch.n_experts
    q_out, kv_out = arch.n_heads * hd, arch.n_kv_heads * hd
    plan = [TensorSpec("token_embd.weight", (arch.vocab_size, h), "random")]
    for i in range(arch.n_layers):

        def add(name: str, shape: tuple[int, ...], fill: str = "random", i: int = i) -> None:
            plan.append(TensorSpec(f"blk.{i}.{name}", shape, fill))

        add("attn_norm.weight", (h,), "ones")
        for proj, out in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            add(f"attn_{proj}.weight", (out, h))
            if arch.qkv_bias:
                add(f"attn_{proj}.bias", (out,), "zeros")
        if arch.qk_norm:
            add("attn_q_norm.weight", (hd,), "ones")
            add("attn_k_norm.weight", (hd,), "ones")
        add("attn_output.weight", (h, q_out))
        add("ffn_norm.weight", (h,), "ones")
        if arch.is_moe:  # the router stays F32, as convert_hf_to_gguf.py writes it
            add("ffn_gate_inp.weight", (e, h), "random32")
            add("ffn_gate_exps.weight", (e, ffn, h))
            add("ffn_up_exps.weight", (e, ffn, h))
            add("ffn_down_exps.weight", (e, h, ffn))
        else:
            add("ffn_gate.weight", (ffn, h))
            add("ffn_up.weight", (ffn, h))
            add("ffn_down.weight", (h, ffn))
    plan.append(TensorSpec("output_norm.weight", (h,), "ones"))
    if not arch.tied_embeddings:
        plan.append(TensorSpec("output.weight", (arch.vocab_size, h), "random"))
    return plan


def cache_dir() -> Path:
    """``$LMGAUGE_CACHE_DIR/models``, or ``~/.cache/lmgauge/models``."""
    root = os.environ.get("LMGAUGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmgauge") / "models"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def model_dir(arch: Architecture, cache: Path, seed: int = 0) -> Path:
    """Where the files of one architecture and seed live; the shape is part of the key."""
    ignored = ("name", "published_params", "max_context")  # they change no byte written
    shape = {k: v for k, v in asdict(arch).items() if k not in ignored}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    return cache / _safe(arch.name).lower() / f"v{GENERATOR_VERSION}-s{seed}-{digest}"


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
    arch: Architecture, quant: str, directory: Path, plan: list[TensorSpec], need_f16: bool
) -> None:
    f16 = sum(t.nbytes + _ALIGNMENT for t in plan) + _HEADER_ALLOWANCE
    disk = (f16 if need_f16 else 0) + (_quant_bytes(arch, quant) if quant != "F16" else 0)
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
    # The writer holds one block (F32 while drawing) and the tokenizer; llama.cpp's
    # quantizer holds the largest tensor as F32 plus an output buffer of the same size.
    memory = _BLOCK_VALUES * 6 + 256 * 1024**2
    if quant != "F16":
        memory = max(memory, largest * 8 + 256 * 1024**2)
    available = psutil.virtual_memory().available
    if available < memory:
        raise InsufficientResourcesError(
            f"not enough memory to build synthetic {arch.name} {quant}: needs {memory:,} "
            f"bytes ({memory / gb:.1f} GB) available, {available:,} bytes "
            f"({available / gb:.1f} GB) are; close other programs or pick a smaller model"
        )


def _random_block(seed: int) -> F16Array:
    rng = np.random.default_rng(seed)
    block = rng.standard_normal(_BLOCK_VALUES, dtype=np.float32) * np.float32(INIT_STD)
    return block.astype(np.float16)


def _tiled_chunks(block: F16Array, offset: int, n: int) -> Iterator[F16Array]:
    """n values of the block repeated endlessly, starting at offset; no copies."""
    while n > 0:
        chunk = block[offset : offset + n]
        yield chunk
        n -= len(chunk)
        offset = 0


def _write_data(f: BinaryIO, spec: TensorSpec, block: F16Array) -> None:
    offset = zlib.crc32(spec.name.encode()) % len(block)
    if spec.fill == "random":
        for chunk in _tiled_chunks(block, offset, spec.n_values):
            f.write(chunk.data)
    elif spec.fill == "random32":
        values = np.concatenate(list(_tiled_chunks(block, offset, spec.n_values)))
        f.write(values.astype(np.float32).tobytes())
    else:
        f.write(np.full(spec.n_values, spec.fill == "ones", dtype=np.float32).tobytes())
    f.write(b"\0" * (-spec.nbytes % _ALIGNMENT))


def _write_f16(
    arch: Architecture,
    plan: list[TensorSpec],
    cache: Path,
    path: Path,
    seed: int,
    progress: Progress,
) -> None:
    try:
        import gguf
    except ImportError as exc:
        raise BackendUnavailableError("writing GGUF files needs: pip install gguf") from exc
    progress("write F16", 0.0)
    tok = tokenizer_data(arch.vocab_size, cache)
    shutil.copyfile(tok.path, path.parent / "tokenizer.json")  # for mlx-lm and HF tools
    w = gguf.GGUFWriter(path, arch=arch.gguf_arch)
    w.add_name(f"{arch.name} (synthetic)")
    w.add_description(
        f"lmgauge synthetic weights v{GENERATOR_VERSION} seed {seed}: the shape of "
        f"{arch.name} with random values; its output is meaningless"
    )
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(arch.native_context)
    w.add_embedding_length(arch.hidden_size)
    w.add_block_count(arch.n_layers)
    w.add_feed_forward_length(arch.intermediate_size)
    w.add_head_count(arch.n_heads)
    w.add_head_count_kv(arch.n_kv_heads)
    w.add_key_length(arch.head_dim)
    w.add_value_length(arch.head_dim)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_NORM_EPS)
    if arch.is_moe:
        w.add_expert_count(arch.n_experts)
        w.add_expert_used_count(arch.n_active_experts)
        w.add_expert_feed_forward_length(arch.intermediate_size)
    tok.add_to(w)
    for spec in plan:
        dtype = np.float16 if spec.fill == "random" else np.float32
        w.add_tensor_info(spec.name, spec.shape, np.dtype(dtype), spec.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # The data section, as the GGUF spec lays it out: aligned, in tensor-info order.
    block = _random_block(seed)
    total, done = sum(t.nbytes for t in plan), 0
    with path.open("ab") as f:
        f.write(b"\0" * (-f.tell() % _ALIGNMENT))
        for spec in plan:
            _write_data(f, spec, block)
            done += spec.nbytes
            progress("write F16", done / total)


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
) -> Path:
    """The cached synthetic GGUF of a catalog label or an architecture, built if absent.

    Building checks free disk and memory first and raises InsufficientResourcesError
    before writing anything. ``progress(stage, fraction)`` is called from this thread;
    without it a single line updates on a terminal, otherwise ``logging`` reports.
    """
    arch = label_or_arch
    if not isinstance(arch, Architecture):
        arch = resolve_model(arch).architecture
    quant = resolve_quant(quantization)
    if quant.format != "gguf":
        raise ConfigError(
            f"synthetic models are GGUF only; {quant.name!r} is an MLX quantization. "
            f"Use one of: {', '.join([*LLAMA_FTYPES, 'F16'])}"
        )
    root = cache if cache is not None else cache_dir()
    directory = model_dir(arch, root, seed)
    final = directory / f"{_safe(arch.name)}-{quant.name}.gguf"
    if is_complete(final):
        return final
    report = progress or _DefaultProgress(f"synthetic {arch.name} {quant.name}")
    plan = tensor_plan(arch)
    f16 = directory / f"{_safe(arch.name)}-F16.gguf"
    _check_resources(arch, quant.name, directory, plan, need_f16=not is_complete(f16))
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per model; closing the file unlocks
        if is_complete(final):
            return final
        meta: dict[str, object] = {"generator_version": GENERATOR_VERSION, "seed": seed}
        meta["architecture"] = asdict(arch)
        if not is_complete(f16):
            meta16 = {**meta, "quantization": "F16"}
            _build(f16, len(plan), meta16, lambda p: _write_f16(arch, plan, root, p, seed, report))
        if quant.name != "F16":
            expected = int(arch.total_params * quant.bits_per_weight / 8)  # for progress only
            meta_q = {**meta, "quantization": quant.name}
            _build(
                final, len(plan), meta_q, lambda p: _quantize(f16, p, quant.name, expected, report)
            )
    return final
