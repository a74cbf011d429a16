"""lmgauge's figures against llama.cpp's own, on one GGUF file and one thread count.

Three ways of running the same file, interleaved in rounds (a fresh random order each
round) so the machine's drift falls on all of them alike:

- ``llama-bench`` (llama.cpp's own benchmark: no HTTP, no Python): ``pp{P}`` and ``tg{N}``;
- the embedded engine (llama-cpp-python in this process), measured by lmgauge's client,
  beside llama.cpp's own counters of the same requests;
- ``llama-server`` (started by lmgauge), measured by lmgauge's client, beside the server's
  own ``timings`` of the same requests.

Every tool loads the file afresh each round and unloads it after, so a 7B file is never
resident twice. All three run with the same threads, batch size and flash attention (on:
llama-cpp-python's default is off, llama.cpp's tools default to auto), and llama-bench's
``tg`` decodes at the depth lmgauge's does, after the P-token prompt (``-d P``). lmgauge's
client figures include the time spent outside llama.cpp (llama-cpp-python's sampling in
Python, the server's HTTP streaming); the engines' own counters do not.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.llamacpp import LlamaCppBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.config import ServerStart
from lmgauge.errors import BackendError
from lmgauge.llama_tools import find_llama_tool
from lmgauge.measure import Sample, measure
from lmgauge.metrics import sample_values
from lmgauge.servers import ManagedServer
from lmgauge.workload import exact_prompt

FIGURES = {
    "llama-bench": "llama.cpp's llama-bench (pp / tg)",
    "embedded client": "lmgauge's client, embedded engine",
    "embedded engine": "llama.cpp's counters inside the embedded engine",
    "server client": "lmgauge's client, through llama-server",
    "server timings": "llama-server's own timings",
}


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 128
    gen_tokens: int = 32
    threads: int = 2
    context_tokens: int = 4096
    samples: int = 3  # per tool per round (llama-bench: one repetition per round)
    flash_attention: bool = True
    mmap: bool = True  # off: llama-bench --load-mode none reads the file into memory


@dataclass
class CrossCheck:
    """Per figure, per round: the round's median prefill and decode, tokens/s."""

    model: Path
    workload: Workload
    prefill: dict[str, list[float]] = field(default_factory=dict)
    decode: dict[str, list[float]] = field(default_factory=dict)
    llama_bench_build: str = ""

    def add(self, figure: str, prefill: float | None, decode: float | None) -> None:
        if prefill is not None:
            self.prefill.setdefault(figure, []).append(prefill)
        if decode is not None:
            self.decode.setdefault(figure, []).append(decode)

    def median(self, metric: str, figure: str) -> float | None:
        values = (self.prefill if metric == "prefill" else self.decode).get(figure)
        return statistics.median(values) if values else None

    def ratio_to_bench(self, metric: str, figure: str) -> float | None:
        bench, value = self.median(metric, "llama-bench"), self.median(metric, figure)
        return None if bench is None or value is None else value / bench

    def to_dict(self) -> dict[str, object]:
        return {
            "model": str(self.model),
            "workload": self.workload.__dict__,
            "llama_bench_build": self.llama_bench_build,
            "prefill_tokens_per_s": self.prefill,
            "decode_tokens_per_s": self.decode,
        }


