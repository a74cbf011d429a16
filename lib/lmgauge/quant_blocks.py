"""Quantized blocks made by ggml's own quantizer: a synthetic tensor's payload.

``template`` draws N(0, 0.02) weights (as the F16 writer does) and quantizes them with
``ggml_quantize_chunk`` from the libggml-base that llama-cpp-python ships: the blocks hold
what llama.cpp's quantizer would write for such weights, scales and quants alike, with no
NaN or infinity. The synthetic writer tiles one template of each type into every tensor of
that type, so a whole file costs one small quantization per type instead of quantizing
every weight.

Why not random bytes with sensible scales (this module's first version): the kernels'
speed depends on the values after all. On the 0.6B Q8_0 file, uniformly random quants
decoded 0.940x [0.910, 0.972] as fast as the quantizer's file (12 paired llama-bench
rounds; 0.919x with flash attention off; the quantizer's file against its own copy:
0.999x); with these templates, 1.001x [0.956, 1.048] (scripts/synthetic_identity.py). The
cause was not pinned down; uniform bytes flip far more bits than the bell-shaped quants of
real weights, and a CPU's clock can follow the power that draws.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from pathlib import Path

import numpy as np

from lmgauge.errors import BackendUnavailableError
from lmgauge.quant_mix import GGMLType

TARGET_STD = 0.02
ROW_VALUES = 4096  # a multiple of every block size here (32 and 256)
Bytes = np.ndarray[tuple[int], np.dtype[np.uint8]]


@cache
def _ggml() -> ctypes.CDLL:
    """llama-cpp-python's libggml-base, with ``ggml_quantize_chunk`` declared."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailableError(
            "writing quantized GGUF files needs ggml's quantizer from llama-cpp-python: "
            "run scripts/setup.sh (or pip install 'lmgauge[llamacpp]'), or ask for F16"
        ) from exc
    suffix = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
    path = Path(llama_cpp.__file__).parent / "lib" / f"libggml-base{suffix}"
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,  # enum ggml_type
        ctypes.c_void_p,  # const float * src
        ctypes.c_void_p,  # void * dst
        ctypes.c_int64,  # start
        ctypes.c_int64,  # nrows
        ctypes.c_int64,  # n_per_row
        ctypes.c_void_p,  # const float * imatrix (none)
    ]
    return lib


def template(qtype: GGMLType, n_bytes: int, seed: int) -> Bytes:
    """About ``n_bytes`` (whole rows of ROW_VALUES values) of ``qtype`` blocks quantized by
    ggml from seeded N(0, TARGET_STD) weights, as one flat byte array."""
    if not qtype.is_quantized:
        raise ValueError(f"{qtype.name} is not a quantized type")
    row_bytes = ROW_VALUES // qtype.block_values * qtype.block_bytes
    rows = max(1, n_bytes // row_bytes)
    rng = np.random.default_rng([seed, qtype.value])
    weights = rng.standard_normal(rows * ROW_VALUES, dtype=np.float32) * np.float32(TARGET_STD)
    blocks = np.empty(rows * row_bytes, dtype=np.uint8)
    written = _ggml().ggml_quantize_chunk(
        qtype.value, weights.ctypes.data, blocks.ctypes.data, 0, rows, ROW_VALUES, None
    )
    if written != blocks.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes of {qtype.name}, not {blocks.nbytes}")
    return blocks
