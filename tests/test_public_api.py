"""The public API in ``lmgauge/__init__.py``: complete, sorted, and loaded only on use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lmgauge


def test_every_exported_name_resolves_and_the_list_is_sorted() -> None:
    assert lmgauge.__all__ == sorted(lmgauge.__all__)
    assert set(lmgauge.__all__) == {*lmgauge._EXPORTS, "__version__"}
    for name in lmgauge.__all__:
        assert getattr(lmgauge, name) is not None, name


def test_importing_lmgauge_loads_nothing_heavy() -> None:
    code = (
        "import sys, lmgauge\n"
        "heavy = [m for m in ('numpy', 'scipy', 'httpx', 'lmgauge.runner') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        lmgauge.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
