"""Is a synthetic GGUF written block by block the same file, for speed, as one made by
llama.cpp's quantizer? Issue 15's proof.

For each model and file type: both files (``synthetic_gguf(...)`` and
``synthetic_gguf(..., builder="llama-quantize")``, which writes F16 and quantizes it:
minutes for a 7B shape), then

* identity: file size, tensor count, and every tensor's name, type and shape; the
  metadata keys and values, where they differ;
* speed (``--rounds N``): llama-bench's pp (prompt) and tg (decode at the prompt's depth)
  on both files, interleaved in N rounds, the order alternating; per round the ratio
  direct/quantizer, and their geometric mean with a 95% t-interval. ``--aa`` times the
  quantizer's file against a fresh copy of itself instead: the spread (and any effect of
  a file's place on disk and in the page cache) with no difference in content.

    .venv/bin/python scripts/synthetic_identity.py --rounds 6 qwen3-0.6b:Q4_K_M qwen3-7b:Q8_0

Needs the llama.cpp tools (scripts/setup.sh --with-llama-tools) for ``--rounds``, and for
the 7B shape ~25 GB of disk for the F16 intermediate and both files.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import gguf
from scipy import stats

from lmgauge.crosscheck import Workload, llama_bench
from lmgauge.synthetic import synthetic_gguf

IGNORED_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def _fields(reader: gguf.GGUFReader) -> dict[str, Any]:
    values = {}
    for name, field in reader.fields.items():
        if name in IGNORED_KEYS or name.startswith("tokenizer.ggml."):
            continue  # the tokenizer is the same file in both; its arrays are slow to read
        values[name] = field.contents()
    return values


def identity(direct: Path, made: Path) -> list[str]:
    """Every difference between the two files but their weight values."""
    a, b = gguf.GGUFReader(direct), gguf.GGUFReader(made)
    differences = []
    if direct.stat().st_size != made.stat().st_size:
        differences.append(f"size {direct.stat().st_size:,} != {made.stat().st_size:,}")
    tensors_a = [(t.name, t.tensor_type.name, tuple(t.shape)) for t in a.tensors]
    tensors_b = [(t.name, t.tensor_type.name, tuple(t.shape)) for t in b.tensors]
    if len(tensors_a) != len(tensors_b):
        differences.append(f"{len(tensors_a)} tensors != {len(tensors_b)}")
    pairs = zip(tensors_a, tensors_b, strict=False)
    differences += [f"tensor {x} != {y}" for x, y in pairs if x != y]
    fields_a, fields_b = _fields(a), _fields(b)
    for key in sorted(fields_a.keys() | fields_b.keys()):
        if fields_a.get(key) != fields_b.get(key):
            differences.append(f"key {key}: {fields_a.get(key)!r} != {fields_b.get(key)!r}")
    return differences


def type_counts(path: Path) -> str:
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))


def ratio_interval(ratios: list[float]) -> str:
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return f"{math.exp(mean):.3f}x"
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return f"{math.exp(mean):.3f}x [{math.exp(mean - half):.3f}, {math.exp(mean + half):.3f}]"


def speed(a: Path, b: Path, rounds: int, workload: Workload, seed: int) -> dict[str, str]:
    """Per round the ratio a/b of llama-bench's pp and tg; the rounds alternate which file
    goes first (the first of each pair of rounds drawn at random), so that an order effect
    (caches, clocks) falls on both files alike."""
    rng = random.Random(seed)
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    order = [a, b]
    for i in range(rounds):
        order = rng.sample([a, b], 2) if i % 2 == 0 else order[::-1]
        figures = {path: llama_bench(path, workload) for path in order}
        for test in ratios:
            ratios[test].append(float(figures[a][test]) / float(figures[b][test]))  # type: ignore[arg-type]
        first = "direct" if order[0] == a else "other"
        print(
            f"  round {i + 1}/{rounds} ({first} first): "
            + ", ".join(f"{t} {ratios[t][-1]:.3f}" for t in ratios),
            file=sys.stderr,
            flush=True,
        )
    return {test: ratio_interval(values) for test, values in ratios.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="label:QUANT, e.g. qwen3-7b:Q4_K_M")
    parser.add_argument("--rounds", type=int, default=0, help="paired llama-bench rounds")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-mmap",
        action="store_true",
        help="llama-bench --load-mode none: each file read into memory, so that which file "
        "the page cache holds (two 8 GB files do not both fit in 24 GB) does not time the run",
    )
    parser.add_argument(
        "--aa",
        action="store_true",
        help="control: time the quantizer's file against a fresh copy of itself instead",
    )
    args = parser.parse_args()
    workload = Workload(
        prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, mmap=not args.no_mmap
    )
    rows = []
    for item in args.models:
        label, _, quant = item.partition(":")
        direct = synthetic_gguf(label, quant)
        made = synthetic_gguf(label, quant, builder="llama-quantize")
        differences = identity(direct, made)
        row = {
            "model": f"{label} {quant}",
            "size": f"{direct.stat().st_size:,} / {made.stat().st_size:,}",
            "types": type_counts(direct),
            "differences": "; ".join(differences) if differences else "none",
        }
        print(f"{item}: {row}", file=sys.stderr, flush=True)
        if args.rounds and args.aa:
            copy = made.with_name(made.name + ".aa-copy")
            shutil.copyfile(made, copy)
            try:
                row.update(speed(copy, made, args.rounds, workload, args.seed))
            finally:
                copy.unlink()
        elif args.rounds:
            row.update(speed(direct, made, args.rounds, workload, args.seed))
        rows.append(row)
    header = ["model", "size (direct / quantizer)", "tensor types", "differences"]
    if args.rounds:
        arm = "copy" if args.aa else "direct"
        header += [f"prefill {arm}/quantizer", f"decode {arm}/quantizer"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["model"], row["size"], row["types"], row["differences"]]
        if args.rounds:
            cells += [row["pp"], row["tg"]]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
