"""llama.cpp's own tools, as ``scripts/setup.sh`` builds them, and how lmgauge finds them.

Where a tool is missing the run tests skip and say why, unless LMGAUGE_REQUIRE_LLAMA_TOOLS
is set (``.ci/run`` sets it): then a set-up that did not build the tools fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmgauge.errors import BackendUnavailableError, LmgaugeError
from lmgauge.llama_tools import env_var, find_llama_tool


def tool_or_skip(name: str) -> Path:
    try:
        return find_llama_tool(name)
    except BackendUnavailableError as exc:
        if os.environ.get("LMGAUGE_REQUIRE_LLAMA_TOOLS"):
            raise
        pytest.skip(f"{exc} (set LMGAUGE_REQUIRE_LLAMA_TOOLS=1 to fail instead)")


def run(tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_llama_server_reports_its_version() -> None:
    done = run(tool_or_skip("llama-server"), "--version")
    assert done.returncode == 0, done.stderr
    assert "version:" in done.stdout + done.stderr


def test_llama_bench_prints_its_usage() -> None:
    done = run(tool_or_skip("llama-bench"), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout + done.stderr


def test_env_var_names() -> None:
    assert env_var("llama-server") == "LMGAUGE_LLAMA_SERVER"
    assert env_var("llama-bench") == "LMGAUGE_LLAMA_BENCH"


def fake_tool(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No tool beside the running Python, none on PATH, no override."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("LMGAUGE_LLAMA_SERVER", raising=False)
    return tmp_path


def test_missing_tool_names_the_set_up_script(nowhere: Path) -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        find_llama_tool("llama-server")
    message = str(caught.value)
    assert "scripts/setup.sh" in message
    assert "LMGAUGE_LLAMA_SERVER" in message
    assert isinstance(caught.value, LmgaugeError)


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script as the fake tool")
def test_lookup_order(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = fake_tool(nowhere / "empty", "llama-server")
    assert find_llama_tool("llama-server") == on_path
    beside_python = fake_tool(nowhere / "venv" / "bin", "llama-server")
    assert find_llama_tool("llama-server") == beside_python
    override = fake_tool(nowhere / "elsewhere", "llama-server")
    monkeypatch.setenv("LMGAUGE_LLAMA_SERVER", str(override))
    assert find_llama_tool("llama-server") == override


def test_override_that_is_not_a_file_is_an_error(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(nowhere / "venv" / "bin", "llama-server")  # not taken instead
    monkeypatch.setenv("LMGAUGE_LLAMA_SERVER", str(nowhere / "missing"))
    with pytest.raises(BackendUnavailableError, match=r"LMGAUGE_LLAMA_SERVER=.*missing"):
        find_llama_tool("llama-server")
