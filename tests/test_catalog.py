"""Catalog: real architectures, labels, quantizations and the bytes arithmetic."""

from pathlib import Path

import pytest

from lmgauge.catalog import (
    CATALOG,
    KV_CACHE_BITS,
    QUANTIZATIONS,
    SEED_LABELS,
    kv_cache_bits,
    resolve_model,
    resolve_quant,
)
from lmgauge.errors import ConfigError, UnknownModelError, UnknownQuantizationError

# f16 KV bytes per token, in KiB: 2 (K and V) x layers x KV heads x head_dim x 2 B, from
# each model's config.json (Qwen/Qwen3-*, Qwen/Qwen2.5-7B-Instruct on Hugging Face).
KV_F16_KIB = {
    "qwen3-0.6b": 112,
    "qwen3-1.7b": 112,
    "qwen3-4b": 144,
    "qwen3-8b": 144,
    "qwen3-14b": 160,
    "qwen3-32b": 256,
    "qwen3-30b-a3b": 96,
    "qwen3-7b": 56,
}


@pytest.mark.parametrize("label", CATALOG.labels)
def test_parameter_count_matches_the_published_figure(label: str) -> None:
    arch = resolve_model(label).architecture
    assert arch.total_params == pytest.approx(arch.published_params, rel=5e-4)


@pytest.mark.parametrize(("label", "kib"), KV_F16_KIB.items())
def test_kv_cache_per_token_matches_facts(label: str, kib: int) -> None:
    assert resolve_model(label).architecture.kv_bytes_per_token("f16") == kib * 1024


def test_moe_active_parameters_are_the_routed_experts() -> None:
    arch = resolve_model("qwen3-30b").architecture
    assert arch.is_moe
    assert arch.active_params == pytest.approx(3.353e9, rel=1e-3)
    assert arch.total_params == pytest.approx(30.532e9, rel=1e-3)


def test_dense_models_read_every_parameter() -> None:
    arch = resolve_model("qwen3-8b").architecture
    assert arch.active_params == arch.total_params


def test_every_seed_label_resolves_to_a_real_architecture() -> None:
    backing = {label: resolve_model(label).architecture.name for label in SEED_LABELS}
    assert backing == {
        "qwen3-1.7b": "Qwen3-1.7B",
        "qwen3-7b": "Qwen2.5-7B-Instruct",
        "qwen3-14b": "Qwen3-14B",
        "qwen3-30b": "Qwen3-30B-A3B",
        "qwen3-30b-thinking": "Qwen3-30B-A3B-Thinking-2507",
    }
    assert "no Qwen3-7B" in resolve_model("qwen3-7b").backed_by
    assert resolve_model("qwen3-30b-thinking").thinking


def test_unknown_label_lists_the_known_ones_and_the_closest() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model("qwen3-7b-instruct")
    message = str(info.value)
    assert "did you mean 'qwen3-7b'" in message
    assert "qwen3-30b-thinking" in message


def test_labels_are_case_insensitive() -> None:
    assert resolve_model("Qwen3-8B").label == "qwen3-8b"


def test_quantizations_and_bits_per_weight() -> None:
    assert set(QUANTIZATIONS) == {
        "Q3_K_M",
        "Q4_0",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_M",
        "Q6_K",
        "Q8_0",
        "F16",
        "4bit",
        "8bit",
        "bf16",
    }
    assert resolve_quant("q4_k_m").bits_per_weight == 4.89
    assert resolve_quant("Q8_0").bits_per_weight == 8.5
    assert resolve_quant("4bit").format == "mlx"
    assert all(q.source for q in QUANTIZATIONS.values())


def test_unknown_quantization_suggests_the_closest() -> None:
    with pytest.raises(UnknownQuantizationError, match="did you mean 'Q4_K_M'"):
        resolve_quant("Q4_KM")


def test_weight_bytes_follow_bits_per_weight() -> None:
    entry = resolve_model("qwen3-8b")
    # 8.19e9 params x 4.89 bpw (Q4_K_M, llama.cpp tools/quantize/README.md) / 8 = 5.0 GB
    assert entry.weight_bytes("Q4_K_M") == pytest.approx(5.0e9, rel=0.01)
    assert entry.weight_bytes("Q8_0") > entry.weight_bytes("Q4_K_M")


