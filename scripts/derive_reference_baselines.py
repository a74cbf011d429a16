"""Write the derived decode baselines of the reference machine (M3 Max, 128 GB, 400 GB/s).

    .venv/bin/python scripts/derive_reference_baselines.py

No public measurement of Qwen3 on an M3 Max was found (not in ggml-org/llama.cpp
discussion 4167, XiongjieDai/GPU-Benchmarks-on-LLM-Inference or mlx-lm BENCHMARKS.md), so
each number is derived: bandwidth x efficiency / bytes read per decoded token (active
weights + the KV cache at the middle of the context). The efficiency is calibrated on
public anchors from those three, per engine and weight format; every number says so in
its ``source``. Replace
them with measured ones (``--lmgauge-update-baselines`` on the machine) as soon as someone can.
"""

from __future__ import annotations

from pathlib import Path

from lmgauge.baselines import BaselineFile, CaseBaseline, MetricBaseline, save_baseline
from lmgauge.catalog import SEED_LABELS, resolve_model, resolve_quant
from lmgauge.hardware import REFERENCE_PROFILES

PROFILE = "apple-m3-max-128gb"
BANDWIDTH = REFERENCE_PROFILES[PROFILE].bandwidth_bytes_per_s
CONTEXTS = (4096, 16384, 32768)

# Share of the memory bandwidth a decoder reaches: public decode speed x bytes per token
# / bandwidth, from the public anchor named beside each entry.
GGUF_EFFICIENCY = {
    # Llama-3 8B Q4_K_M, M3 Max 40-core: 48.97 t/s x 4.91 GB / 400 GB/s (XiongjieDai)
    "Q4_K_M": (0.60, "Llama-3-8B Q4_K_M 48.97 t/s on M3 Max"),
    # LLaMA-2 7B Q8_0, M4 Max 40-core: 54.1 t/s x 7.16 GB / 546 GB/s (llama.cpp #4167)
    "Q8_0": (0.71, "LLaMA-2-7B Q8_0 54.1 t/s on M4 Max (546 GB/s)"),
}
MLX_EFFICIENCY = {
    # Qwen3-4B, M4 Max: q4 134.5 t/s x 2.26 GB, q8 86.9 t/s x 4.27 GB, over 546 GB/s
    "4bit": (0.56, "mlx-lm BENCHMARKS.md Qwen3-4B q4 134.5 t/s on M4 Max (546 GB/s)"),
    "8bit": (0.68, "mlx-lm BENCHMARKS.md Qwen3-4B q8 86.9 t/s on M4 Max (546 GB/s)"),
}
# Qwen3-30B-A3B on M4 Max (mlx-lm): q4 113.3 t/s over 1.89 GB active -> 0.39, q8 83.2 t/s
# over 3.56 GB -> 0.54: 0.70x and 0.80x of the dense shares; the lower is used.
# The M4 Max figures assume the 40-core GPU variant (546 GB/s); mlx-lm BENCHMARKS.md does
# not say which variant it ran on.
MOE_FACTOR = (0.70, "mlx-lm Qwen3-30B-A3B q4 113.3 / q8 83.2 t/s on M4 Max vs dense Qwen3-4B")


def derived_decode(
    label: str, quantization: str, context: int, efficiency: tuple[float, str]
) -> MetricBaseline:
    entry = resolve_model(label)
    arch = entry.architecture
    share, anchor = efficiency
    note = anchor
    if arch.is_moe:
        share *= MOE_FACTOR[0]
        note += f"; x{MOE_FACTOR[0]} for a mixture of experts ({MOE_FACTOR[1]})"
    bytes_per_token = (
        entry.active_weight_bytes(quantization) + arch.kv_bytes_per_token("f16") * context / 2
    )
    value = BANDWIDTH * share / bytes_per_token
    source = (
        f"derived: {BANDWIDTH / 1e9:.0f} GB/s x {share:.2f} / {bytes_per_token / 1e9:.2f} GB "
        f"read per token ({resolve_quant(quantization).bits_per_weight} bpw active "
        f"weights + f16 KV at {context // 2} tokens); efficiency from {note}"
    )
    return MetricBaseline((round(value, 2),), "derived", source)


def build(backend: str, quantizations: dict[str, tuple[float, str]]) -> BaselineFile:
    cases = {}
    for label in SEED_LABELS:
        for quant, efficiency in quantizations.items():
            for context in CONTEXTS:
                environment = {
                    "model": label,
                    "model_digest": None,
                    "quantization": quant,
                    "context_tokens": context,
                    "backend": backend,
                    "backend_version": None,
                    "profile": PROFILE,
                }
                metric = derived_decode(label, quant, context, efficiency)
                case_id = f"{backend}-{label}-{quant}-ctx{context}"
                cases[case_id] = CaseBaseline(environment, {"decode_tokens_per_s": metric})
    return BaselineFile(PROFILE, backend, cases, {"note": "derived, not measured"})


def main() -> None:
    root = Path(__file__).resolve().parent.parent / "baselines"
    for backend, quantizations in (
        ("ollama", GGUF_EFFICIENCY),
        ("lmstudio", GGUF_EFFICIENCY),
        ("mlx", MLX_EFFICIENCY),
    ):
        path = root / PROFILE / f"{backend}.json"
        save_baseline(path, build(backend, quantizations))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
