"""lmgauge: benchmark and regression suite for local LLM serving.

The names below are the public API for users' own tests and scripts. They load on first
use (PEP 562), so importing ``lmgauge`` (as the pytest plugin does in every project of the
environment) costs nothing until one of them is asked for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("lmgauge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "Case": "lmgauge.runner",
    "CheckSession": "lmgauge.verdicts",
    "GenerateRequest": "lmgauge.backends.base",
    "LoadSettings": "lmgauge.backends.base",
    "PairedVerdict": "lmgauge.paired_stats",
    "Sample": "lmgauge.measure",
    "Workload": "lmgauge.runner",
    "describe_change": "lmgauge.metrics",
    "get_backend": "lmgauge.backends",
    "judge_paired": "lmgauge.paired_stats",
    "measure": "lmgauge.measure",
    "measure_one": "lmgauge.measure",
    "ratio_interval": "lmgauge.paired_stats",
    "summarize": "lmgauge.stats",
}
_RENAMED = {"get_backend": "get"}  # backends.get, under a name that says what it gets

__all__ = [
    "Case",
    "CheckSession",
    "GenerateRequest",
    "LoadSettings",
    "PairedVerdict",
    "Sample",
    "Workload",
    "__version__",
    "describe_change",
    "get_backend",
    "judge_paired",
    "measure",
    "measure_one",
    "ratio_interval",
    "summarize",
]

if TYPE_CHECKING:
    from lmgauge.backends import get as get_backend
    from lmgauge.backends.base import GenerateRequest, LoadSettings
    from lmgauge.measure import Sample, measure, measure_one
    from lmgauge.metrics import describe_change
    from lmgauge.paired_stats import PairedVerdict, judge_paired, ratio_interval
    from lmgauge.runner import Case, Workload
    from lmgauge.stats import summarize
    from lmgauge.verdicts import CheckSession


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmgauge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
