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
    "seed000-lmstudio.toml": {
        "server.port",
        "server.cors",
        "load.context_length",
        "load.flash_attention",
    },
    "seed001-lmstudio.toml": {"load.context_length"},
    "seed004-lmstudio.toml": {
        "options.temperature",
        "options.presence_penalty",
        "load.flash_attention",
        "load.context_length",
    },
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
    """Except the port, CORS, and the two that are REST load fields by the same name
    (lmstudio-ai/docs c6854fb 1_developer/2_rest/load.md)."""
    config = load_config(CONFIGS / "seeds" / "seed000-lmstudio.toml")
    everything = {f"{s}.{k}" for s in ("server", "load") for k in config.section(s)}
    real = {"server.port", "server.cors", "load.context_length", "load.flash_attention"}
    assert errors_in("seed000-lmstudio.toml") == everything - real


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
            "batch_size is not an LM Studio setting; the REST load field is `eval_batch_size`",
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
    assert settings.flash_attention is True
    # eval_batch_size travels under its REST name: sent because the config sets it, even
    # where it equals lmgauge's own default batch (512, not LM Studio's 2048).
    assert dict(settings.extra) == {"eval_batch_size": 512}
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


def lint(tmp_path: Path, backend: str, text: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[gate]\nbackend = "{backend}"\nmodels = ["qwen3-7b"]\nquantizations = ["Q4_K_M"]\n'
        "contexts = [4096]\n" + text
    )
    return [str(p) for p in lint_config(load_config(path))]


def test_ollama_stop_is_a_list_and_a_string_says_how_to_write_it(tmp_path: Path) -> None:
    """ollama/ollama fb30760 api/types.go L584 ``Stop []string``: a string is refused with
    HTTP 500 'option "stop" must be of type array' (L1047-1051), so the linter says so first."""
    assert lint(tmp_path, "ollama", '[options]\nstop = ["</s>", "\\n\\n"]\n') == []
    assert lint(tmp_path, "ollama", '[options]\nstop = "</s>"\n') == [
        'options.stop: error: stop must be a list of strings: write stop = ["</s>"]'
    ]
    assert lint(tmp_path, "ollama", "[options]\nstop = [1]\n") == [
        'options.stop: error: stop must be a list of strings, such as ["</s>"]; got [1]'
    ]
    lint(tmp_path, "ollama", '[options]\nstop = ["</s>"]\n')
    assert request_options(load_config(tmp_path / "c.toml")) == {"stop": ["</s>"]}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('OLLAMA_DEBUG = "true"', None),  # config.go@fb30760 L201-212: ParseBool, else ParseInt
        ('OLLAMA_DEBUG = "2"', None),
        ("OLLAMA_DEBUG = -4", None),
        ("OLLAMA_DEBUG = true", None),
        ('OLLAMA_DEBUG = "loud"', "must be true/false or an integer, got 'loud'"),
        ('OLLAMA_GO_TEMPLATE = "0"', None),
        ('OLLAMA_GO_TEMPLATE = "maybe"', "must be 0 or 1 (or true/false), got 'maybe'"),
        ('HTTPS_PROXY = "http://proxy:3128"', None),  # AsMap L340-351
        ('no_proxy = "localhost"', None),
        ('HSA_OVERRIDE_GFX_VERSION = "10.3.0"', None),  # L256
        ('GGML_VK_VISIBLE_DEVICES = "0"', None),  # L254
        ('LLAMA_ARG_FIT = "off"', None),  # AsMap L320-321
        ('LLAMA_ARG_FIT_TARGET = "1024"', None),
        ('OLLAMA_MAX_TRANSFER_STREAMS = "8"', None),
    ],
)
def test_ollama_server_variables_upstream_reads(
    tmp_path: Path, line: str, problem: str | None
) -> None:
    name = line.split()[0]
    found = lint(tmp_path, "ollama", f"[server]\n{line}\n")
    assert found == ([] if problem is None else [f"server.{name}: error: {name} {problem}"])


def test_draft_num_predict_is_an_ollama_runner_option(tmp_path: Path) -> None:
    """api/types.go@fb30760 L595 (Runner), default 4 (L1119)."""
    assert lint(tmp_path, "ollama", "[load]\ndraft_num_predict = 8\n") == []
    assert lint(tmp_path, "ollama", "[options]\ndraft_num_predict = 8\n") == []  # one object
    assert lint(tmp_path, "ollama", "[load]\ndraft_num_predict = -1\n") == [
        "load.draft_num_predict: error: draft_num_predict must be at least 0, got -1"
    ]


def test_lm_studio_load_keys_are_the_rest_load_fields(tmp_path: Path) -> None:
    """lmstudio-ai/docs c6854fb 1_developer/2_rest/load.md L13-43: the REST load body takes
    context_length, eval_batch_size, flash_attention, num_experts, offload_kv_cache_to_gpu;
    lmstudio-js's names for these and for settings REST cannot set are not settings."""
    text = (
        "[load]\neval_batch_size = 1024\nflash_attention = true\nnum_experts = 8\n"
        "offload_kv_cache_to_gpu = false\n"
    )
    assert lint(tmp_path, "lmstudio", text) == []
    assert lint(tmp_path, "lmstudio", "[load]\nevalBatchSize = 1024\n") == [
        "load.evalBatchSize: error: evalBatchSize is not an LM Studio setting; the REST load "
        "field is `eval_batch_size`"
    ]
    assert lint(tmp_path, "lmstudio", "[load]\nkeepModelInMemory = true\n") == [
        "load.keepModelInMemory: error: keepModelInMemory is not an LM Studio setting; not "
        "settable over LM Studio's REST load; set it in the app's per-model defaults"
    ]
    assert lint(tmp_path, "lmstudio", '[load]\ngpu = "max"\n') == [
        "load.gpu: error: gpu is not an LM Studio setting; not settable over LM Studio's REST "
        "load; use `lms load --gpu 0-1|max|off` before the run"
    ]
    settings = load_settings(load_config(tmp_path / "c.toml"), 4096)
    assert settings.extra == {}  # nothing that is not a REST field reaches the load


def test_the_openai_backend_refuses_load_settings_it_cannot_apply(tmp_path: Path) -> None:
    """A running server cannot take [load] settings from lmgauge: issue 14 found reports
    recording n_batch and n_threads that llama-server never got."""
    path = tmp_path / "openai.toml"
    path.write_text(
        '[gate]\nbackend = "openai"\nmodels = ["qwen3-0.6b"]\nquantizations = ["Q4_K_M"]\n'
        "contexts = [4096]\n[load]\nn_batch = 64\nn_threads = 2\nn_ctx = 4096\n"
    )
    problems = {p.location: p for p in lint_config(load_config(path))}
    assert set(problems) == {"load.n_batch", "load.n_threads", "load.n_ctx"}
    assert problems["load.n_ctx"].severity == "warning"  # the context comes per case
    assert problems["load.n_batch"].severity == "error"
    assert "--batch-size" in problems["load.n_batch"].message
    assert "never got" in problems["load.n_threads"].message
    assert "--threads" in problems["load.n_threads"].message
