"""lmgauge: benchmark and regression suite for local LLM serving."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lmgauge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
