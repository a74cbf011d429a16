"""Server configurations under test: one TOML format for every backend, and its linter.

```toml
[gate]                          # what to benchmark under this config
backend = "ollama"              # ollama | lmstudio | mlx | llamacpp | openai
models = ["qwen3-7b"]           # catalog labels
quantizations = ["Q4_K_M"]
contexts = [4096, 16384]
memory_budget_gb = 96           # optional: the models must fit it (planner)

[server]                        # the server process: environment variables or flags
OLLAMA_FLASH_ATTENTION = "1"

[server.start]                  # optional: lmgauge starts and stops the server itself
kind = "ollama"                 # ollama | mlx_lm | llama-server | llama_cpp.server | lmstudio
port = 0                        # 0: a free loopback port

[load]                          # applied when a model loads
num_batch = 512

[options]                       # sent with every request
temperature = 0.0
```
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from lmgauge.backends.base import LoadSettings
from lmgauge.catalog import GB, resolve_model, resolve_quant
from lmgauge.errors import ConfigError, LmgaugeError
from lmgauge.settings_registry import REGISTRIES, Section, Setting

SECTIONS: tuple[Section, ...] = ("server", "load", "options")
GATE_KEYS = {"backend", "models", "quantizations", "contexts", "memory_budget_gb"}
DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^-?\d+$")
GO_BOOLS = ("1", "t", "true", "0", "f", "false")  # strconv.ParseBool's, lowercased

ServerKind = Literal["ollama", "mlx_lm", "llama-server", "llama_cpp.server", "lmstudio"]
SERVER_KINDS: tuple[ServerKind, ...] = get_args(ServerKind)
# What answers 200 once the server can serve: Ollama's GET /api/version (docs/api.md),
# mlx-lm's and llama-server's /health (mlx_lm/server.py, tools/server/README.md);
# llama-cpp-python's server and LM Studio have no health route, so their model list.
READY_PATHS: dict[ServerKind, str] = {
    "ollama": "/api/version",
    "mlx_lm": "/health",
    "llama-server": "/health",
    "llama_cpp.server": "/v1/models",
    "lmstudio": "/v1/models",
}
# [gate].backend -> the server it implies; "openai" and "llamacpp" fit several kinds.
KIND_OF_BACKEND: dict[str, ServerKind] = {
    "ollama": "ollama",
    "lmstudio": "lmstudio",
    "mlx": "mlx_lm",
}
# What people call the servers (lowercase, without - _ .) -> the kinds they may mean.
KIND_ALIASES: dict[str, tuple[ServerKind, ...]] = {
    "llamacpp": ("llama-server", "llama_cpp.server"),
    "llamacpppython": ("llama_cpp.server",),
    "mlx": ("mlx_lm",),
    "mlxlmserver": ("mlx_lm",),
    "lms": ("lmstudio",),
}
START_KEYS = (
    "command",
    "kind",
    "env",
    "port",
    "host",
    "ready_path",
    "ready_timeout_s",
    "stop_grace_s",
    "log",
)


@dataclass(frozen=True)
class ServerStart:
    """[server.start]: how lmgauge starts the server; the other [server] keys are applied to
    it (environment for Ollama, flags otherwise; see lmgauge.servers.build_command)."""

    kind: ServerKind
    command: tuple[str, ...] | None = None  # argv with {port} {host} {model}; None: the kind's
    env: Mapping[str, str] = field(default_factory=dict)  # on top of lmgauge's environment
    port: int = 0  # 0: a free loopback port, picked at the first start
    host: str = "127.0.0.1"
    ready_path: str = ""  # "": the kind's READY_PATHS entry
    ready_timeout_s: float = 120.0
    stop_grace_s: float = 10.0
    log: Path | None = None  # None: a file in the log folder; relative: under it

    def __post_init__(self) -> None:
        if self.kind not in SERVER_KINDS:
            raise ValueError(f"server kind {self.kind!r} is not one of {', '.join(SERVER_KINDS)}")
        if not self.ready_path:
            object.__setattr__(self, "ready_path", READY_PATHS[self.kind])


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    backend: str
    models: tuple[str, ...]
    quantizations: tuple[str, ...]
    contexts: tuple[int, ...]
    memory_budget_bytes: int | None = None
    server: Mapping[str, Any] = field(default_factory=dict)
    load: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""  # sha256 of the file: which config a baseline or report was made under
    start: ServerStart | None = None  # [server.start]: how lmgauge starts the server itself

    def section(self, name: Section) -> Mapping[str, Any]:
        return {"server": self.server, "load": self.load, "options": self.options}[name]


@dataclass(frozen=True)
class Problem:
    location: str  # "server.OLLAMA_MMAP"
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


def _list(gate: Mapping[str, Any], key: str, kind: type, path: Path) -> tuple[Any, ...]:
    value = gate.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise ConfigError(
            f"{path}: [gate].{key} must be a non-empty list of {kind.__name__}s, got {value!r}"
        )
    return tuple(value)


def load_config(path: Path) -> ServerConfig:
    """Read and check the structure of a config; settings are checked by lint_config."""
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"gate", *SECTIONS})
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; a config has [gate], "
            "[server], [load] and [options]"
        )
    gate = data.get("gate")
    if not isinstance(gate, dict):
        raise ConfigError(f"{path}: no [gate] section (backend, models, quantizations, contexts)")
    if extra := sorted(set(gate) - GATE_KEYS):
        raise ConfigError(f"{path}: unknown [gate] key(s) {', '.join(extra)}")
    backend = gate.get("backend")
    if backend not in REGISTRIES:
        raise ConfigError(
            f"{path}: [gate].backend is {backend!r}; use one of {', '.join(REGISTRIES)}"
        )
    models = _list(gate, "models", str, path)
    quantizations = _list(gate, "quantizations", str, path)
    contexts = _list(gate, "contexts", int, path)
    try:
        for label in models:
            resolve_model(label)
        for quant in quantizations:
            resolve_quant(quant)
    except LmgaugeError as exc:
        raise ConfigError(f"{path}: [gate]: {exc}") from exc
    budget = gate.get("memory_budget_gb")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise ConfigError(f"{path}: [gate].memory_budget_gb must be a positive number")
    sections = {}
    for name in SECTIONS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [{name}] must be a table of settings")
        sections[name] = section
    # [server.start] is how to start the server, not a setting of it: kept apart, so that
    # code reading [server] as settings (server_env.py, reports) sees settings only.
    start_table = sections["server"].get("start")
    if start_table is not None:
        sections["server"] = {k: v for k, v in sections["server"].items() if k != "start"}
    return ServerConfig(
        path=path,
        backend=backend,
        models=models,
        quantizations=quantizations,
        contexts=contexts,
        memory_budget_bytes=None if budget is None else round(budget * GB),
        digest=hashlib.sha256(raw).hexdigest(),
        start=None if start_table is None else parse_start(start_table, backend, path),
        **sections,
    )


def parse_start(table: Any, backend: str, path: Path) -> ServerStart:
    """The [server.start] table, checked; every problem in one ConfigError."""
    where = f"{path}: [server.start]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table (kind, command, port...), got {table!r}")
    wrong = []
    if extra := sorted(set(table) - set(START_KEYS)):
        wrong.append(f"unknown key(s) {', '.join(extra)} (known: {', '.join(START_KEYS)})")
    kind: Any = table.get("kind", KIND_OF_BACKEND.get(backend))
    if kind is None:
        wrong.append(
            f"no kind: [gate].backend {backend!r} can be served by several servers; set "
            f"kind to one of {', '.join(SERVER_KINDS)}"
        )
    elif kind not in SERVER_KINDS:
        spelt = re.sub(r"[-_.]", "", str(kind).lower())
        close: list[str] = [k for k in SERVER_KINDS if re.sub(r"[-_.]", "", k) == spelt]
        close = close or list(KIND_ALIASES.get(spelt, ()))
        close = close or difflib.get_close_matches(str(kind), SERVER_KINDS, n=1, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        wrong.append(f"kind {kind!r} is not one of {', '.join(SERVER_KINDS)}{hint}")

    def check(key: str, ok: bool, what: str) -> None:
        if key in table and not ok:
            wrong.append(f"{key} must be {what}, got {table[key]!r}")

    command, env = table.get("command"), table.get("env", {})
    port, number = table.get("port", 0), (int, float)
    check(
        "command",
        isinstance(command, list) and bool(command) and all(isinstance(a, str) for a in command),
        'a non-empty list of strings, e.g. ["ollama", "serve"]',
    )
    check(
        "env",
        isinstance(env, dict) and all(isinstance(v, str) for v in env.values()),
        'a table of strings, e.g. { HF_HUB_OFFLINE = "1" }',
    )
    check(
        "port",
        isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535,
        "an integer from 0 (a free port) to 65535",
    )
    check("host", isinstance(table.get("host"), str) and bool(table.get("host")), "a host name")
    check(
        "ready_path", str(table.get("ready_path")).startswith("/"), 'a URL path such as "/health"'
    )
    for key, least in (("ready_timeout_s", 0.001), ("stop_grace_s", 0.0)):
        value = table.get(key)
        ok = isinstance(value, number) and not isinstance(value, bool) and value >= least
        check(key, ok, f"a number of seconds, at least {least:g}")
    check("log", isinstance(table.get("log"), str) and bool(table.get("log")), "a file path")
    if wrong:
        raise ConfigError(f"{where}: " + "; ".join(wrong))
    log = table.get("log")
    return ServerStart(
        kind=kind,
        command=None if command is None else tuple(command),
        env=dict(env),
        port=port,
        host=table.get("host", "127.0.0.1"),
        ready_path=table.get("ready_path", ""),
        ready_timeout_s=float(table.get("ready_timeout_s", 120.0)),
        stop_grace_s=float(table.get("stop_grace_s", 10.0)),
        log=None if log is None else Path(log),
    )


def _check_value(setting: Setting, value: Any) -> str | None:
    """Why ``value`` is wrong for ``setting``, or None."""
    kind = setting.kind
    text = str(value).lower() if not isinstance(value, bool) else str(int(value))
    if kind == "bool" and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind == "bool01" and text not in ("0", "1", "true", "false"):
        return f"must be 0 or 1 (or true/false), got {value!r}"
    if kind == "boolint" and text not in GO_BOOLS and not re.fullmatch(r"[+-]?\d+", text):
        return f"must be true/false or an integer, got {value!r}"
    if kind == "strlist":
        if isinstance(value, str):
            return f"must be a list of strings: write {setting.name} = [{json.dumps(value)}]"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f'must be a list of strings, such as ["</s>"]; got {value!r}'
        return None
    if kind in ("int", "float"):
        number = value if not isinstance(value, str) else _number(value)
        wanted = int if kind == "int" else int | float
        if isinstance(number, bool) or not isinstance(number, wanted):
            return f"must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}"
        if setting.minimum is not None and number < setting.minimum:
            return f"must be at least {setting.minimum:g}, got {value!r}"
    if kind == "duration" and not DURATION.match(str(value)):
        return f"must be a duration such as 5m, 30s or -1, or whole seconds; got {value!r}"
    if setting.choices and text not in setting.choices:
        return f"must be one of {', '.join(setting.choices)}; got {value!r}"
    return None


def _number(text: str) -> int | float | None:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None


def lint_config(config: ServerConfig) -> list[Problem]:
    """Every setting against the backend's real settings: one problem per line, each with
    the fix. With [server.start], [server] holds the started server's own settings."""
    problems = []
    for section in SECTIONS:
        if section == "server" and config.start is not None:
            problems += _lint_started(config.start, config.server)
            continue
        for key, value in config.section(section).items():
            problem = _lint_setting(config.backend, section, key, value)
            if problem is not None:
                problems.append(problem)
    if config.backend == "openai":
        problems += _lint_unapplied_load(config.load)
    if "type_k" in config.load and config.load.get("type_k") != config.load.get("type_v", "f16"):
        problems.append(
            Problem("load.type_k", "error", "lmgauge applies one KV cache type: set type_v too")
        )
    return problems


