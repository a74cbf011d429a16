"""Which ggml type llama.cpp's quantizer gives each tensor of a file type ("Q4_K_M").

A GGUF "Q4_K_M" file is a mix: most weights Q4_K, but the output (and, with tied
embeddings, the token embedding) Q6_K, some attn_v and ffn_down layers Q6_K, norms F32.
The synthetic writer reproduces the mix so that the file has the same size and runs the
same kernels as one made by ``llama-quantize``.

Transcribed from llama.cpp's ``src/llama-quant.cpp`` as vendored in llama-cpp-python
0.3.36 (``llama_tensor_get_type``, ``llama_tensor_get_type_impl``,
``tensor_allows_quantization``, ``tensor_type_fallback``, ``llama_ftype_get_default_type``),
for the file types lmgauge's catalog offers and the architectures it builds (qwen2,
qwen3, qwen3moe), without an importance matrix or user overrides. Rules for other
architectures (Falcon) and file types (IQ*, Q2_K) are left out on purpose: asking for them
raises. ``scripts/synthetic_identity.py`` checks the result against files the quantizer
made.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from lmgauge.catalog import Architecture
from lmgauge.errors import ConfigError


class GGMLType(Enum):
    """ggml tensor types by their ggml.h number (the value GGUF stores)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14

    @property
    def block_values(self) -> int:
        return BLOCK_LAYOUT[self][0]

    @property
    def block_bytes(self) -> int:
        return BLOCK_LAYOUT[self][1]

    @property
    def is_quantized(self) -> bool:
        return self not in (GGMLType.F32, GGMLType.F16)


BLOCK_LAYOUT: dict[GGMLType, tuple[int, int]] = {
    # values per block, bytes per block (ggml-common.h)
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
}

FILE_TYPES: dict[str, tuple[int, GGMLType]] = {
    # name: (llama_ftype number in llama.h, its default tensor type)
    "F16": (1, GGMLType.F16),
    "Q4_0": (2, GGMLType.Q4_0),
    "Q8_0": (7, GGMLType.Q8_0),
    "Q3_K_M": (12, GGMLType.Q3_K),
    "Q4_K_S": (14, GGMLType.Q4_K),
    "Q4_K_M": (15, GGMLType.Q4_K),
    "Q5_K_M": (17, GGMLType.Q5_K),
    "Q6_K": (18, GGMLType.Q6_K),
}

_FALLBACK = {  # tensor_type_fallback: a row length the block does not divide
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or _mod(i_layer - n_layers // 8, 3) == 2
    )


def _mod(a: int, b: int) -> int:
    """C's ``%``: the sign of the dividend (Python's follows the divisor)."""
    return a - b * int(a / b)


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part, category in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return category
    return "other"


def _allows_quantization(name: str, shape: Sequence[int]) -> bool:
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
    )


def _layer(name: str) -> int:
    return int(name.split(".")[1])


def tensor_types(
    arch: Architecture, file_type: str, tensors: Sequence[tuple[str, tuple[int, ...], GGMLType]]
) -> list[GGMLType]:
    """The type of each ``(name, shape, source type)`` in a ``file_type`` file, in order.

    ``shape`` is Hugging Face order, (out, in): a row (ggml's ne[0]) is ``shape[-1]``.
    ``source type`` is the unquantized type the converter writes (F16, or F32 for norms
    and the MoE router), which tensors that are not quantized keep.
    """
    if file_type not in FILE_TYPES:
        raise ConfigError(
            f"no llama.cpp tensor-type rules here for {file_type!r}; "
            f"use one of: {', '.join(FILE_TYPES)}"
        )
    if arch.gguf_arch not in ("qwen2", "qwen3", "qwen3moe"):
        raise ConfigError(f"no llama.cpp tensor-type rules here for architecture {arch.gguf_arch}")
    ftype_default = FILE_TYPES[file_type][1]
    names = [name for name, _shape, _type in tensors]
    n_attention_wv = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
    tied = "output.weight" not in names
    n_layers = arch.n_layers
    n_expert = max(1, arch.n_experts)
    is_70b = arch.gguf_arch == "qwen2" and n_layers == 80  # models/qwen2.cpp: LLM_TYPE_70B
    counters = {"attn_v": 0, "ffn_down": 0}
    result = []
    for name, shape, source in tensors:
        if not _allows_quantization(name, shape) or not ftype_default.is_quantized:
            result.append(ftype_default if _allows_quantization(name, shape) else source)
            continue
        category = _category(name)
        new = ftype_default
        if category == "output" or (tied and category == "token_embd"):
            if shape[-1] % new.block_values != 0:
                new = GGMLType.Q8_0
            elif new != GGMLType.Q8_0:
                new = GGMLType.Q6_K
        elif category in ("attn_v", "attn_qkv", "attn_kv_b"):
            i = counters["attn_v"]
            if file_type == "Q3_K_M":
                new = GGMLType.Q5_K if i < 2 else GGMLType.Q4_K
            elif file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_attention_wv):
                new = GGMLType.Q6_K
            elif file_type == "Q4_K_S" and i < 4:
                new = GGMLType.Q5_K
            if is_70b and new in (GGMLType.Q3_K, GGMLType.Q4_K):
                new = GGMLType.Q5_K
            if n_expert == 8:
                new = GGMLType.Q8_0
            counters["attn_v"] += 1
        elif category == "attn_k":
            if n_expert == 8:
                new = GGMLType.Q8_0
        elif category == "ffn_down":
            i_layer = _layer(name) if n_expert > 1 else counters["ffn_down"]
            if file_type == "Q3_K_M":
                new = GGMLType.Q5_K if i_layer < n_layers // 16 else GGMLType.Q4_K
            elif file_type in ("Q4_K_M", "Q5_K_M"):
                if _use_more_bits(i_layer, n_layers):
                    new = GGMLType.Q6_K
            elif file_type == "Q4_K_S" and i_layer < n_layers // 8:
                new = GGMLType.Q5_K
            counters["ffn_down"] += 1
        elif category == "attn_output":
            if n_expert == 8:
                if file_type in ("Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    new = GGMLType.Q5_K
            elif file_type == "Q3_K_M":
                new = GGMLType.Q4_K
        result.append(_fallback(new, shape[-1]))
    return result


def _fallback(wanted: GGMLType, row: int) -> GGMLType:
    if row % wanted.block_values == 0:
        return wanted
    fallback = _FALLBACK.get(wanted, wanted)
    return fallback if row % fallback.block_values == 0 else GGMLType.F16
