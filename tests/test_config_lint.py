"""Server configs and their linter: on the planning documents' own settings it flags every
fictional one and none of the real ones (the reference: Ollama envconfig/config.go and
api/types.go, lmstudio-js LLMLoadModelConfig, mlx-lm mlx_lm/server.py, llama-cpp-python's
Llama parameters; see lmgauge.settings_registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmgauge.backends.base import LoadSettings
from lmgauge.cli import main as lmgauge
from lmgauge.config import lint_config, load_config, load_settings, request_options
from lmgauge.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"
FLAGGED = {
    "seed000-ollama.toml": {
        "server.OLLAMA_NUMA",
        "server.OLLAMA_VERBOSE",
        "server.OLLAMA_MAX_VRAM",
        "server.OLLAMA_CPU_THREADS",
        "server.OLLAMA_MMAP",
        "server.OLLAMA_MLOCK",
        "server.OLLAMA_BATCH_SIZE",
        "server.OLLAMA_CONTEXT_SIZE",
        "server.OLLAMA_ROPE_FREQ_BASE",
        "server.OLLAMA_ROPE_FREQ_SCALE",
        "load.numa",
        "load.low_vram",
        "load.f16_kv",
        "load.use_mlock",
        "options.tfs_z",
        "options.penalize_newline",
        "options.mirostat",
        "options.mirostat_tau",
        "options.mirostat_eta",
    },
    "seed001-ollama.toml": set(),
    "seed004-ollama.toml": {
        "server.OLLAMA_NUM_GPU",
        "server.OLLAMA_CPU_TARGET",
        "server.OLLAMA_NUM_THREADS",
        "server.OLLAMA_NUMA_POLICY",
        "server.memory_limit",
        "load.use_mlock",
    },
    "seed001-lmstudio.toml": {
        "server.host",
        "server.max_requests",
        "server.timeout",
        "load.gpu_layers",
        "load.context_length",
        "load.batch_size",
        "load.threads",
        "load.rope_freq_base",
        "load.rope_freq_scale",
    },
    "seed003-lmstudio.toml": {
        "server.auto_load",
        "server.memory_management",
        "server.model_library",
        "server.api_endpoints",
    },
}
REAL = {
    # the real settings in the seeds' configurations: none may be flagged
    "seed000-ollama.toml": {
        "server.OLLAMA_NUM_PARALLEL",
        "server.OLLAMA_MAX_LOADED_MODELS",
        "server.OLLAMA_MAX_QUEUE",
        "server.OLLAMA_KEEP_ALIVE",
        "server.OLLAMA_HOST",
        "server.OLLAMA_FLASH_ATTENTION",
        "server.OLLAMA_DEBUG",
        "server.OLLAMA_KV_CACHE_TYPE",
        "server.OLLAMA_LOAD_TIMEOUT",
        "load.num_batch",
        "load.num_gpu",
        "load.num_thread",
        "load.use_mmap",
        "options.temperature",
        "options.top_k",
        "options.top_p",
        "options.min_p",
        "options.typical_p",
        "options.seed",
    },
    "seed004-ollama.toml": {"server.CUDA_VISIBLE_DEVICES", "load.use_mmap"},
    "seed000-lmstudio.toml": {"server.port", "server.cors"},
    "seed004-lmstudio.toml": {"options.temperature", "options.presence_penalty"},
}


def errors_in(name: str) -> set[str]:
    problems = lint_config(load_config(CONFIGS / "seeds" / name))
    return {p.location for p in problems if p.severity == "error"}


@pytest.mark.parametrize("name", sorted(FLAGGED))
def test_the_seeds_fictional_settings_are_flagged_exactly(name: str) -> None:
    assert errors_in(name) == FLAGGED[name]


@pytest.mark.parametrize("name", sorted(REAL))
def test_no_real_setting_of_the_seeds_is_flagged(name: str) -> None:
    assert not errors_in(name) & REAL[name]


def test_every_lm_studio_key_of_seed_000_is_a_seed_name_not_lm_studios() -> None:
    config = load_config(CONFIGS / "seeds" / "seed000-lmstudio.toml")
    everything = {f"{s}.{k}" for s in ("server", "load") for k in config.section(s)}
    assert errors_in("seed000-lmstudio.toml") == everything - {"server.port", "server.cors"}


@pytest.mark.parametrize(
    ("name", "location", "message"),
    [
        (
            "seed000-ollama.toml",
            "server.OLLAMA_MMAP",
            "OLLAMA_MMAP is not an Ollama setting; memory mapping is the `use_mmap` model option",
        ),
        (
            "seed000-ollama.toml",
            "server.OLLAMA_MAX_VRAM",
            "OLLAMA_MAX_VRAM was removed from Ollama in v0.7.0; Ollama now measures GPU "
            "memory itself",
        ),
        (
            "seed000-ollama.toml",
            "options.tfs_z",
            "tfs_z was removed from Ollama in v0.5.2; tail-free sampling is gone",
        ),
        (
            "seed001-lmstudio.toml",
            "load.batch_size",
            "batch_size is not an LM Studio setting; LM Studio's setting is `evalBatchSize`",
        ),
    ],
)
def test_each_problem_says_the_fix(name: str, location: str, message: str) -> None:
    problems = lint_config(load_config(CONFIGS / "seeds" / name))
    assert [p.message for p in problems if p.location == location] == [message]


def test_the_example_configs_lint_clean() -> None:
    examples = sorted(CONFIGS.glob("*.toml"))
    assert len(examples) >= 5
    for path in examples:
        assert lint_config(load_config(path)) == [], path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        '[gate]\nbackend = "ollama"\nmodels = ["qwen3-7b"]\nquantizations = ["Q4_K_M"]\n'
        "contexts = [4096]\n" + text
    )
    return path


def test_typos_wrong_sections_and_bad_values(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[server]\nOLLAMA_FLASH_ATENTION = "1"\nOLLAMA_KV_CACHE_TYPE = "q5_0"\n'
            'OLLAMA_KEEP_ALIVE = "forever"\nuse_mmap = true\n[load]\nnum_batch = -4\n',
        )
    )
    assert [str(p) for p in lint_config(config)] == [
        "server.OLLAMA_FLASH_ATENTION: error: OLLAMA_FLASH_ATENTION is not an Ollama "
        "setting; did you mean OLLAMA_FLASH_ATTENTION?",
        "server.OLLAMA_KV_CACHE_TYPE: error: OLLAMA_KV_CACHE_TYPE must be one of f16, q8_0, "
        "q4_0; got 'q5_0'",
        "server.OLLAMA_KEEP_ALIVE: error: OLLAMA_KEEP_ALIVE must be a duration such as 5m, "
        "30s or -1, or whole seconds; got 'forever'",
        "server.use_mmap: error: use_mmap is a load setting of ollama: move it under [load]",
        "load.num_batch: error: num_batch must be at least 1, got -4",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gate\n", "is not valid TOML"),
        ("", "no [gate] section"),
        ('[gate]\nbackend = "vllm"\n', "[gate].backend is 'vllm'; use one of ollama"),
        (
            '[gate]\nbackend = "ollama"\nmodels = ["qwen3-9b"]\nquantizations = ["Q4_K_M"]\n'
            "contexts = [4096]\n",
            "unknown model 'qwen3-9b'",
        ),
        (
            '[gate]\nbackend = "ollama"\nmodels = ["qwen3-7b"]\nquantizations = ["Q4_K_M"]\n'
            'contexts = ["4k"]\n',
            "[gate].contexts must be a non-empty list of ints",
        ),
        ("[gate]\n[tuning]\n", "unknown section(s) tuning"),
    ],
)
def test_a_malformed_config_is_an_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_load_settings_and_request_options_per_backend() -> None:
    embedded = load_config(CONFIGS / "llamacpp-embedded-slow.toml")
    assert load_settings(embedded, 4096) == LoadSettings(
        context_tokens=4096, threads=1, batch_tokens=512, use_mmap=True
    )
    ollama = load_config(CONFIGS / "ollama-baseline.toml")
    assert load_settings(ollama, 16384) == LoadSettings(context_tokens=16384, batch_tokens=512)
    lmstudio = load_config(CONFIGS / "lmstudio-baseline.toml")
    settings = load_settings(lmstudio, 4096)
    assert (settings.flash_attention, settings.batch_tokens, settings.parallel_slots) == (
        True,
        512,
        1,
    )
    seed = load_config(CONFIGS / "seeds" / "seed000-ollama.toml")
    assert request_options(seed)["top_k"] == 40
    assert "tfs_z" not in request_options(seed)  # fictional settings are never sent


def test_lint_config_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert lmgauge(["lint-config", str(CONFIGS / "ollama-baseline.toml")]) == 0
    assert "1 file(s): 0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert lmgauge(["lint-config", str(CONFIGS / "seeds" / "seed004-ollama.toml")]) == 1
    out = capsys.readouterr().out
    assert "seed004-ollama.toml: server.OLLAMA_NUMA_POLICY: error: OLLAMA_NUMA_POLICY" in out
    assert "1 file(s): 6 error(s), 1 warning(s)" in out