def _lint_unapplied_load(load: Mapping[str, Any]) -> list[Problem]:
    """The openai backend talks to a server that is already running: it cannot apply [load]
    settings, so a report would record settings the server never got. The context (per case)
    and the slots are checked against llama-server's /props instead."""
    problems = []
    for key in load:
        setting = REGISTRIES["openai"][0].get(key)
        if setting is None or setting.load_field == "context_tokens":
            continue  # unknown keys have their own problem; the context comes per case
        flag = LLAMA_SERVER_NAMES.get(key, key.replace("_", "-"))
        problems.append(
            Problem(
                f"load.{key}",
                "error",
                f"the openai backend cannot apply {key} to a running server, so the report "
                f"would record a setting the server never got: start the server with it "
                f"(llama-server's --{flag}; in [server] as {flag} = ... with [server.start], "
                "lmgauge starts it so), or remove it",
            )
        )
    return problems


def _lint_setting(backend: str, section: Section, key: str, value: Any) -> Problem | None:
    real, not_real = REGISTRIES[backend]
    where = f"{section}.{key}"
    setting = real.get(key)
    if setting is None:
        return Problem(where, "error", _unknown(backend, key, real, not_real))
    if setting.section != section and not _interchangeable(backend, setting, section):
        return Problem(
            where,
            "error",
            f"{key} is a {setting.section} setting of {backend}: move it under [{setting.section}]",
        )
    wrong = _check_value(setting, value)
    if wrong:
        return Problem(where, "error", f"{key} {wrong}")
    if setting.load_field == "context_tokens":
        return Problem(
            where, "warning", f"{key} is set per case from [gate].contexts; this value is ignored"
        )
    return None


