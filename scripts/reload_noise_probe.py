"""Is a fresh model load a random performance offset? Stretches of a few samples, each either
right after a fresh load or on a model kept loaded, in a random order per block, in one
process: the spread of stretch medians for each kind, and within stretches.

    .venv/bin/python scripts/reload_noise_probe.py 12
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time

import llama_cpp

from lmgauge.synthetic import synthetic_gguf

SAMPLES_PER_STRETCH = 4  # the first is dropped: it follows the load


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    settings = dict(
        model_path=str(synthetic_gguf("qwen3-0.6b", "Q4_K_M")),
        n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=2, verbose=False,
    )  # fmt: skip
    rng = random.Random(1)

    def sample(llm: llama_cpp.Llama) -> tuple[float, float]:
        """Prefill of 128 tokens, and the median of 8 decode steps, in seconds."""
        llm.reset()
        started = time.perf_counter()
        llm.eval([rng.randrange(1000, 100_000) for _ in range(128)])
        prefill_s = time.perf_counter() - started
        steps = []
        for _ in range(8):
            started = time.perf_counter()
            llm.eval([rng.randrange(1000, 100_000)])
            steps.append(time.perf_counter() - started)
        return prefill_s, statistics.median(steps)

    kept = llama_cpp.Llama(**settings)
    stretches: dict[str, list[list[tuple[float, float]]]] = {"reloaded": [], "kept": []}
    for _ in range(blocks):
        for kind in rng.sample(list(stretches), 2):
            llm = llama_cpp.Llama(**settings) if kind == "reloaded" else kept
            stretches[kind].append([sample(llm) for _ in range(SAMPLES_PER_STRETCH)])
            if kind == "reloaded":
                llm.close()
    for kind, runs in stretches.items():
        for index, name in enumerate(("prefill_s", "decode_step_s")):
            within = statistics.median(
                statistics.stdev(math.log(s[index]) for s in run[1:]) for run in runs
            )
            medians = [math.log(statistics.median(s[index] for s in run[1:])) for run in runs]
            print(
                f"{kind:8s} {name:13s} sd(log) within a stretch {within:.3f}, "
                f"of stretch medians {statistics.stdev(medians):.3f}"
            )


if __name__ == "__main__":
    main()
