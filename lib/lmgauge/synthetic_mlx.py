"""Synthetic MLX models: the shape of a real model with random weights, as an mlx-lm folder.

The MLX twin of ``lmgauge.synthetic`` (GGUF): mlx-lm's own model class for the
architecture (``mlx_lm.models.qwen3``, ``qwen2``, ``qwen3_moe``) is built from a
config.json, its parameters re-initialised deterministically (matrices N(0, 0.02),
norms ones, biases zeros, as the GGUF generator does) and saved as ``model.safetensors``.
4bit and 8bit go through mlx-lm's own ``quantize_model`` (affine, group size 64), as
``mlx_lm convert -q`` does. The tokenizer is ``synthetic_tokenizer``'s, shared with
the GGUF files. The text such a model writes is meaningless; config.json says so
under ``SYNTHETIC_MARKER``. Folders are cached under ``cache_dir()``::

    <cache>/mlx/<arch name>/v<MLX_GENERATOR_VERSION>-s<seed>-<shape hash>/<arch name>-<quant>/

built in a temporary sibling folder and renamed into place, so a folder that exists
is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import psutil

from lmgauge.catalog import Architecture, resolve_model, resolve_quant
from lmgauge.errors import BackendUnavailableError, ConfigError, InsufficientResourcesError
from lmgauge.synthetic import _safe, cache_dir
from lmgauge.synthetic_tokenizer import (
    CHATML_TEMPLATE,
    ENDOFTEXT_ID,
    IM_END_ID,
    TOKENIZER_VERSION,
    tokenizer_data,
)
from lmgauge.synthetic_write import INIT_STD, RMS_NORM_EPS, ROPE_THETA

MLX_GENERATOR_VERSION = 1
"""Bump when the bytes written change; part of the cache key."""
SYNTHETIC_MARKER = "lmgauge_synthetic"
"""The config.json key whose presence says: random weights, meaningless output."""
MLX_QUANT_BITS: dict[str, int | None] = {"bf16": None, "8bit": 8, "4bit": 4}
GROUP_SIZE = 64  # mlx_lm convert's default affine group size
MODEL_TYPES = {"qwen3": "qwen3", "qwen2": "qwen2", "qwen3moe": "qwen3_moe"}
CLASS_NAMES = {"qwen3": "Qwen3", "qwen2": "Qwen2", "qwen3_moe": "Qwen3Moe"}  # Hugging Face's
# Qwen3's own template (its tokenizer_config.json) closes an empty think block in the
# generation prompt when the caller sets enable_thinking=False; otherwise plain ChatML.
CHAT_TEMPLATE = CHATML_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}",
)
_MARGIN = 256 * 1024**2


def import_mlx() -> tuple[Any, Any]:
    """``(mlx.core, mlx_lm)``, or BackendUnavailableError saying how to install them."""
    try:
        import mlx.core as mx
        import mlx_lm
    except ImportError as exc:
        raise BackendUnavailableError(
            "MLX needs mlx and mlx-lm: pip install -e '.[mlx]' (mlx[cpu] on Linux)"
        ) from exc
    return mx, mlx_lm


def mlx_config(arch: Architecture, seed: int = 0) -> dict[str, Any]:
    """config.json for mlx-lm: the Hugging Face keys of the architecture, plus the marker."""
    model_type = MODEL_TYPES[arch.gguf_arch]
    if model_type == "qwen2" and arch.head_dim * arch.n_heads != arch.hidden_size:
        raise ConfigError(
            f"{arch.name}: mlx-lm's qwen2 derives head_dim as hidden_size / n_heads "
            f"({arch.hidden_size} / {arch.n_heads}), but the architecture says {arch.head_dim}; "
            "use a qwen3 architecture for a free head_dim"
        )
    config: dict[str, Any] = {
        "architectures": [f"{CLASS_NAMES[model_type]}ForCausalLM"],
        "model_type": model_type,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.n_layers,
        "intermediate_size": arch.intermediate_size,
        "num_attention_heads": arch.n_heads,
        "num_key_value_heads": arch.n_kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "max_position_embeddings": arch.native_context,
        "tie_word_embeddings": arch.tied_embeddings,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],  # Qwen3's generation_config.json
        "torch_dtype": "bfloat16",
    }
    if arch.is_moe:
        config |= {
            "num_experts": arch.n_experts,
            "num_experts_per_tok": arch.n_active_experts,
            "moe_intermediate_size": arch.intermediate_size,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        }
    config[SYNTHETIC_MARKER] = {
        "generator_version": MLX_GENERATOR_VERSION,
        "seed": seed,
        "architecture": arch.name,
        "note": f"lmgauge synthetic weights: the shape of {arch.name} with random values; "
        "its output is meaningless",
    }
    return config


def tokenizer_config(arch: Architecture) -> dict[str, Any]:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": arch.native_context,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def model_folder(arch: Architecture, quantization: str, cache: Path, seed: int = 0) -> Path:
    """Where one architecture, seed and quantization live; the shape is part of the key."""
    ignored = ("name", "published_params", "max_context")  # they change no byte written
    shape: dict[str, Any] = {k: v for k, v in asdict(arch).items() if k not in ignored}
    shape["tokenizer_version"] = TOKENIZER_VERSION
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    key = f"v{MLX_GENERATOR_VERSION}-s{seed}-{digest}"
    return cache / "mlx" / _safe(arch.name).lower() / key / f"{_safe(arch.name)}-{quantization}"


def _check_resources(arch: Architecture, quant: str, directory: Path) -> None:
    bits = MLX_QUANT_BITS[quant]
    disk = int(arch.total_params * ((bits + 0.5) if bits else 16) / 8) + _MARGIN
    probe = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(probe).free
    # The whole model is materialised in bf16 before it is quantized and saved.
    memory = arch.total_params * 2 + disk
    available = psutil.virtual_memory().available
    for what, need, have in (("disk", disk, free), ("memory", memory, available)):
        if have < need:
            raise InsufficientResourcesError(
                f"not enough {what} to build synthetic MLX {arch.name} {quant}: needs "
                f"{need / 1e9:.1f} GB, {have / 1e9:.1f} GB free; pick a smaller model"
                + (" or set LMGAUGE_CACHE_DIR to a larger disk" if what == "disk" else "")
            )


def _model_module(arch: Architecture) -> Any:
    import_mlx()
    model_type = MODEL_TYPES[arch.gguf_arch]
    try:
        return importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError as exc:
        raise ConfigError(
            f"this mlx-lm has no {model_type} model, needed for {arch.name}; upgrade mlx-lm"
        ) from exc


def _flat(model: Any) -> list[tuple[str, Any]]:
    import mlx.utils

    return cast("list[tuple[str, Any]]", mlx.utils.tree_flatten(model.parameters()))


def _write_model(arch: Architecture, quant: str, seed: int, root: Path, folder: Path) -> None:
    mx, _ = import_mlx()
    import mlx.utils
    from mlx_lm.utils import quantize_model

    config = mlx_config(arch, seed)
    module = _model_module(arch)
    model = module.Model(module.ModelArgs.from_dict(config))
    # mlx arrays are lazy: the default initialisation is replaced before it is computed.
    fresh = []
    for name, value in _flat(model):
        if value.ndim == 1:
            fill = mx.zeros if name.endswith(".bias") else mx.ones
            fresh.append((name, fill(value.shape, dtype=mx.bfloat16)))
        else:
            key = mx.random.key((seed << 32) | zlib.crc32(name.encode()))
            values = mx.random.normal(value.shape, dtype=mx.bfloat16, scale=INIT_STD, key=key)
            fresh.append((name, values))
    model.update(mlx.utils.tree_unflatten(fresh))
    bits = MLX_QUANT_BITS[quant]
    if bits is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the bits per weight
            model, config = quantize_model(model, config, GROUP_SIZE, bits, mode="affine")
    weights = dict(_flat(model))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    tokenizer = tokenizer_data(arch.vocab_size, root)
    shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
    text = json.dumps(tokenizer_config(arch), indent=1)
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def synthetic_mlx_model(
    arch: Architecture | str,
    quantization: str = "bf16",
    *,
    cache: Path | None = None,
    seed: int = 0,
) -> Path:
    """The cached mlx-lm folder of a catalog label or an architecture, built if absent."""
    if not isinstance(arch, Architecture):
        arch = resolve_model(arch).architecture
    quant = resolve_quant(quantization)
    if quant.format != "mlx":
        raise ConfigError(
            f"{quant.name!r} is a GGUF quantization; synthetic MLX models take one of: "
            f"{', '.join(MLX_QUANT_BITS)} (build GGUF files with lmgauge.synthetic.synthetic_gguf)"
        )
    _model_module(arch)  # before any work: this mlx-lm must know the architecture
    root = cache if cache is not None else cache_dir()
    final = model_folder(arch, quant.name, root, seed)
    if (final / "config.json").is_file():
        return final
    _check_resources(arch, quant.name, final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_model(arch, quant.name, seed, root, partial)
        try:
            os.rename(partial, final)  # atomic; fails if another builder got there first
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