def llama_bench(model: Path, workload: Workload, *, repetitions: int = 1) -> dict[str, object]:
    """llama-bench's ``pp{P}`` (from an empty context) and ``tg{N}`` at depth P (after a
    P-token prompt, as lmgauge decodes): ``{"pp": t/s, "tg": t/s, "build": commit}``."""
    result: dict[str, object] = {}
    for prompt, gen, depth in (
        (workload.prompt_tokens, 0, 0),
        (0, workload.gen_tokens, workload.prompt_tokens),
    ):
        command = [
            str(find_llama_tool("llama-bench")),
            "-m", str(model),
            "-p", str(prompt),
            "-n", str(gen),
            "-d", str(depth),
            "-t", str(workload.threads),
            "-b", "512", "-ub", "512",
            "-fa", "on" if workload.flash_attention else "off",
            "-lm", "auto" if workload.mmap else "none",
            "-r", str(repetitions),
            "-o", "json",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise BackendError(f"llama-bench failed ({done.returncode}): {done.stderr[-2000:]}")
        for test in json.loads(done.stdout):
            result["pp" if test["n_gen"] == 0 else "tg"] = float(test["avg_ts"])
            result["build"] = str(test.get("build_commit", ""))
    return result


def _medians(samples: list[Sample], client: str, engine: str) -> dict[str, float | None]:
    valid = [s for s in samples if s.valid]

    def median(metric: str) -> float | None:
        values = sample_values(valid, metric)
        return statistics.median(values) if values else None

    return {
        f"{client} prefill": median("prefill_tokens_per_s"),
        f"{client} decode": median("decode_tokens_per_s"),
        f"{engine} prefill": median("server_prefill_tokens_per_s"),
        f"{engine} decode": median("server_decode_tokens_per_s"),
    }


async def _sample(
    backend: LlamaCppBackend | OpenAIBackend,
    model: Path,
    prompts: list[str],
    workload: Workload,
) -> list[Sample]:
    return await measure(
        backend,
        lambda i: GenerateRequest(str(model), prompts[i % len(prompts)], workload.gen_tokens),
        samples=workload.samples,
        warmups=1,
        expected_prompt_tokens=workload.prompt_tokens,
    )


async def _embedded(model: Path, workload: Workload, prompts: list[str]) -> dict[str, float | None]:
    backend = LlamaCppBackend()
    try:
        settings = LoadSettings(
            context_tokens=workload.context_tokens,
            threads=workload.threads,
            flash_attention=workload.flash_attention,
        )
        await backend.load(str(model), settings)
        samples = await _sample(backend, model, prompts, workload)
    finally:
        await backend.aclose()
    return _medians(samples, "embedded client", "embedded engine")


async def _server(
    model: Path, workload: Workload, prompts: list[str], log_dir: Path
) -> dict[str, float | None]:
    spec = ServerStart(
        kind="llama-server",
        command=(str(find_llama_tool("llama-server")), "--host", "{host}", "--port", "{port}",
                 "--model", "{model}"),
    )  # fmt: skip
    flags = {
        "threads": workload.threads,
        "ctx-size": workload.context_tokens,
        "parallel": 1,
        "batch-size": 512,
        "ubatch-size": 512,
        "flash-attn": "on" if workload.flash_attention else "off",
    }
    server = ManagedServer(spec, flags, log_dir=log_dir, model=model, name="crosscheck")
    url = server.start()
    backend = OpenAIBackend(url)
    try:
        samples = await _sample(backend, model, prompts, workload)
    finally:
        await backend.aclose()
        server.stop()
    return _medians(samples, "server client", "server timings")


def cross_check(
    model: Path,
    workload: Workload,
    *,
    rounds: int,
    log_dir: Path,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> CrossCheck:
    """``rounds`` rounds of the three tools on ``model``, each round in a random order."""
    check = CrossCheck(model, workload)
    rng = random.Random(seed)
    prompts = _prompts(model, workload, seed)  # the same requests for every tool
    for index in range(rounds):
        order = rng.sample(["llama-bench", "embedded", "server"], 3)
        for tool in order:
            if tool == "llama-bench":
                bench = llama_bench(model, workload)
                check.llama_bench_build = str(bench.get("build", ""))
                check.add("llama-bench", _number(bench.get("pp")), _number(bench.get("tg")))
                continue
            if tool == "embedded":
                figures = asyncio.run(_embedded(model, workload, prompts))
            else:
                figures = asyncio.run(_server(model, workload, prompts, log_dir))
            for name in {key.rsplit(" ", 1)[0] for key in figures}:
                check.add(name, figures[f"{name} prefill"], figures[f"{name} decode"])
        progress(f"{model.name}: round {index + 1} of {rounds} ({', '.join(order)})")
    return check


def _prompts(model: Path, workload: Workload, seed: int) -> list[str]:
    """Prompts of exactly ``prompt_tokens`` tokens (a warm-up's and each sample's), counted
    by the file's own tokenizer as the engines count them (no BOS, no special tokens)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:

        def count_tokens(text: str) -> int:
            return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

        return [
            exact_prompt(workload.prompt_tokens, count_tokens, seed=seed + i)
            for i in range(workload.samples + 1)
        ]
    finally:
        vocab.close()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def table(checks: Mapping[str, CrossCheck]) -> str:
    """A Markdown table: per file, per figure, median prefill and decode t/s and the
    ratio to llama-bench."""
    lines = [
        "| file | figure | prefill t/s | vs llama-bench | decode t/s | vs llama-bench |",
        "|---|---|---|---|---|---|",
    ]
    for name, check in checks.items():
        for figure in FIGURES:
            cells = []
            for metric in ("prefill", "decode"):
                value, ratio = check.median(metric, figure), check.ratio_to_bench(metric, figure)
                cells.append("—" if value is None else f"{value:.1f}")
                cells.append("—" if ratio is None else f"{ratio:.2f}")
            lines.append(f"| {name} | {FIGURES[figure]} | {' | '.join(cells)} |")
    return "\n".join(lines)
