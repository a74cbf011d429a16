"""Where llama.cpp's own command-line tools are: ``llama-server``, ``llama-bench``,
``llama-quantize``.

``scripts/setup.sh --with-llama-tools`` builds them from the llama.cpp tree vendored in the
llama-cpp-python sdist (the same sources as the embedded engine) and links them into the virtual
environment's ``bin`` folder. A tool is looked up, in this order:

1. an environment variable naming its path: ``LMGAUGE_`` + the tool's name in capitals
   with ``_`` for ``-`` (``LMGAUGE_LLAMA_SERVER``, ``LMGAUGE_LLAMA_BENCH``,
   ``LMGAUGE_LLAMA_QUANTIZE``);
2. the folder of the running Python (``sys.executable``: the venv's ``bin``), not resolved
   through links, so that a venv's own tools win over others;
3. ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from lmgauge.errors import BackendUnavailableError

__all__ = ["LLAMA_TOOLS", "env_var", "find_llama_tool"]

LLAMA_TOOLS = ("llama-server", "llama-bench", "llama-quantize")
"""The tools ``scripts/setup.sh`` provides."""


def env_var(name: str) -> str:
    """The environment variable that overrides where tool ``name`` is:
    ``llama-server`` -> ``LMGAUGE_LLAMA_SERVER``."""
    return "LMGAUGE_" + name.upper().replace("-", "_")


def find_llama_tool(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The path of llama.cpp tool ``name`` (``"llama-server"``, ``"llama-bench"``, ...).

    Raises ``BackendUnavailableError`` when the environment variable names a file that is
    not an executable, or when the tool is neither beside ``sys.executable`` nor on PATH.
    """
    env = os.environ if environ is None else environ
    variable = env_var(name)
    override = env.get(variable)
    if override:
        path = Path(override).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BackendUnavailableError(
            f"{variable}={override} is not an executable file: point it at a {name} binary,"
            f" or unset it to use the one scripts/setup.sh builds"
        )
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name, path=str(venv_bin)) or shutil.which(
        name, path=env.get("PATH", os.defpath)
    )
    if found is None:
        raise BackendUnavailableError(
            f"{name} not found (not in {venv_bin}, not on PATH): run scripts/setup.sh "
            f"--with-llama-tools, which builds llama.cpp's tools into .venv/bin, or set "
            f"{variable} to its path"
        )
    return Path(found)
