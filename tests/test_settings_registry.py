"""The settings registry (lmgauge.settings_registry): every backend's entries consistent with
themselves and with the linter's vocabulary, and spot checks of the upstream facts it encodes
(Ollama envconfig/config.go and api/types.go, lmstudio-js LLMLoadModelConfig, mlx-lm
mlx_lm/server.py, llama-cpp-python's Llama parameters)."""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections import Counter
from pathlib import Path

import pytest

from lmgauge import settings_registry
from lmgauge.backends import BACKEND_NAMES
from lmgauge.backends.base import LoadSettings
from lmgauge.backends.lmstudio_load import REST_LOAD_FIELDS
from lmgauge.config import DURATION, GO_BOOLS
from lmgauge.settings_registry import (
    LLAMACPP,
    LMSTUDIO,
    LMSTUDIO_NOT,
    MLX,
    OLLAMA,
    OLLAMA_NOT,
    REGISTRIES,
    Kind,
    NotASetting,
    Section,
    Setting,
)

OWN = [backend for backend in REGISTRIES if backend != "openai"]  # openai: llama.cpp's
ALL_SETTINGS = [
    pytest.param(backend, setting, id=f"{backend}-{name}")
    for backend in OWN
    for name, setting in REGISTRIES[backend][0].items()
]
ALL_NOT_SETTINGS = [
    pytest.param(backend, entry, id=f"{backend}-{name}")
    for backend in OWN
    for name, entry in REGISTRIES[backend][1].items()
]
LOAD_FIELDS = {f.name for f in dataclasses.fields(LoadSettings)} - {"extra"}


def test_every_backend_has_a_registry() -> None:
    assert set(REGISTRIES) == set(BACKEND_NAMES) - {"auto"}
    assert REGISTRIES["openai"] == REGISTRIES["llamacpp"]  # llama-server: llama.cpp's names


@pytest.mark.parametrize(("backend", "setting"), ALL_SETTINGS)
def test_a_real_setting_is_consistent(backend: str, setting: Setting) -> None:
    real, _ = REGISTRIES[backend]
    assert real[setting.name] is setting
    assert setting.name
    assert setting.name == setting.name.strip()
    assert setting.section in typing.get_args(Section)
    assert setting.kind in typing.get_args(Kind)
    if setting.minimum is not None:
        assert setting.kind in ("int", "float"), "a minimum on a value that is not a number"
    if setting.choices:
        assert len(set(setting.choices)) == len(setting.choices)
        # the linter compares lowercased text with the choices
        assert all(c == c.lower() for c in setting.choices)
        if setting.kind == "int":
            assert all(re.fullmatch(r"-?\d+", c) for c in setting.choices)
    if setting.load_field is not None:
        assert setting.section == "load", "only a load setting becomes a LoadSettings field"
        assert setting.load_field in LOAD_FIELDS


@pytest.mark.parametrize(("backend", "setting"), ALL_SETTINGS)
def test_a_default_is_a_value_the_setting_accepts(backend: str, setting: Setting) -> None:
    default = setting.default
    if default is None:
        return
    if setting.choices:
        assert default in setting.choices
    if setting.kind == "duration":
        assert DURATION.match(default)
    elif setting.kind in ("bool01", "bool"):
        assert default in ("0", "1", "true", "false")
    elif setting.kind == "boolint":
        assert default in GO_BOOLS or re.fullmatch(r"[+-]?\d+", default)
    elif setting.kind in ("int", "float"):
        if default == "auto":  # num_ctx: sized by the server itself
            assert (backend, setting.name) == ("ollama", "num_ctx")
            return
        number = int(default) if setting.kind == "int" else float(default)
        assert setting.minimum is None or number >= setting.minimum


