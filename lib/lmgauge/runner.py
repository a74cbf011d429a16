"""Benchmark cases and their measurement.

A case is (backend, model label, quantization, context). It is measured once, lazily,
the first time a test asks for it; the metric tests of that case (decode, prefill, TTFT,
ITL, memory, load) read the same samples. All backend calls run on one event loop that
lives as long as the session, so a server connection or a loaded model is reused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import psutil

from lmgauge import backends
from lmgauge.backends.base import Backend, GenerateRequest, LoadResult, LoadSettings, MemoryReport
from lmgauge.batcher import Batch, Batcher, BatchRequest
from lmgauge.catalog import GB, SEED_LABELS, resolve_model, resolve_quant
from lmgauge.errors import (
    ContextTooLargeError,
    InsufficientResourcesError,
    LmgaugeError,
    ModelNotFoundError,
)
from lmgauge.hardware import cpu_name
from lmgauge.machine import DisturbanceMonitor
from lmgauge.measure import (
    Sample,
    measure,
    measure_one,
    retry_when_busy,
    unlabelled_cache_hit,
)
from lmgauge.planner import estimate_memory
from lmgauge.scenarios import ANSWER_TOKENS, COUNT, PROMPT_TOKENS, ScenarioResult, run_scenario
from lmgauge.server_env import find_server_process
from lmgauge.workload import exact_prompt

DEFAULT_MATRIX: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = {
    # Small enough for a 2-core machine: the qwen3-7b shape runs in about 2 minutes warm.
    "llamacpp": (("qwen3-0.6b", "qwen3-7b"), ("Q4_K_M",), (4096,)),
    # The reference machine's matrix (seeds): their models x two quantizations x 4K-32K.
    "mlx": (SEED_LABELS, ("4bit", "8bit"), (4096, 16384, 32768)),
    "servers": (SEED_LABELS, ("Q4_K_M", "Q8_0"), (4096, 16384, 32768)),
}
HEAVY_PARAMS = 1e9  # on the embedded engine, a case above this is marked `heavy`
IN_PROCESS = ("llamacpp", "mlx")
SERVER_NAMES = ("ollama", "lms", "LM Studio", "llama-server", "python", "python3", "Python")
"""Names of server processes, looked for when none listens visibly on the server's port."""


@dataclass(frozen=True)
class Case:
    backend: str
    label: str
    quantization: str
    context_tokens: int

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.label}-{self.quantization}-ctx{self.context_tokens}"

    @property
    def heavy(self) -> bool:
        params = resolve_model(self.label).architecture.total_params
        return self.backend == "llamacpp" and params > HEAVY_PARAMS


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 128
    max_tokens: int = 32
    samples: int = 5
    max_samples: int = 15  # the cap of sequential sampling when a verdict is inconclusive
    max_extra_sampling_s: float = 45.0  # and its time budget per case
    warmups: int = 1
    threads: int | None = None
    disturbance_limit: float = 0.25  # other processes' CPU share that voids a sample


@dataclass
class CaseRun:
    case: Case
    environment: dict[str, Any] = field(default_factory=dict)
    load: LoadResult | None = None
    samples: list[Sample] = field(default_factory=list)
    memory: MemoryReport | None = None
    skipped: str | None = None  # why the case cannot run on this host
    error: str | None = None  # why it failed before any sample
    throughput: dict[int, tuple[float, list[Sample]]] = field(default_factory=dict)
    """Per concurrency level: aggregate output tokens/s, and the samples of that burst."""
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)


def build_cases(
    backend: str,
    models: Sequence[str] | None = None,
    quantizations: Sequence[str] | None = None,
    contexts: Sequence[int] | None = None,
) -> list[Case]:
    """The matrix; unknown labels, quantizations and oversized contexts fail here, before
    anything loads."""
    default = DEFAULT_MATRIX.get(backend, DEFAULT_MATRIX["servers"])
    labels = [resolve_model(m).label for m in (models or default[0])]
    quants = [resolve_quant(q).name for q in (quantizations or default[1])]
    for label in labels:
        for context in contexts or default[2]:
            limit = resolve_model(label).architecture.max_context
            if context > limit:
                raise ContextTooLargeError(
                    f"{label} supports at most {limit} tokens of context; "
                    f"drop {context} from the contexts"
                )
    return [
        Case(backend, label, quant, context)
        for label in labels
        for quant in quants
        for context in (contexts or default[2])
    ]


