"""Models, quantizations and the bytes/params arithmetic behind every memory figure.

Each architecture is the real one (the Qwen3 technical report and the models' config.json
on Hugging Face). Parameter counts are computed from the shape, never typed in; the
published counts are kept only to check the arithmetic.

Labels are what users select with ``-k``: the real names (``qwen3-8b``) and the
planning documents' labels (``qwen3-7b``, ``qwen3-30b``...). Each label says which real
model backs it. There is no Qwen3-7B: the seeds' ``qwen3-7b`` is Qwen2.5-7B-Instruct,
the model seed 003 ("Qwen3 Model Selection Strategy for M3 Max Optimization") itself
pulls for it.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from lmgauge.errors import ConfigError, UnknownModelError, UnknownQuantizationError

BACKENDS = ("ollama", "lmstudio", "mlx")
"""Backends whose model names differ per model; the tag templates in the catalog use them."""

KiB = 1024
GiB = 1024**3
GB = 1_000_000_000


@dataclass(frozen=True)
class Architecture:
    """The shape of a transformer, enough to count its parameters and its KV cache."""

    name: str
    gguf_arch: Literal["qwen3", "qwen3moe", "qwen2"]
    n_layers: int
    hidden_size: int
    intermediate_size: int  # dense FFN width; for a MoE, the width of one expert
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    native_context: int
    max_context: int  # with YaRN where the model card allows it
    published_params: float  # from the model card, only to check the arithmetic
    n_experts: int = 0
    n_active_experts: int = 0
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    qk_norm: bool = True  # Qwen3 normalizes q and k per head

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def _attention_params(self) -> int:
        q_out = self.n_heads * self.head_dim
        kv_out = self.n_kv_heads * self.head_dim
        params = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        if self.qkv_bias:
            params += q_out + 2 * kv_out
        if self.qk_norm:
            params += 2 * self.head_dim
        return params

    def _ffn_params(self, experts: int) -> int:
        one_ffn = 3 * self.hidden_size * self.intermediate_size  # gate, up, down
        if not self.is_moe:
            return one_ffn
        router = self.hidden_size * self.n_experts
        return router + experts * one_ffn

    def _params(self, experts: int) -> int:
        per_layer = self._attention_params() + self._ffn_params(experts) + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size
        output = 0 if self.tied_embeddings else embeddings
        return self.n_layers * per_layer + embeddings + output + self.hidden_size

    @property
    def total_params(self) -> int:
        return self._params(self.n_experts)

    @property
    def active_params(self) -> int:
        """Parameters read to decode one token: all of a dense model, the routed experts of a MoE.

        The embedding table counts in full, as in the published "active" figures.
        """
        return self._params(self.n_active_experts)

    def kv_bytes_per_token(self, kv_cache_type: str = "f16") -> float:
        """Bytes of K and V cache per token of context, over all layers."""
        bits = kv_cache_bits(kv_cache_type)
        values = 2 * self.n_layers * self.n_kv_heads * self.head_dim
        return values * bits / 8


def _qwen3(
    name: str,
    layers: int,
    hidden: int,
    ffn: int,
    heads: int,
    kv: int,
    *,
    tied: bool,
    native: int,
    maximum: int,
    published: float,
) -> Architecture:
    return Architecture(
        name=name,
        gguf_arch="qwen3",
        n_layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=128,
        vocab_size=151936,
        tied_embeddings=tied,
        native_context=native,
        max_context=maximum,
        published_params=published,
    )


QWEN3_0_6B = _qwen3(
    "Qwen3-0.6B", 28, 1024, 3072, 16, 8, tied=True, native=32768, maximum=32768, published=0.596e9
)
QWEN3_1_7B = _qwen3(
    "Qwen3-1.7B", 28, 2048, 6144, 16, 8, tied=True, native=32768, maximum=32768, published=1.721e9
)
QWEN3_4B = _qwen3(
    "Qwen3-4B", 36, 2560, 9728, 32, 8, tied=True, native=32768, maximum=131072, published=4.022e9
)
QWEN3_8B = _qwen3(
    "Qwen3-8B", 36, 4096, 12288, 32, 8, tied=False, native=32768, maximum=131072, published=8.191e9
)
QWEN3_14B = _qwen3(
    "Qwen3-14B",
    40,
    5120,
    17408,
    40,
    8,
    tied=False,
    native=32768,
    maximum=131072,
    published=14.768e9,
)
QWEN3_32B = _qwen3(
    "Qwen3-32B",
    64,
    5120,
    25600,
    64,
    8,
    tied=False,
    native=32768,
    maximum=131072,
    published=32.762e9,
)
QWEN3_30B_A3B = Architecture(
    name="Qwen3-30B-A3B",
    gguf_arch="qwen3moe",
    n_layers=48,
    hidden_size=2048,
    intermediate_size=768,
    n_heads=32,
    n_kv_heads=4,
    head_dim=128,
    vocab_size=151936,
    tied_embeddings=False,
    native_context=32768,
    max_context=131072,
    published_params=30.532e9,
    n_experts=128,
    n_active_experts=8,
)
# The 2507 Thinking release has the same shape with a 256K native context (its model card).
QWEN3_30B_A3B_THINKING_2507 = replace(
    QWEN3_30B_A3B, name="Qwen3-30B-A3B-Thinking-2507", native_context=262144, max_context=262144
)
QWEN2_5_7B = Architecture(
    name="Qwen2.5-7B-Instruct",
    gguf_arch="qwen2",
    n_layers=28,
    hidden_size=3584,
    intermediate_size=18944,
    n_heads=28,
    n_kv_heads=4,
    head_dim=128,
    vocab_size=152064,
    tied_embeddings=False,
    native_context=32768,
    max_context=131072,
    published_params=7.616e9,
    qkv_bias=True,
    qk_norm=False,
)


@dataclass(frozen=True)
class Quantization:
    """A weight format and its whole-file average bits per weight."""

    name: str
    format: Literal["gguf", "mlx"]
    bits_per_weight: float
    source: str
    backend_spelling: Mapping[str, str]  # how each backend's model tags spell it


def _gguf(name: str, bpw: float, source: str, ollama: str) -> Quantization:
    # LM Studio names a model's quantization variants `key@q4_k_m`: lower case (lmstudio-ai
    # docs@c6854fb 3_cli/0_local-models/get.md L18, 1_developer/2_rest/list.md L180-183).
    spellings = {"ollama": ollama, "lmstudio": name.lower()}
    return Quantization(name, "gguf", bpw, source, MappingProxyType(spellings))


def _mlx(name: str, bpw: float, source: str) -> Quantization:
    return Quantization(name, "mlx", bpw, source, MappingProxyType({"mlx": name}))


_QUANT_README = "llama.cpp tools/quantize/README.md, Llama-3.1-8B whole-file average"
QUANTIZATIONS: Mapping[str, Quantization] = MappingProxyType(
    {
        q.name: q
        for q in (
            _gguf(
                "Q3_K_M", 3.91, "llama.cpp examples/quantize/README.md, Llama-2-7B table", "q3_K_M"
            ),
            _gguf(
                "Q4_0",
                4.64,
                "derived: llama.cpp quantize type list, Q4_0 4.34 GiB for Llama-3-8B "
                "(8.03e9 params); the block format alone is 4.5 (ggml-common.h)",
                "q4_0",
            ),
            _gguf("Q4_K_S", 4.67, _QUANT_README, "q4_K_S"),
            _gguf("Q4_K_M", 4.89, _QUANT_README, "q4_K_M"),
            _gguf("Q5_K_M", 5.70, _QUANT_README, "q5_K_M"),
            _gguf("Q6_K", 6.56, _QUANT_README, "q6_K"),
            _gguf("Q8_0", 8.50, _QUANT_README, "q8_0"),
            _gguf("F16", 16.0, _QUANT_README, "fp16"),
            _mlx(
                "4bit", 4.5, "MLX affine quantization, group size 64: 4 bits + fp16 scale and bias"
            ),
            _mlx(
                "8bit", 8.5, "MLX affine quantization, group size 64: 8 bits + fp16 scale and bias"
            ),
            _mlx("bf16", 16.0, "bfloat16, unquantized"),
        )
    }
)

KV_CACHE_BITS: Mapping[str, float] = MappingProxyType(
    {
        "f16": 16.0,
        "q8_0": 8.5,  # 32 int8 values + one f16 scale per block
        "q4_0": 4.5,  # 32 4-bit values + one f16 scale per block
    }
)
"""Bits per cached value for the KV cache types Ollama and llama.cpp accept."""


def kv_cache_bits(kv_cache_type: str) -> float:
    try:
        return KV_CACHE_BITS[kv_cache_type.lower()]
    except KeyError:
        known = ", ".join(KV_CACHE_BITS)
        raise ConfigError(f"unknown KV cache type {kv_cache_type!r}; use one of: {known}") from None


@dataclass(frozen=True)
class ModelEntry:
    """A selectable label: the real architecture behind it and each backend's name for it."""

    label: str
    architecture: Architecture
    backed_by: str  # what real model serves this label, in words
    tags: Mapping[str, str]  # backend -> template; "{quant}" is the backend's spelling
    thinking: bool = False  # a model that always thinks (Qwen3 Thinking-2507)
    request_timeout_s: float = 600.0
    max_concurrency: int | None = None  # None: the backend's own limit

    def tag(self, backend: str, quantization: str | Quantization) -> str:
        """The model name a backend knows, e.g. ``qwen3:8b-q4_K_M`` for Ollama."""
        quant = (
            quantization if isinstance(quantization, Quantization) else resolve_quant(quantization)
        )
        template = self.tags.get(backend)
        if template is None:
            raise ConfigError(
                f"model {self.label!r} has no {backend} name; add one under "
                f"[models.{self.label}] in your catalog overrides file"
            )
        if "{quant}" not in template:
            return template
        spelling = quant.backend_spelling.get(backend)
        if spelling is None:
            raise UnknownQuantizationError(
                f"{backend} does not serve {quant.format} quantization {quant.name!r} for "
                f"{self.label!r}; choose one of: {', '.join(_quants_for(backend))}"
            )
        return template.replace("{quant}", spelling)

    def weight_bytes(self, quantization: str | Quantization) -> int:
        quant = (
            quantization if isinstance(quantization, Quantization) else resolve_quant(quantization)
        )
        return round(self.architecture.total_params * quant.bits_per_weight / 8)

    def active_weight_bytes(self, quantization: str | Quantization) -> int:
        """Weight bytes read per decoded token (the roofline's numerator)."""
        quant = (
            quantization if isinstance(quantization, Quantization) else resolve_quant(quantization)
        )
        return round(self.architecture.active_params * quant.bits_per_weight / 8)