# The keys [server.start] decides when lmgauge starts the server: set in [server] as well,
# they would contradict the port lmgauge polls.
OWNED_KEYS: dict[ServerKind, tuple[str, ...]] = {
    "ollama": ("OLLAMA_HOST",),
    "mlx_lm": ("host", "port", "model"),
    "llama-server": ("host", "port", "model"),
    "llama_cpp.server": ("host", "port", "model"),
    "lmstudio": ("port",),
}
# Flags of `python -m mlx_lm server` (mlx-lm 0.32, mlx_lm/server.py) and of
# `python -m llama_cpp.server` (llama-cpp-python 0.3, llama_cpp/server/settings.py: one flag
# per ModelSettings and ServerSettings field). llama-server has too many to list (llama.cpp
# common/arg.cpp); only their spelling is checked.
MLX_LM_FLAGS = frozenset(
    """model adapter-path host port allowed-origins draft-model num-draft-tokens
    trust-remote-code log-level chat-template use-default-chat-template temp top-p top-k
    min-p max-tokens chat-template-args decode-concurrency prompt-concurrency
    prefill-step-size prompt-cache-size prompt-cache-bytes kv-bits kv-group-size
    quantized-kv-start pipeline""".split()  # noqa: SIM905 (word lists read better)
)
LLAMA_CPP_SERVER_FLAGS = frozenset(
    """model model_alias n_gpu_layers split_mode main_gpu tensor_split vocab_only use_mmap
    use_mlock kv_overrides rpc_servers seed n_ctx n_batch n_ubatch n_threads n_threads_batch
    rope_scaling_type rope_freq_base rope_freq_scale yarn_ext_factor yarn_attn_factor
    yarn_beta_fast yarn_beta_slow yarn_orig_ctx mul_mat_q logits_all embedding offload_kqv
    flash_attn last_n_tokens_size lora_base lora_path numa chat_format chat_template_kwargs
    clip_model_path cache cache_type cache_size hf_tokenizer_config_path
    hf_pretrained_model_name_or_path hf_model_repo_id draft_model draft_model_num_pred_tokens
    type_k type_v verbose host port ssl_keyfile ssl_certfile api_key interrupt_requests
    disable_ping_events root_path config_file""".split()  # noqa: SIM905 (word lists read better)
)


