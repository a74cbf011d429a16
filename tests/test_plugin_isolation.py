"""The plugin inside somebody else's test suite: pytest in a subprocess (pytester), with
lmgauge installed and its pytest11 entry point loading as it does for every project in
the same environment. The suite has its own ``case`` parameter and ``server_config``
fixture, its conftest forbids every network connection, and it checks that nothing heavy
was imported on its behalf."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

NO_NETWORK = """
import socket

import pytest


def _refuse(self, address, *args, **kwargs):
    if self.family == socket.AF_UNIX:
        return _connect(self, address, *args, **kwargs)
    raise AssertionError(f"a network connection was attempted: {address!r}")


_connect = socket.socket.connect
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse


@pytest.fixture
def server_config():
    return {"theirs": True}
"""

THEIR_SUITE = """
import sys

import pytest


@pytest.mark.parametrize("case", ["upper", "lower"])
def test_their_own_case_parameter(case):
    assert case in ("upper", "lower")


def test_their_own_server_config(server_config):
    assert server_config == {"theirs": True}


def test_lmgauge_is_loaded_but_idle(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("lmgauge")
    heavy = [m for m in ("scipy", "numpy", "httpx", "lmgauge.verdicts", "lmgauge.runner")
             if m in sys.modules]
    assert heavy == [], f"imported on behalf of the lmgauge plugin: {heavy}"
"""


@pytest.fixture
def their_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(NO_NETWORK)
    pytester.makepyfile(test_theirs=THEIR_SUITE)
    return pytester


def test_an_unrelated_suite_passes_untouched_with_no_network(
    their_project: pytest.Pytester,
) -> None:
    result = their_project.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_their_own_case_parameter?upper? PASSED*",
            "*test_their_own_case_parameter?lower? PASSED*",
        ]
    )
    result.stdout.no_fnmatch_line("*lmgauge verdicts*")


def test_the_plugin_options_all_carry_the_lmgauge_prefix(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    group = result.stdout.str().split("lmgauge: local LLM serving benchmarks:", 1)[1]
    group = group.split("\n\n", 1)[0]
    options = [line.split()[0] for line in group.splitlines() if line.strip().startswith("--")]
    assert options, "the lmgauge option group is missing from pytest --help"
    assert all(option.startswith("--lmgauge-") for option in options), options


def test_a_catalog_overrides_file_names_the_backend_models(pytester: pytest.Pytester) -> None:
    overrides = pytester.makefile(
        ".toml", overrides='[models.qwen3-7b]\nollama = "my-qwen:7b-{quant}"\n'
    )
    pytester.makepyfile(
        test_names="""
from lmgauge.catalog import resolve_model


def test_the_override_is_in_force():
    assert resolve_model("qwen3-7b").tag("ollama", "Q4_K_M") == "my-qwen:7b-q4_K_M"
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--lmgauge-catalog", str(overrides)
    )
    result.assert_outcomes(passed=1)


def test_a_broken_catalog_file_is_a_usage_error_naming_it(pytester: pytest.Pytester) -> None:
    broken = pytester.makefile(".toml", broken="[models.qwen3-9b]\nollama = 'x'\n")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--lmgauge-catalog", str(broken))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model 'qwen3-9b'*"])