def _quants_for(backend: str) -> list[str]:
    return [q.name for q in QUANTIZATIONS.values() if backend in q.backend_spelling]


def _entry(
    label: str,
    arch: Architecture,
    backed_by: str,
    ollama: str,
    lmstudio: str,
    mlx: str,
    *,
    thinking: bool = False,
) -> ModelEntry:
    tags = MappingProxyType({"ollama": ollama, "lmstudio": lmstudio, "mlx": mlx})
    if not thinking:
        return ModelEntry(label, arch, backed_by, tags)
    # Seeds 000 and 002 give the thinking model a 1800 s timeout and one request at a time.
    return ModelEntry(
        label, arch, backed_by, tags, thinking=True, request_timeout_s=1800.0, max_concurrency=1
    )


_MODELS = (
    _entry(
        "qwen3-0.6b",
        QWEN3_0_6B,
        "Qwen3-0.6B",
        "qwen3:0.6b-{quant}",
        "qwen/qwen3-0.6b@{quant}",
        "mlx-community/Qwen3-0.6B-{quant}",
    ),
    _entry(
        "qwen3-1.7b",
        QWEN3_1_7B,
        "Qwen3-1.7B",
        "qwen3:1.7b-{quant}",
        "qwen/qwen3-1.7b@{quant}",
        "mlx-community/Qwen3-1.7B-{quant}",
    ),
    _entry(
        "qwen3-4b",
        QWEN3_4B,
        "Qwen3-4B",
        "qwen3:4b-{quant}",
        "qwen/qwen3-4b@{quant}",
        "mlx-community/Qwen3-4B-{quant}",
    ),
    _entry(
        "qwen3-8b",
        QWEN3_8B,
        "Qwen3-8B",
        "qwen3:8b-{quant}",
        "qwen/qwen3-8b@{quant}",
        "mlx-community/Qwen3-8B-{quant}",
    ),
    _entry(
        "qwen3-14b",
        QWEN3_14B,
        "Qwen3-14B",
        "qwen3:14b-{quant}",
        "qwen/qwen3-14b@{quant}",
        "mlx-community/Qwen3-14B-{quant}",
    ),
    _entry(
        "qwen3-32b",
        QWEN3_32B,
        "Qwen3-32B",
        "qwen3:32b-{quant}",
        "qwen/qwen3-32b@{quant}",
        "mlx-community/Qwen3-32B-{quant}",
    ),
    _entry(
        "qwen3-30b-a3b",
        QWEN3_30B_A3B,
        "Qwen3-30B-A3B (mixture of experts, 3.3B active)",
        "qwen3:30b-a3b-{quant}",
        "qwen/qwen3-30b-a3b@{quant}",
        "mlx-community/Qwen3-30B-A3B-{quant}",
    ),
    # The planning documents' labels.
    _entry(
        "qwen3-7b",
        QWEN2_5_7B,
        "Qwen2.5-7B-Instruct: there is no Qwen3-7B; seed 003 pulls qwen2.5:7b for this label",
        "qwen2.5:7b-instruct-{quant}",
        "qwen2.5-7b-instruct@{quant}",
        "mlx-community/Qwen2.5-7B-Instruct-{quant}",
    ),
    _entry(
        "qwen3-30b",
        QWEN3_30B_A3B,
        "Qwen3-30B-A3B (seeds' 'Qwen3-30B'; a mixture of experts)",
        "qwen3:30b-a3b-{quant}",
        "qwen/qwen3-30b-a3b@{quant}",
        "mlx-community/Qwen3-30B-A3B-{quant}",
    ),
    _entry(
        "qwen3-30b-thinking",
        QWEN3_30B_A3B_THINKING_2507,
        "Qwen3-30B-A3B-Thinking-2507 (seed 000 loads qwen3-30b-a3b-thinking-2507-mlx)",
        "qwen3:30b-a3b-thinking-2507-{quant}",
        "qwen3-30b-a3b-thinking-2507-mlx",
        "mlx-community/Qwen3-30B-A3B-Thinking-2507-{quant}",
        thinking=True,
    ),
)
SEED_LABELS = ("qwen3-1.7b", "qwen3-7b", "qwen3-14b", "qwen3-30b", "qwen3-30b-thinking")


