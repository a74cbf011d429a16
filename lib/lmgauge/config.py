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

[load]                          # applied when a model loads
num_batch = 512

[options]                       # sent with every request
temperature = 0.0
```
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lmgauge.backends.base import LoadSettings
from lmgauge.catalog import GB, resolve_model, resolve_quant
from lmgauge.errors import ConfigError, LmgaugeError
from lmgauge.settings_registry import REGISTRIES, Section, Setting

SECTIONS: tuple[Section, ...] = ("server", "load", "options")
GATE_KEYS = {"backend", "models", "quantizations", "contexts", "memory_budget_gb"}
DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^-?\d+$")


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
    return ServerConfig(
        path=path,
        backend=backend,
        models=models,
        quantizations=quantizations,
        contexts=contexts,
        memory_budget_bytes=None if budget is None else round(budget * GB),
        digest=hashlib.sha256(raw).hexdigest(),
        **sections,
    )


def _check_value(setting: Setting, value: Any) -> str | None:
    """Why ``value`` is wrong for ``setting``, or None."""
    kind = setting.kind
    text = str(value).lower() if not isinstance(value, bool) else str(int(value))
    if kind == "bool" and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind == "bool01" and text not in ("0", "1", "true", "false"):
        return f"must be 0 or 1 (or true/false), got {value!r}"
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
    the fix."""
    real, not_real = REGISTRIES[config.backend]
    problems = []
    for section in SECTIONS:
        for key, value in config.section(section).items():
            where = f"{section}.{key}"
            setting = real.get(key)
            if setting is None:
                problems.append(
                    Problem(where, "error", _unknown(config.backend, key, real, not_real))
                )
                continue
            if setting.section != section and not _interchangeable(
                config.backend, setting, section
            ):
                problems.append(
                    Problem(
                        where,
                        "error",
                        f"{key} is a {setting.section} setting of {config.backend}: move it "
                        f"under [{setting.section}]",
                    )
                )
                continue
            wrong = _check_value(setting, value)
            if wrong:
                problems.append(Problem(where, "error", f"{key} {wrong}"))
            elif setting.load_field == "context_tokens":
                problems.append(
                    Problem(
                        where,
                        "warning",
                        f"{key} is set per case from [gate].contexts; this value is ignored",
                    )
                )
    if "type_k" in config.load and config.load.get("type_k") != config.load.get("type_v", "f16"):
        problems.append(
            Problem("load.type_k", "error", "lmgauge applies one KV cache type: set type_v too")
        )
    return problems


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
