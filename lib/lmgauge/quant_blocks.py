"""Random quantized blocks with finite, sensible scales: a synthetic tensor's payload.

Each ggml block format (ggml-common.h) holds quantized values and one or two F16 scales.
Random bytes are valid quants; random bytes are not valid scales (they can be NaN or
infinity). ``template`` fills a run of blocks with random bytes and then writes each
block's scales, drawn around a value chosen so that the dequantized weights have a
standard deviation near ``TARGET_STD`` (the 0.02 that the F16 writer draws from), and
are finite everywhere: the kernels then do the same work on the same bytes per value as
on a real model's file.
"""

from __future__ import annotations

import numpy as np

from lmgauge.quant_mix import GGMLType

TARGET_STD = 0.02
Bytes = np.ndarray[tuple[int], np.dtype[np.uint8]]

# type -> [(byte offset of an F16 field in the block, its typical value)]. The typical
# scale is TARGET_STD over the spread of what it multiplies: uniform 4-bit quants around
# 8 have sd 4.6, 5-bit 9.2, int8 73.6; Q6_K's int8 sub-block scales |s| average 64 over
# 6-bit quants around 32 (sd 18.5); Q3_K's 6-bit scales around 32 (|sc-32| ~16) over 3-bit
# quants (sd 2.3). Q4_K and Q5_K (value = d*sc*q - dmin*m, random 6-bit sc and m) have
# dmin = d times the mean quant, so that the mean is near zero; the independent sc and m
# about double the spread of sc*q alone, hence 63 rather than 31.5, the mean 6-bit scale.
# tests/test_quant_blocks.py dequantizes every template with gguf-py and checks the sd.
SCALES: dict[GGMLType, list[tuple[int, float]]] = {
    GGMLType.Q4_0: [(0, TARGET_STD / 4.6)],
    GGMLType.Q5_0: [(0, TARGET_STD / 9.2)],
    GGMLType.Q5_1: [(0, TARGET_STD / 9.2), (2, -15.5 * TARGET_STD / 9.2)],
    GGMLType.Q8_0: [(0, TARGET_STD / 73.6)],
    GGMLType.Q3_K: [(108, TARGET_STD / (16 * 2.3))],
    GGMLType.Q4_K: [(0, TARGET_STD / (63 * 4.6)), (2, 7.5 * TARGET_STD / (63 * 4.6))],
    GGMLType.Q5_K: [(0, TARGET_STD / (63 * 9.2)), (2, 15.5 * TARGET_STD / (63 * 9.2))],
    GGMLType.Q6_K: [(208, TARGET_STD / (64 * 18.5))],
}


def template(qtype: GGMLType, n_blocks: int, seed: int) -> Bytes:
    """``n_blocks`` random blocks of ``qtype`` as one flat byte array."""
    if qtype not in SCALES:
        raise ValueError(f"no block template for {qtype.name}")
    rng = np.random.default_rng([seed, qtype.value])
    blocks = rng.integers(0, 256, size=(n_blocks, qtype.block_bytes), dtype=np.uint8)
    for offset, typical in SCALES[qtype]:
        # Each block's scale between half and one and a half times the typical one.
        scales = (typical * rng.uniform(0.5, 1.5, n_blocks)).astype("<f2")
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)