# llama-cpp-python's names (the [load] keys of llamacpp configs) -> llama-server's flags
# where they differ by more than dashes (llama.cpp common/arg.cpp).
LLAMA_SERVER_NAMES = {
    "n_ctx": "ctx-size",
    "n_threads": "threads",
    "n_batch": "batch-size",
    "n_ubatch": "ubatch-size",
    "type_k": "cache-type-k",
    "type_v": "cache-type-v",
}


def _lint_started(start: ServerStart, server: Mapping[str, Any]) -> list[Problem]:
    """[server] as the settings of the server lmgauge starts: Ollama's environment, `lms
    server start`'s flags, or the command-line flags of the other kinds."""
    problems = []
    for key, value in server.items():
        where = f"server.{key}"
        if key in OWNED_KEYS[start.kind]:
            problems.append(
                Problem(
                    where,
                    "error",
                    f"lmgauge sets {key} from [server.start] (host, port, and the case's "
                    "model) when it starts the server: remove it here",
                )
            )
        elif key in start.env:
            problems.append(
                Problem(where, "error", f"{key} is set in [server.start].env too: keep one")
            )
        elif start.kind in ("ollama", "lmstudio"):
            problem = _lint_setting(start.kind, "server", key, value)
            problems += [problem] if problem is not None else []
        elif message := _flag_problem(start.kind, key, value):
            problems.append(Problem(where, "error", message))
    return problems