@pytest.mark.parametrize(("backend", "entry"), ALL_NOT_SETTINGS)
def test_a_name_that_is_not_a_setting_carries_its_fix(backend: str, entry: NotASetting) -> None:
    real, not_real = REGISTRIES[backend]
    assert not_real[entry.name] is entry
    assert entry.name not in real
    assert len(entry.fix) > 10
    assert entry.fix.strip() == entry.fix
    # read after "<key> is not a ... setting; ": a clause, no full stop
    assert entry.fix[0].isalpha()
    assert not entry.fix.endswith(".")
    if entry.removed_in is not None:
        assert re.fullmatch(r"v\d+\.\d+\.\d+", entry.removed_in)
    # every setting the fix points to (`backticked`, or an OLLAMA_* variable) exists
    pointed = [
        name
        for name in re.findall(r"`([^`\s]+)`", entry.fix)
        if re.fullmatch(r"[A-Za-z][\w.-]*", name) and name != "lms"
    ]
    pointed += re.findall(r"\bOLLAMA_[A-Z_]+\b", entry.fix)
    for name in pointed:
        assert name in real, f"{entry.name}'s fix names {name}, which is not a real setting"


def test_no_name_is_both_real_and_not_real() -> None:
    for backend, (real, not_real) in REGISTRIES.items():
        assert not set(real) & set(not_real), backend


def test_no_registry_lists_a_name_twice() -> None:
    """The registries are dicts built from lists: a repeated name would silently replace the
    entry before it."""
    tree = ast.parse(Path(settings_registry.__file__).read_text())
    found = 0
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Name) and call.func.id in ("_settings", "_not")):
            continue
        names = [
            item.args[0].value
            for item in call.args
            if isinstance(item, ast.Call)
            and item.args
            and isinstance(item.args[0], ast.Constant)
            and isinstance(item.args[0].value, str)
        ]
        assert len(names) == len(call.args)
        repeated = [name for name, count in Counter(names).items() if count > 1]
        assert not repeated, f"{ast.unparse(node.targets[0])} repeats {repeated}"
        found += 1
    assert found == 8  # four backends, each with real and not-real names


# --- the upstream facts --------------------------------------------------------------------