def test_kv_cache_types() -> None:
    assert dict(KV_CACHE_BITS) == {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}
    arch = resolve_model("qwen3-8b").architecture
    assert arch.kv_bytes_per_token("q8_0") == arch.kv_bytes_per_token("f16") * 8.5 / 16
    with pytest.raises(ConfigError, match="unknown KV cache type 'q5_1'"):
        kv_cache_bits("q5_1")


def test_backend_tags() -> None:
    assert resolve_model("qwen3-8b").tag("ollama", "Q4_K_M") == "qwen3:8b-q4_K_M"
    assert resolve_model("qwen3-7b").tag("ollama", "Q8_0") == "qwen2.5:7b-instruct-q8_0"
    assert resolve_model("qwen3-14b").tag("mlx", "4bit") == "mlx-community/Qwen3-14B-4bit"
    assert resolve_model("qwen3-8b").tag("ollama", "F16") == "qwen3:8b-fp16"


def test_a_gguf_quantization_has_no_mlx_name() -> None:
    with pytest.raises(UnknownQuantizationError, match="mlx does not serve gguf"):
        resolve_model("qwen3-8b").tag("mlx", "Q4_K_M")


def test_overrides_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.qwen3-7b]\nollama = "my-qwen:7b-{quant}"\nlmstudio = "qwen2.5-7b-instruct-mlx"\n'
    )
    catalog = CATALOG.with_overrides(path)
    assert catalog.model("qwen3-7b").tag("ollama", "Q4_K_M") == "my-qwen:7b-q4_K_M"
    assert catalog.model("qwen3-7b").tag("lmstudio", "Q4_K_M") == "qwen2.5-7b-instruct-mlx"
    assert catalog.model("qwen3-7b").tag("mlx", "4bit").startswith("mlx-community/")
    assert CATALOG.model("qwen3-7b").tag("ollama", "Q4_K_M").startswith("qwen2.5:")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[models.qwen3-9b]\nollama = 'x'\n", "unknown model 'qwen3-9b'"),
        ("[models.qwen3-7b]\nvllm = 'x'\n", "unknown backend"),
        ("[models.qwen3-7b]\nollama = 3\n", "must map backend names to strings"),
        ("[model]\n", "unknown table"),
        ("[models.qwen3-7b\n", "not valid TOML"),
    ],
)
def test_malformed_overrides_are_named(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        CATALOG.with_overrides(path)


def test_missing_overrides_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog overrides"):
        CATALOG.with_overrides(tmp_path / "absent.toml")


def test_the_thinking_label_runs_with_the_seeds_timeout_and_one_request_at_a_time() -> None:
    entry = resolve_model("qwen3-30b-thinking")
    assert (entry.thinking, entry.request_timeout_s, entry.max_concurrency) == (True, 1800.0, 1)
    plain = resolve_model("qwen3-30b")
    assert (plain.thinking, plain.max_concurrency) == (False, None)


def test_lm_studio_names_carry_the_quantization_as_a_variant() -> None:
    """LM Studio names a quantization variant ``key@q4_k_m`` (lmstudio-ai/docs c6854fb
    3_cli/0_local-models/get.md L18; 1_developer/2_rest/list.md L180-183): without it two
    quantizations of a case would load the same file."""
    qwen8 = resolve_model("qwen3-8b")
    assert qwen8.tag("lmstudio", "Q4_K_M") == "qwen/qwen3-8b@q4_k_m"
    assert qwen8.tag("lmstudio", "Q8_0") == "qwen/qwen3-8b@q8_0"
    assert qwen8.tag("lmstudio", "F16") == "qwen/qwen3-8b@f16"
    assert resolve_model("qwen3-7b").tag("lmstudio", "Q4_K_M") == "qwen2.5-7b-instruct@q4_k_m"
    gguf = [q for q in QUANTIZATIONS.values() if q.format == "gguf"]
    assert all(q.backend_spelling["lmstudio"] == q.name.lower() for q in gguf)
    for label in CATALOG.labels:
        entry = resolve_model(label)
        names = {entry.tag("lmstudio", q) for q in ("Q4_K_M", "Q8_0")}
        # the seed's MLX build of the thinking model has no documented variant names
        assert len(names) == 2 or label == "qwen3-30b-thinking", label
    with pytest.raises(UnknownQuantizationError, match="lmstudio does not serve mlx"):
        qwen8.tag("lmstudio", "4bit")
