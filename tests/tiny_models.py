"""Tiny architectures for tests against the real engines, shared so that their cached
model folders are shared too."""

from lmgauge.catalog import Architecture

# The real Qwen3 vocabulary on a tiny body: MLX's CPU build runs it at ~20 t/s.
TINY_MLX_QWEN3 = Architecture(
    name="lmgauge-tiny-qwen3-mlx",
    gguf_arch="qwen3",
    n_layers=2,
    hidden_size=64,
    intermediate_size=128,
    n_heads=2,
    n_kv_heads=1,
    head_dim=64,
    vocab_size=151936,
    tied_embeddings=True,
    native_context=4096,
    max_context=4096,
    published_params=0.0,
)