def _flag_problem(kind: ServerKind, key: str, value: Any) -> str | None:
    """Why ``key = value`` is not a flag of ``kind``'s command line, or None."""
    if key.startswith("-"):
        return f"write the flag without its dashes: {key.lstrip('-')}"
    if isinstance(value, list) and kind != "llama_cpp.server":
        return f"{kind} takes one value per flag, got the list {value!r}"
    known = {"mlx_lm": MLX_LM_FLAGS, "llama_cpp.server": LLAMA_CPP_SERVER_FLAGS}.get(kind)
    if known is None:  # llama-server: dashes, as llama.cpp's tools/server/README.md lists them
        if "_" in key:
            spelt = LLAMA_SERVER_NAMES.get(key, key.replace("_", "-"))
            return f"llama-server flags are spelt with dashes: did you mean {spelt}?"
        return None
    if key in known:
        setting = REGISTRIES["mlx"][0].get(key) if kind == "mlx_lm" else None
        wrong = None if setting is None else _check_value(setting, value)
        return None if wrong is None else f"{key} {wrong}"
    spelt = key.replace("_", "-") if kind == "mlx_lm" else key.replace("-", "_")
    close = [spelt] if spelt in known else difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key} is not a flag of {kind}{hint}"


def _interchangeable(backend: str, setting: Setting, section: Section) -> bool:
    # Ollama takes load and sampling options in one `options` object.
    return backend == "ollama" and {setting.section, section} == {"load", "options"}


DISPLAY = {
    "ollama": "an Ollama",
    "lmstudio": "an LM Studio",
    "mlx": "an mlx-lm",
    "llamacpp": "a llama.cpp",
    "openai": "a llama-server",
}


def _unknown(
    backend: str, key: str, real: Mapping[str, Setting], not_real: Mapping[str, Any]
) -> str:
    known = not_real.get(key)
    if known is not None:
        if known.removed_in:
            name = DISPLAY[backend].split(" ", 1)[1]
            return f"{key} was removed from {name} in {known.removed_in}; {known.fix}"
        return f"{key} is not {DISPLAY[backend]} setting; {known.fix}"
    close = difflib.get_close_matches(key, list(real), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key} is not {DISPLAY[backend]} setting{hint}"


def load_settings(config: ServerConfig, context_tokens: int) -> LoadSettings:
    """The config's load settings as lmgauge's LoadSettings for one case; settings with no
    LoadSettings field travel in ``extra`` under their own name."""
    real, _ = REGISTRIES[config.backend]
    mapped: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    names = {f.name for f in fields(LoadSettings)}
    for key, value in config.load.items():
        setting = real.get(key)
        if setting is None or setting.section != "load":
            continue
        target = setting.load_field
        if target == "context_tokens":
            continue  # the case's context wins
        if target in names:
            mapped[target] = _typed(setting, value)
        else:
            extra[key] = _typed(setting, value)
    settings = replace(LoadSettings(context_tokens=context_tokens), **mapped)
    return replace(settings, extra=extra) if extra else settings


def _typed(setting: Setting, value: Any) -> Any:
    if setting.kind == "bool01":
        return str(value).lower() in ("1", "true")
    if setting.kind in ("int", "float") and isinstance(value, str):
        return _number(value)
    return value


def request_options(config: ServerConfig) -> dict[str, Any]:
    real, _ = REGISTRIES[config.backend]
    return {
        key: _typed(real[key], value)
        for key, value in config.options.items()
        if key in real and real[key].section == "options"
    }