class Runner:
    """Measures cases on one backend, each at most once per session."""

    def __init__(
        self,
        backend_name: str,
        workload: Workload,
        *,
        base_url: str | None = None,
        progress: Callable[[str], None] = lambda _message: None,
        on_update: Callable[[CaseRun], None] = lambda _run: None,
        load_settings: Callable[[Case], LoadSettings] | None = None,
        request_options: Mapping[str, object] | None = None,
    ) -> None:
        self.workload = workload
        self._load_settings = load_settings  # a server config under test, where one is given
        self.request_options = dict(request_options or {})
        self.progress = progress
        self.on_update = on_update  # sees a run after every sample: persist it there
        self._loop = asyncio.Runner()
        self.detection_reason = f"asked for {backend_name}"
        if backend_name == "auto":
            detection = self._loop.run(backends.detect())
            backend_name, base_url = detection.name, detection.base_url
            self.detection_reason = detection.reason
        self.backend_name = backend_name
        self._base_url = base_url
        self._backend: Backend | None = None
        self._runs: dict[Case, CaseRun] = {}
        self._models: dict[Case, str] = {}
        self.server_pids: Callable[[], Sequence[int]] | None = None
        """The server's processes (a managed server sets this); else found on first use."""
        self._found_pids: tuple[int, ...] | None = None
        self.guard_note: str | None = None  # why samples are not checked for disturbance

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = backends.get(self.backend_name, base_url=self._base_url)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._loop.run(self._backend.aclose())
        self._loop.close()

    def runs(self) -> list[CaseRun]:
        return list(self._runs.values())

    def run(self, case: Case) -> CaseRun:
        if case not in self._runs:
            self._runs[case] = self._measure(case)
        return self._runs[case]

    def more_samples(
        self, case: Case, count: int, *, warmups: int = 0, seed_offset: int = 0
    ) -> list[Sample]:
        """Draw ``count`` more samples for ``case`` (sequential sampling, paired rounds),
        after ``warmups`` unmeasured requests; returns the new ones, warm-ups included.
        ``seed_offset`` keeps two arms' prompts apart, so one arm never reuses a prompt
        the other left in a server's cache."""
        run = self.run(case)
        if run.skipped or run.error:
            return []
        self._ensure_loaded(case)
        before = len(run.samples)
        self._sample_into(run, count, warmups=warmups, first=seed_offset + before)
        return run.samples[before:]

    def prepare(self, case: Case) -> CaseRun:
        """Load ``case``'s model and record its environment, measuring nothing yet (the
        paired gate measures in rounds). Returns the (possibly skipped or failed) run."""
        if case not in self._runs:
            self._runs[case] = self._measure(case, samples=0)
        return self._runs[case]

    def _pids_of_the_server(self) -> tuple[int, ...] | None:
        """The processes whose CPU use is the measurement's own: none besides this one for
        an in-process engine; the server's for a server. None where the server cannot be
        found: then other processes cannot be told from it, and the guard is off."""
        if self.server_pids is not None:
            return tuple(self.server_pids())
        if self.backend_name in IN_PROCESS:
            return ()
        if self._found_pids is None:
            try:
                url = self._base_url or backends.DEFAULT_URLS.get(self.backend_name, "")
                self._found_pids = (find_server_process(url, names=SERVER_NAMES).pid,)
            except (LookupError, PermissionError) as exc:
                self._found_pids = ()
                self.guard_note = (
                    f"the {self.backend_name} server's process was not found ({exc}): its CPU "
                    "use cannot be told from other processes', so samples are not checked "
                    "for disturbance"
                )
        return self._found_pids or None

    def load(self, case: Case) -> LoadResult:
        """Load ``case``'s model with this runner's settings (timed by the backend)."""
        return self._ensure_loaded(case)

    def memory(self) -> MemoryReport:
        """The backend's memory reading now; a failed reading says why instead."""
        try:
            return self._loop.run(self.backend.memory())
        except LmgaugeError as exc:
            return MemoryReport(source=f"not read: {type(exc).__name__}: {exc}")

    def unload(self, case: Case) -> None:
        """Unload ``case``'s model, so the next sample loads it again (an arm switch)."""
        if case in self._models:
            self._loop.run(self.backend.unload(self._model_name(case)))

    def reset_backend(self, base_url: str | None = None) -> None:
        """Drop the backend client (its connections died with a restarted server); the
        next call makes a new one, at ``base_url`` where given."""
        if self._backend is not None:
            self._loop.run(self._backend.aclose())
            self._backend = None
        if base_url is not None:
            self._base_url = base_url

    def throughput(self, case: Case, concurrency: int) -> CaseRun:
        """Aggregate output tokens/s with ``concurrency`` requests in flight, submitted
        through the batcher (one request per slot, batches of one: servers batch inside)."""
        run = self.run(case)
        if run.skipped or run.error or concurrency in run.throughput:
            return run
        self._ensure_loaded(case)
        model = self._model_name(case)
        requests = self._requests(case, [1000 * concurrency + i for i in range(concurrency)])

        async def burst() -> tuple[float, list[Sample]]:
            async def handle(batch: Batch) -> list[Sample]:
                payloads = [cast(GenerateRequest, r.payload) for r in batch.requests]
                return list(
                    await asyncio.gather(
                        *(measure_one(self.backend, p, concurrent=True) for p in payloads)
                    )
                )

            async with Batcher(
                handle, max_batch_size=1, window_s=0.0, max_concurrency=concurrency
            ) as batcher:
                start = time.perf_counter()
                samples = await asyncio.gather(
                    *(
                        batcher.submit(BatchRequest(model, self.workload.prompt_tokens, payload=r))
                        for r in requests
                    )
                )
                elapsed = time.perf_counter() - start
            produced = sum(s.output_tokens for s in samples if s.ok)
            return produced / elapsed, list(samples)

        self.progress(f"{case.id}: {concurrency} concurrent requests")
        run.throughput[concurrency] = self._loop.run(burst())
        self.on_update(run)
        return run

    def scenario(self, case: Case, name: str) -> CaseRun:
        """Run one of seed 003's scenario workloads (scenarios.py) on ``case``'s model."""
        run = self.run(case)
        if run.skipped or run.error or name in run.scenarios:
            return run
        self._ensure_loaded(case)
        tokens = PROMPT_TOKENS.get(name, 0)
        if name == "rag":  # a long context, within the loaded one
            tokens = min(tokens, case.context_tokens - ANSWER_TOKENS["rag"] - 64)
        counter = self._counter()
        prompts = [exact_prompt(tokens, counter, seed=5000 + i) for i in range(COUNT.get(name, 0))]
        settings = self.load_settings(case)
        timeout_s = resolve_model(case.label).request_timeout_s
        self.progress(f"{case.id}: scenario {name}")
        run.scenarios[name] = self._loop.run(
            run_scenario(name, self.backend, self._model_name(case), prompts, settings, timeout_s)
        )
        self.on_update(run)
        return run

    def _counter(self) -> Callable[[str], int]:
        """Tokens as the backend counts them, where it can; else words."""
        count_tokens = getattr(self.backend, "count_tokens", None)
        if callable(count_tokens):
            return count_tokens  # type: ignore[no-any-return]
        return lambda text: len(text.split())

    def _measure(self, case: Case, samples: int | None = None) -> CaseRun:
        count = self.workload.samples if samples is None else samples
        run = CaseRun(case)
        estimate = estimate_memory(case.label, case.quantization, case.context_tokens)
        memory = psutil.virtual_memory()
        room = memory.available if self.backend_name == "llamacpp" else memory.total
        if estimate.total_bytes > room:
            run.skipped = (
                f"does not fit this host: {estimate.describe()}, {room / GB:.1f} GB available"
            )
            return run
        try:
            self.progress(f"{case.id}: loading")
            run.load = self._ensure_loaded(case)
            run.environment = self._environment(case)
            self.on_update(run)
            if count:
                self.progress(f"{case.id}: measuring {count} samples")
                self._sample_into(run, count, self.workload.warmups, 0)
            run.memory = self.memory()  # the samples stand even when this reading fails
        except InsufficientResourcesError as exc:
            run.skipped = str(exc)
        except ModelNotFoundError as exc:  # not pulled or downloaded here: not a failure
            run.skipped = f"the server does not have this model: {exc}"
        except LmgaugeError as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        self.on_update(run)
        return run

    def _model_name(self, case: Case) -> str:
        if case not in self._models:
            if self.backend_name == "llamacpp":
                from lmgauge.synthetic import synthetic_gguf

                shown: dict[str, int] = {}

                def report(stage: str, fraction: float) -> None:  # a line a quarter
                    if shown.get(stage, -1) < (quarter := int(fraction * 4)):
                        shown[stage] = quarter
                        self.progress(f"{case.id}: synthetic model: {stage} {fraction:.0%}")

                path = synthetic_gguf(case.label, case.quantization, progress=report)
                self._models[case] = str(path)
            else:
                self._models[case] = resolve_model(case.label).tag(
                    self.backend_name, case.quantization
                )
        return self._models[case]

    def load_settings(self, case: Case) -> LoadSettings:
        """The config's settings for the case where a config is under test; the engine's
        defaults otherwise. ``--lmgauge-threads`` wins over both."""
        if self._load_settings is not None:
            settings = self._load_settings(case)
        else:
            settings = LoadSettings(context_tokens=case.context_tokens)
        if self.workload.threads is not None:
            settings = replace(settings, threads=self.workload.threads)
        return settings

    def _ensure_loaded(self, case: Case) -> LoadResult:
        settings = self.load_settings(case)
        model = self._model_name(case)
        return self._loop.run(retry_when_busy(lambda: self.backend.load(model, settings)))

    def _environment(self, case: Case) -> dict[str, Any]:
        info = self._loop.run(self.backend.info())
        model = self._model_name(case)
        digest = model
        if self.backend_name == "llamacpp":
            path = Path(model)  # the synthetic file: its folder encodes shape, seed, generator
            digest = f"{path.parent.name}/{path.name}:{path.stat().st_size}"
        else:
            listed = self._loop.run(self.backend.list_models())
            digest = next((m.digest or m.name for m in listed if m.name == model), model)
        return {
            "model": case.label,
            "model_digest": digest,
            "quantization": case.quantization,
            "context_tokens": case.context_tokens,
            "backend": self.backend_name,
            "backend_version": info.version,
            "host_cpu": cpu_name(),
            "synthetic_weights": info.synthetic_weights,
        }

    def _requests(self, case: Case, seeds: Sequence[int]) -> list[GenerateRequest]:
        """One request per seed, each with its own prompt of the workload's exact length
        (exact where the backend can count tokens; else counted in words)."""
        entry = resolve_model(case.label)
        counter = self._counter()
        return [
            GenerateRequest(
                self._model_name(case),
                exact_prompt(self.workload.prompt_tokens, counter, seed=seed),
                max_tokens=self.workload.max_tokens,
                thinking=True if entry.thinking else None,
                timeout_s=entry.request_timeout_s,
                options=self.request_options,
            )
            for seed in seeds
        ]

    def _sample_into(self, run: CaseRun, count: int, warmups: int, first: int) -> None:
        """Measure into ``run.samples`` one sample at a time, so that an interrupted run
        keeps (and reports) every sample taken before the interrupt."""
        requests = self._requests(run.case, range(first, first + warmups + count))
        exact = callable(getattr(self.backend, "count_tokens", None))

        pids = self._pids_of_the_server()
        monitor = DisturbanceMonitor(extra_pids=pids or ())

        def keep(sample: Sample) -> None:
            # Each sample is watched: one measured while other processes took the CPU is
            # kept, with the reason, and stays out of every summary and verdict.
            disturbance = monitor.stop()
            metadata = {**sample.metadata, "other_cpu_share": disturbance.other_cpu_share}
            why = (
                disturbance.disturbed(self.workload.disturbance_limit) if pids is not None else None
            )
            if why and sample.invalid_reason is None and sample.ok:
                sample = replace(sample, invalid_reason=f"disturbed: {why}", metadata=metadata)
            elif (
                sample.invalid_reason is None
                and sample.ok
                and not sample.warmup
                and (hit := unlabelled_cache_hit(sample, run.samples))
            ):
                sample = replace(sample, invalid_reason=hit, metadata=metadata)
            else:
                sample = replace(sample, metadata=metadata)
            run.samples.append(sample)
            self.on_update(run)
            monitor.start()  # the next request starts as soon as this returns

        monitor.start()
        self._loop.run(
            measure(
                self.backend,
                requests.__getitem__,
                samples=count,
                warmups=warmups,
                expected_prompt_tokens=self.workload.prompt_tokens if exact else None,
                on_sample=keep,
            )
        )
