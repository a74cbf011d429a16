"""Backends by name, and ``auto``: the first server that answers on loopback, else the
embedded engine.

Each backend is one module, imported only when asked for, so a machine without MLX or
llama-cpp-python can still drive Ollama.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from lmgauge.backends.base import Backend
from lmgauge.errors import ConfigError

_CLASSES = {
    "llamacpp": ("lmgauge.backends.llamacpp", "LlamaCppBackend"),
    "openai": ("lmgauge.backends.openai", "OpenAIBackend"),
    "ollama": ("lmgauge.backends.ollama", "OllamaBackend"),
    "lmstudio": ("lmgauge.backends.lmstudio", "LMStudioBackend"),
    "mlx": ("lmgauge.backends.mlx", "MLXBackend"),
}
BACKEND_NAMES = ("auto", *_CLASSES)
DEFAULT_URLS = {
    "ollama": "http://127.0.0.1:11434",
    "lmstudio": "http://127.0.0.1:1234",
    "openai": "http://127.0.0.1:8080",
}
_PROBES = (("ollama", "/api/version"), ("lmstudio", "/v1/models"))


def get(name: str, *, base_url: str | None = None, **kwargs: Any) -> Backend:
    """The backend called ``name``; ``base_url`` for those that talk to a server."""
    if name == "auto":
        raise ConfigError("'auto' is resolved by detect(); call get() with the name it chose")
    try:
        module_name, class_name = _CLASSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}; use one of: {', '.join(BACKEND_NAMES)}"
        ) from None
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if name in DEFAULT_URLS:
        kwargs["base_url"] = base_url or DEFAULT_URLS[name]
    elif base_url is not None:
        raise ConfigError(f"the {name} backend runs in-process and takes no base URL")
    backend: Backend = backend_class(**kwargs)
    return backend


@dataclass(frozen=True)
class Detection:
    """What ``auto`` chose and why, with what each probe saw."""

    name: str
    base_url: str | None
    reason: str
    probes: dict[str, str] = field(default_factory=dict)


async def detect(*, urls: dict[str, str] | None = None, timeout_s: float = 0.5) -> Detection:
    """Probe Ollama (:11434) and LM Studio (:1234) on loopback; else the embedded engine."""
    import httpx  # here, not at import: the pytest plugin imports this module's names

    urls = {**DEFAULT_URLS, **(urls or {})}
    seen: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for name, path in _PROBES:
            url = urls[name]
            try:
                response = await client.get(url + path)
            except httpx.HTTPError as exc:
                seen[name] = f"{url}{path}: {type(exc).__name__}"
                continue
            seen[name] = f"{url}{path}: HTTP {response.status_code}"
            if response.status_code == 200:
                return Detection(name, url, f"{name} answered {url}{path}", seen)
    summary = "; ".join(seen.values())
    return Detection(
        "llamacpp",
        None,
        f"no server answered ({summary}): using the embedded "
        "llama.cpp engine with synthetic weights",
        seen,
    )
