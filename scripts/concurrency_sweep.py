"""lmgauge's llama-server backend at 1 to N concurrent streams against one running
llama-server: aggregate tokens/s, per-stream decode as the client saw it and as the server
timed it, and TTFT, per concurrency level. With a file size and a memory bandwidth, decode
is also given as a share of the bandwidth roofline (bytes read per token = the file's
weights, a derived bound: decode tokens/s <= bandwidth / bytes per token).

    python scripts/concurrency_sweep.py URL MODEL --levels 1,2,4,8,16,32,64 \\
        --max-tokens 128 --prompt-words 100 --bandwidth-gb-s 3350 --weights-bytes 5.0e9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from lmgauge.backends.base import GenerateRequest
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.measure import Sample, measure_one
from lmgauge.workload import WORDS


def _prompt(index: int, words: int) -> str:
    return f"{index:06d} " + " ".join(WORDS[(index + i) % len(WORDS)] for i in range(words))


async def _level(
    backend: OpenAIBackend, model: str, streams: int, args: argparse.Namespace, first: int
) -> dict[str, Any]:
    requests = [
        GenerateRequest(model, _prompt(first + i, args.prompt_words), args.max_tokens)
        for i in range(streams)
    ]
    started = time.perf_counter()
    samples: list[Sample] = await asyncio.gather(
        *(measure_one(backend, r, concurrent=True) for r in requests)
    )
    wall_s = time.perf_counter() - started
    valid = [s for s in samples if s.valid]
    client = [v for s in valid if (v := s.decode_tokens_per_s) is not None]
    server = [v for s in valid if (v := s.server_decode_tokens_per_s) is not None]
    ttft = [s.ttft_s for s in valid if s.ttft_s is not None]
    reasons = sorted({s.invalid_reason or "" for s in samples} - {""})
    return {
        "streams": streams,
        "valid": len(valid),
        "invalid_reasons": reasons[:3],
        "aggregate_tokens_per_s": sum(s.output_tokens for s in valid) / wall_s,
        "client_decode_tokens_per_s": statistics.median(client) if client else None,
        "server_decode_tokens_per_s": statistics.median(server) if server else None,
        "ttft_s": statistics.median(ttft) if ttft else None,
    }


async def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    backend = OpenAIBackend(args.url)
    rows = []
    try:
        await _level(backend, args.model, 2, args, first=900_000)  # warm-up
        for round_ in range(args.rounds):
            for streams in (int(level) for level in args.levels.split(",")):
                row = await _level(backend, args.model, streams, args, 1000 * (round_ + 1))
                row["round"] = round_ + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        await backend.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-words", type=int, default=100)
    parser.add_argument("--bandwidth-gb-s", type=float, help="memory bandwidth, for the roofline")
    parser.add_argument("--weights-bytes", type=float, help="bytes read per decoded token")
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args()
    rows = asyncio.run(sweep(args))
    roofline = (
        args.bandwidth_gb_s * 1e9 / args.weights_bytes
        if args.bandwidth_gb_s and args.weights_bytes
        else None
    )
    summary = []
    for streams in sorted({r["streams"] for r in rows}):
        level = [r for r in rows if r["streams"] == streams]

        def med(key: str, level: list[dict[str, Any]] = level) -> float | None:
            values = [r[key] for r in level if r[key] is not None]
            return statistics.median(values) if values else None

        entry = {
            "streams": streams,
            **{k: med(k) for k in ("aggregate_tokens_per_s", "client_decode_tokens_per_s",
                                   "server_decode_tokens_per_s", "ttft_s")},
        }  # fmt: skip
        decode = entry["client_decode_tokens_per_s"]
        if roofline and decode:
            entry["roofline_tokens_per_s"] = roofline  # derived: bandwidth / bytes per token
            entry["client_decode_share_of_roofline"] = decode / roofline
        summary.append(entry)
        print(json.dumps(entry), flush=True)
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump({"rows": rows, "summary": summary, "args": vars(args)}, out, indent=1)


if __name__ == "__main__":
    main()