def test_ollama_server_defaults_from_envconfig() -> None:
    defaults = {name: s.default for name, s in OLLAMA.items() if s.section == "server"}
    assert defaults["OLLAMA_MAX_QUEUE"] == "512"  # then HTTP 503
    assert defaults["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert defaults["OLLAMA_KEEP_ALIVE"] == "5m"
    assert defaults["OLLAMA_LOAD_TIMEOUT"] == "5m"
    assert defaults["OLLAMA_NUM_PARALLEL"] == "1"
    assert defaults["OLLAMA_MAX_LOADED_MODELS"] == "0"  # 0: 3 per GPU
    assert defaults["OLLAMA_CONTEXT_LENGTH"] == "0"  # 0: sized by GPU memory
    assert defaults["OLLAMA_FLASH_ATTENTION"] is None  # unset: the server decides
    assert OLLAMA["OLLAMA_KV_CACHE_TYPE"].choices == ("f16", "q8_0", "q4_0")
    # ollama/ollama@fb30760 envconfig/config.go: LogLevel (L201-212) reads a boolean or any
    # integer; GoTemplate(true) (AsMap L315); Uint("OLLAMA_MAX_TRANSFER_STREAMS", 4) (L285).
    assert OLLAMA["OLLAMA_DEBUG"].kind == "boolint"
    assert defaults["OLLAMA_GO_TEMPLATE"] == "true"
    assert OLLAMA["OLLAMA_GO_TEMPLATE"].kind == "bool01"
    assert defaults["OLLAMA_MAX_TRANSFER_STREAMS"] == "4"
    informational = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy"}
    informational |= {"no_proxy", "HSA_OVERRIDE_GFX_VERSION", "GGML_VK_VISIBLE_DEVICES"}
    informational |= {"LLAMA_ARG_FIT", "LLAMA_ARG_FIT_TARGET"}
    assert all(OLLAMA[name].kind == "str" for name in informational)


def test_ollama_model_options_from_api_types() -> None:
    assert OLLAMA["num_batch"].default == "512"
    assert OLLAMA["num_gpu"].default == "-1"  # -1: as many layers as fit
    assert OLLAMA["num_thread"].default == "0"  # 0: the runtime decides
    load = {name for name, s in OLLAMA.items() if s.section == "load"}
    runner = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
    assert load == runner | {"draft_num_predict"}  # api/types.go@fb30760 L595
    assert OLLAMA["draft_num_predict"].default == "4"  # DefaultOptions, L1119
    assert {"temperature", "top_k", "top_p", "min_p", "num_predict", "stop"} <= set(OLLAMA)
    assert OLLAMA["stop"].kind == "strlist"  # Stop []string, L584


def test_ollama_names_that_were_removed_say_when() -> None:
    removed = {name: n.removed_in for name, n in OLLAMA_NOT.items() if n.removed_in}
    assert removed["OLLAMA_MAX_VRAM"] == "v0.7.0"
    assert removed["numa"] == "v0.3.4"
    assert removed["tfs_z"] == "v0.5.2"
    assert removed["penalize_newline"] == "v0.5.5"
    assert removed["use_mlock"] == "v0.7.0"
    assert removed["mirostat"] == "v0.7.0"
    never = ("OLLAMA_NUMA", "OLLAMA_MMAP", "OLLAMA_MLOCK", "OLLAMA_BATCH_SIZE", "OLLAMA_NUM_GPU")
    for name in never:  # never existed: nothing to date
        assert OLLAMA_NOT[name].removed_in is None


def test_lm_studio_load_settings_are_the_rest_load_fields() -> None:
    """lmstudio-ai/docs@c6854fb 1_developer/2_rest/load.md L13-43, and what lmgauge's
    LM Studio backend puts in the body: nothing else."""
    load = {name for name, s in LMSTUDIO.items() if s.section == "load"}
    assert load == set(REST_LOAD_FIELDS)
    assert LMSTUDIO["eval_batch_size"].default == "2048"  # lmstudio-js schema.ts L354
    assert LMSTUDIO["eval_batch_size"].load_field is None  # sent only when the config sets it


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("contextLength", "`context_length`"),
        ("flashAttention", "`flash_attention`"),
        ("evalBatchSize", "`eval_batch_size`"),
        ("batch_size", "`eval_batch_size`"),
        ("keepModelInMemory", "not settable over LM Studio's REST load"),
        ("useFp16ForKVCache", "not settable over LM Studio's REST load"),
        ("llama.kCacheQuantizationType", "not settable over LM Studio's REST load"),
        ("tryMmap", "not settable over LM Studio's REST load"),
        ("numParallelSessions", "not settable over LM Studio's REST load"),
        ("threads", "llama.cpuThreadPoolSize"),
        ("mlock", "keepModelInMemory"),
        ("max_requests", "numParallelSessions"),
        ("gpu", "`lms load --gpu 0-1|max|off`"),
        ("ttl", "`lms load --ttl SECONDS`"),
    ],
)
def test_lm_studio_names_rest_cannot_set_say_so(name: str, fix: str) -> None:
    assert fix in LMSTUDIO_NOT[name].fix


def test_lm_studio_and_mlx_server_defaults() -> None:
    assert LMSTUDIO["port"].default == "1234"
    assert MLX["port"].default == "8080"
    assert MLX["host"].default == "127.0.0.1"
    assert MLX["kv-group-size"].default == "64"
    assert MLX["kv-bits"].choices == ("4", "8")


def test_llama_cpp_parameters() -> None:
    assert LLAMACPP["n_batch"].default == "512"
    assert LLAMACPP["type_k"].choices == LLAMACPP["type_v"].choices == ("f16", "q8_0", "q4_0")
    fields = {s.load_field for s in LLAMACPP.values() if s.load_field}
    assert fields == {
        "context_tokens",
        "threads",
        "batch_tokens",
        "flash_attention",
        "kv_cache_type",
        "use_mmap",
    }
