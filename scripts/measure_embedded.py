"""Measure the embedded engine on synthetic weights of a catalog model's shape.

    .venv/bin/python scripts/measure_embedded.py qwen3-0.6b Q4_K_M Q8_0 --samples 5

Prints, per quantization: load time, prefill and decode speed (client-measured and
llama.cpp's own), and decode speed as a share of this host's bandwidth roofline.
Until the benchmark suite lands this is the way to take these figures by hand.
"""

from __future__ import annotations

import argparse
import asyncio

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.llamacpp import LlamaCppBackend
from lmgauge.catalog import resolve_model
from lmgauge.hardware import decode_roofline_tokens_per_s, probe_bandwidth
from lmgauge.measure import measure
from lmgauge.stats import summarize_samples
from lmgauge.synthetic import synthetic_gguf
from lmgauge.workload import exact_prompt


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="catalog label, e.g. qwen3-0.6b or qwen3-7b")
    parser.add_argument("quantizations", nargs="+", help="GGUF quantizations, e.g. Q4_K_M Q8_0")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--context", type=int, default=1024)
    return parser


async def run(args: argparse.Namespace) -> None:
    entry = resolve_model(args.model)
    bandwidth = probe_bandwidth()
    print(f"host bandwidth: {bandwidth.describe()}")
    for quant in args.quantizations:
        path = synthetic_gguf(entry.label, quant)
        engine = LlamaCppBackend()
        loaded = await engine.load(
            str(path), LoadSettings(context_tokens=args.context, threads=args.threads)
        )
        memory = await engine.memory()
        prompts = [
            exact_prompt(args.prompt_tokens, engine.count_tokens, seed=i)
            for i in range(args.samples + 1)
        ]
        samples = await measure(
            engine,
            lambda i, path=path, prompts=prompts: GenerateRequest(
                str(path), prompts[i], max_tokens=args.max_tokens
            ),
            samples=args.samples,
            warmups=1,
            expected_prompt_tokens=args.prompt_tokens,
        )
        await engine.aclose()
        stats = summarize_samples(samples)
        valid = [s for s in samples if s.valid]
        model_bytes = memory.model_bytes or path.stat().st_size
        kv_per_token = (memory.kv_cache_bytes or 0) / args.context
        mean_context = args.prompt_tokens + args.max_tokens / 2
        roof = decode_roofline_tokens_per_s(
            bandwidth.read_bytes_per_s, model_bytes, kv_per_token, round(mean_context)
        )
        if entry.architecture.is_moe:
            print("  (MoE: the roofline uses all weights; decode reads only the active experts)")
        decode = stats["decode_tokens_per_s"].median if valid else float("nan")
        print(
            f"{entry.label} {quant}: {path.stat().st_size / 1e9:.2f} GB file, "
            f"load {loaded.load_s:.1f} s, {len(valid)}/{args.samples} valid samples"
        )
        for metric in (
            "ttft_s",
            "prefill_tokens_per_s",
            "server_prefill_tokens_per_s",
            "decode_tokens_per_s",
            "server_decode_tokens_per_s",
        ):
            if metric in stats:
                s = stats[metric]
                print(f"  {metric:28s} median {s.median:9.3f}  IQR {s.iqr:8.3f}  n={s.n}")
        print(
            f"  decode roofline (derived) {roof:.1f} t/s at {bandwidth.read_bytes_per_s / 1e9:.1f}"
            f" GB/s -> measured decode is {decode / roof:.0%} of it"
        )


def main() -> None:
    asyncio.run(run(setup_arg_parser().parse_args()))


if __name__ == "__main__":
    main()
