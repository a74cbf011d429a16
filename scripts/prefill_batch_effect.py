"""Prefill time of one prompt at several n_batch values, interleaved in a fresh random
order each round in one process (llama.cpp evaluation through llama-cpp-python, no
lmgauge client): how large a real effect a batch size is, before a paired-gate study.

    .venv/bin/python scripts/prefill_batch_effect.py 128 512,64,48,32 12
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import llama_cpp

from lmgauge.synthetic import synthetic_gguf


def main() -> None:
    prompt_tokens, rounds = int(sys.argv[1]), int(sys.argv[3])
    batches = [int(b) for b in sys.argv[2].split(",")]
    model = str(synthetic_gguf("qwen3-0.6b", "Q4_K_M"))
    engines = {
        b: llama_cpp.Llama(
            model_path=model, n_ctx=4096, n_batch=b, n_ubatch=b, n_threads=2, verbose=False
        )
        for b in batches
    }
    rng = random.Random(0)
    seconds: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(rounds):
        for b in rng.sample(batches, len(batches)):
            tokens = [rng.randrange(1000, 100_000) for _ in range(prompt_tokens)]
            engines[b].reset()
            started = time.perf_counter()
            engines[b].eval(tokens)
            seconds[b].append(time.perf_counter() - started)
    base = statistics.median(seconds[batches[0]])
    for b in batches:
        median = statistics.median(seconds[b])
        print(f"n_batch {b}: {median * 1e3:.0f} ms, {median / base:.3f}x n_batch {batches[0]}")


if __name__ == "__main__":
    main()
