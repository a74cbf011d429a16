"""The GitHub workflows, checked mechanically: against GitHub's workflow schema (the copy
vendored in check-jsonschema, so no network), then for what the gate must do."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).parents[1] / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def run_lines(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflows_match_githubs_schema() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker, "check-jsonschema is a dev dependency: run scripts/setup.sh"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_config_gate_runs_on_apple_silicon_on_a_config_change() -> None:
    gate = load("config-gate.yml")
    triggers = gate[True]  # YAML 1.1 reads the key `on` as True
    assert "configs/**.toml" in triggers["pull_request"]["paths"]
    assert "!configs/seeds/**" in triggers["pull_request"]["paths"]  # fictional on purpose
    job = gate["jobs"]["gate"]
    assert job["runs-on"] == ["self-hosted", "macOS", "ARM64"]
    commands = run_lines(job)
    assert "scripts/setup.sh" in commands
    assert "lmgauge lint-config" in commands
    assert '--lmgauge-config "$config"' in commands
    assert '--lmgauge-against "$base"' in commands  # paired: the base commit's file is arm A
    assert 'git show "$BASE_SHA:$config"' in commands
    assert 'exit "$status"' in commands  # a failed benchmark fails the job
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["if"].startswith("always()")  # reports of a failing run are kept too
    assert upload["with"]["path"] == "reports/"  # reports and the managed servers' logs


def test_the_linux_job_runs_the_readme_tests_and_a_smoke_benchmark() -> None:
    job = load("tests.yml")["jobs"]["tests"]
    assert job["runs-on"] == "ubuntu-latest"
    commands = run_lines(job)
    assert ".ci/run" in commands
    assert 'pytest benchmarks/test_serving.py -k "qwen3-0.6b"' in commands
    readme = (WORKFLOWS.parents[1] / "README.md").read_text()
    ci = (WORKFLOWS.parents[1] / ".ci" / "run").read_text()
    assert '.venv/bin/pytest -m "not heavy"' in readme
    assert '.venv/bin/pytest -m "not heavy"' in ci


@pytest.mark.parametrize("name", ["config-gate.yml", "tests.yml"])
def test_jobs_have_a_timeout_and_read_only_permissions(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job in workflow["jobs"].values():
        assert job["timeout-minutes"] <= 180
