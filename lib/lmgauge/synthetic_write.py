"""The GGUF a synthetic model is: its tensors (``tensor_plan``), their types in a file
type (``planned_types``), and the streamed writer (``write_gguf``). synthetic.py caches
and vouches for the files; this module only writes one.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from lmgauge.catalog import Architecture
from lmgauge.errors import BackendUnavailableError
from lmgauge.quant_blocks import template
from lmgauge.quant_mix import FILE_TYPES, GGMLType, tensor_types
from lmgauge.synthetic_tokenizer import tokenizer_data

Progress = Callable[[str, float], None]
F16Array = np.ndarray[tuple[int], np.dtype[np.float16]]
ROPE_THETA = 1e6
RMS_NORM_EPS = 1e-6
INIT_STD = 0.02
BLOCK_VALUES = 16_777_259  # one seeded block (~32 MiB of F16), tiled into every tensor
TEMPLATE_BYTES = 8 * 1024**2  # each quantized type's template of blocks, tiled
ALIGNMENT = 32  # GGUF's default data alignment
_Item = TypeVar("_Item", bound=np.generic)


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
        """Bytes as the converter writes it: F16, or F32 for norms, biases and the router."""
        return self.n_values * (2 if self.fill == "random" else 4)

    @property
    def source_type(self) -> GGMLType:
        return GGMLType.F16 if self.fill == "random" else GGMLType.F32

    def nbytes_as(self, ggml_type: GGMLType) -> int:
        return self.n_values // ggml_type.block_values * ggml_type.block_bytes


def tensor_plan(arch: Architecture) -> list[TensorSpec]:
    """Every tensor llama.cpp expects for this architecture, in the order llama.cpp's
    quantizer writes them (llama-model-loader.h ``weight_name_comparer``: tensors outside
    the blocks first, then block by block, by name within each)."""
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
    return sorted(plan, key=_quantizer_order)


def _quantizer_order(spec: TensorSpec) -> tuple[int, str]:
    parts = spec.name.split(".")
    return (int(parts[1]) if parts[0] == "blk" else -1, spec.name)


def planned_types(arch: Architecture, quant: str, plan: list[TensorSpec]) -> list[GGMLType]:
    """Each tensor's type in a ``quant`` file, as llama.cpp's quantizer chooses it."""
    return tensor_types(arch, quant, [(t.name, t.shape, t.source_type) for t in plan])


def _random_block(seed: int) -> F16Array:
    rng = np.random.default_rng(seed)
    block = rng.standard_normal(BLOCK_VALUES, dtype=np.float32) * np.float32(INIT_STD)
    return block.astype(np.float16)


def _tiled_chunks(
    block: np.ndarray[tuple[int], np.dtype[_Item]], offset: int, n: int
) -> Iterator[np.ndarray[tuple[int], np.dtype[_Item]]]:
    """n values of the block repeated endlessly, starting at offset; no copies."""
    while n > 0:
        chunk = block[offset : offset + n]
        yield chunk
        n -= len(chunk)
        offset = 0


class _Payloads:
    """The seeded random sources, each made on first use: F16 values, and per quantized
    type a template of blocks (whole blocks, so a tensor tiled from it stays aligned)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._f16: F16Array | None = None
        self._templates: dict[GGMLType, np.ndarray[tuple[int], np.dtype[np.uint8]]] = {}

    def f16(self) -> F16Array:
        if self._f16 is None:
            self._f16 = _random_block(self.seed)
        return self._f16

    def blocks(self, ggml_type: GGMLType) -> np.ndarray[tuple[int], np.dtype[np.uint8]]:
        if ggml_type not in self._templates:
            self._templates[ggml_type] = template(ggml_type, TEMPLATE_BYTES, self.seed)
        return self._templates[ggml_type]


def _write_data(f: BinaryIO, spec: TensorSpec, ggml_type: GGMLType, payloads: _Payloads) -> int:
    """Write one tensor's data and its alignment padding; return the data's bytes."""
    name_hash = zlib.crc32(spec.name.encode())
    nbytes = spec.nbytes_as(ggml_type)
    if ggml_type.is_quantized:
        blocks = payloads.blocks(ggml_type)
        offset = name_hash % (len(blocks) // ggml_type.block_bytes) * ggml_type.block_bytes
        for piece in _tiled_chunks(blocks, offset, nbytes):
            f.write(piece.data)
    elif spec.fill in ("random", "random32"):
        block = payloads.f16()
        chunks = _tiled_chunks(block, name_hash % len(block), spec.n_values)
        if ggml_type == GGMLType.F16:
            for chunk in chunks:
                f.write(chunk.data)
        else:
            f.write(np.concatenate(list(chunks)).astype(np.float32).tobytes())
    else:
        f.write(np.full(spec.n_values, spec.fill == "ones", dtype=np.float32).tobytes())
    f.write(b"\0" * (-nbytes % ALIGNMENT))
    return nbytes


def write_gguf(
    arch: Architecture,
    plan: list[TensorSpec],
    quant: str,
    cache: Path,
    path: Path,
    seed: int,
    version: int,
    progress: Progress,
) -> None:
    """The whole file: header, tokenizer, tensor infos, then each tensor's data in the type
    llama.cpp's quantizer gives it in a ``quant`` file, streamed (bounded memory)."""
    try:
        import gguf
    except ImportError as exc:
        raise BackendUnavailableError("writing GGUF files needs: pip install gguf") from exc
    stage = f"write {quant}"
    progress(stage, 0.0)
    types = planned_types(arch, quant, plan)
    tok = tokenizer_data(arch.vocab_size, cache)
    shutil.copyfile(tok.path, path.parent / "tokenizer.json")  # for mlx-lm and HF tools
    w = gguf.GGUFWriter(path, arch=arch.gguf_arch)
    w.add_name(f"{arch.name} (synthetic)")
    w.add_description(
        f"lmgauge synthetic weights v{version} seed {seed}: the shape of "
        f"{arch.name} with random values; its output is meaningless"
    )
    file_type = FILE_TYPES[quant][0]
    w.add_file_type(file_type)
    if file_type != gguf.LlamaFileType.MOSTLY_F16:  # as llama.cpp's quantizer writes it
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
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
    for spec, ggml_type in zip(plan, types, strict=True):
        raw_type = gguf.GGMLQuantizationType(ggml_type.value)
        nbytes = spec.nbytes_as(ggml_type)
        w.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes, raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # The data section, as the GGUF spec lays it out: aligned, in tensor-info order.
    payloads = _Payloads(seed)
    total = sum(t.nbytes_as(ty) for t, ty in zip(plan, types, strict=True))
    done = 0
    with path.open("ab") as f:
        f.write(b"\0" * (-f.tell() % ALIGNMENT))
        for spec, ggml_type in zip(plan, types, strict=True):
            done += _write_data(f, spec, ggml_type, payloads)
            progress(stage, done / total)