@dataclass(frozen=True)
class Catalog:
    """The models users can select, with per-backend names a TOML file may override."""

    models: Mapping[str, ModelEntry] = field(
        default_factory=lambda: MappingProxyType({m.label: m for m in _MODELS})
    )

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.models)

    def model(self, label: str) -> ModelEntry:
        entry = self.models.get(label.lower())
        if entry is not None:
            return entry
        close = difflib.get_close_matches(label.lower(), self.models, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownModelError(
            f"unknown model {label!r}; {hint}known models: {', '.join(self.models)}"
        )

    def with_overrides(self, path: Path) -> Catalog:
        """Override backend names from a TOML file.

        ```toml
        [models.qwen3-7b]
        ollama = "my-qwen:7b-{quant}"   # "{quant}" becomes the backend's spelling, e.g. q4_K_M
        lmstudio = "qwen2.5-7b-instruct-mlx"
        ```
        """
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read catalog overrides {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog overrides {path} is not valid TOML: {exc}") from exc
        unknown_tables = set(data) - {"models"}
        if unknown_tables:
            raise ConfigError(
                f"{path}: unknown table(s) {sorted(unknown_tables)}; "
                "only [models.<label>] tables are allowed"
            )
        models = dict(self.models)
        for label, tags in data.get("models", {}).items():
            entry = self.model(label)
            if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
                raise ConfigError(f"{path}: [models.{label}] must map backend names to strings")
            bad = set(tags) - set(BACKENDS)
            if bad:
                raise ConfigError(
                    f"{path}: [models.{label}] has unknown backend(s) "
                    f"{sorted(bad)}; use: {', '.join(BACKENDS)}"
                )
            merged = MappingProxyType({**entry.tags, **tags})
            models[entry.label] = replace(entry, tags=merged)
        return Catalog(MappingProxyType(models))


CATALOG = Catalog()


def use_overrides(path: Path) -> Catalog:
    """Apply a catalog overrides file (``--lmgauge-catalog``) for the rest of the process:
    resolve_model sees the overridden backend names from then on."""
    global CATALOG  # one catalog per process, chosen on the command line
    CATALOG = CATALOG.with_overrides(path)
    return CATALOG


def resolve_model(label: str) -> ModelEntry:
    """The catalog entry of a label; UnknownModelError lists the labels and the closest one."""
    return CATALOG.model(label)


def resolve_quant(name: str) -> Quantization:
    """A quantization by name, case-insensitively (``q4_k_m`` is ``Q4_K_M``)."""
    for quant in QUANTIZATIONS.values():
        if quant.name.lower() == name.lower():
            return quant
    by_upper = {q.upper(): q for q in QUANTIZATIONS}
    close = difflib.get_close_matches(name.upper(), by_upper, n=1)
    hint = f"did you mean {by_upper[close[0]]!r}? " if close else ""
    raise UnknownQuantizationError(
        f"unknown quantization {name!r}; {hint}known: {', '.join(QUANTIZATIONS)}"
    )
