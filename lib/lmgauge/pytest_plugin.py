"""The pytest plugin: options, the case matrix, verdicts and thresholds as test outcomes.

Registered as the ``lmgauge`` pytest11 entry point. Tests ask for a ``case`` (one
backend x model x quantization x context) and call ``lmgauge.check(case, metric)``,
which measures the case once per session, compares the metric with the baseline of
this hardware profile, applies the planning documents' thresholds, records a row of
the verdict table printed at the end, and fails the test on a regression or a breach.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmgauge.backends import BACKEND_NAMES
from lmgauge.config import ServerConfig, lint_config, load_config
from lmgauge.errors import ConfigError
from lmgauge.report import check_writable
from lmgauge.report_markdown import write_step_summary
from lmgauge.runner import Case, Runner, Workload, build_cases
from lmgauge.verdicts import CheckSession

SESSION = pytest.StashKey[CheckSession]()


def _csv(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmgauge", "lmgauge: local LLM serving benchmarks")
    group.addoption(
        "--lmgauge-backend",
        choices=BACKEND_NAMES,
        default="auto",
        help="backend to measure (default: auto, the first server that answers on "
        "loopback, else the embedded llama.cpp engine)",
    )
    group.addoption("--lmgauge-url", default=None, help="base URL of the server")
    group.addoption("--lmgauge-models", default=None, help="comma-separated model labels")
    group.addoption("--lmgauge-quants", default=None, help="comma-separated quantizations")
    group.addoption("--lmgauge-contexts", default=None, help="comma-separated context sizes")
    group.addoption("--lmgauge-samples", type=int, default=5, help="samples per case")
    group.addoption(
        "--lmgauge-max-samples",
        type=int,
        default=15,
        help="cap of extra sampling when a verdict is inconclusive",
    )
    group.addoption(
        "--lmgauge-max-extra-s",
        type=float,
        default=45.0,
        help="time budget per case for that extra sampling (default 45 s)",
    )
    group.addoption("--lmgauge-prompt-tokens", type=int, default=128)
    group.addoption("--lmgauge-max-tokens", type=int, default=32, help="tokens to generate")
    group.addoption("--lmgauge-threads", type=int, default=None, help="engine threads")
    group.addoption(
        "--lmgauge-profile",
        default=None,
        help="hardware profile (default: this host's, e.g. linux-x86_64-2c-24gb)",
    )
    group.addoption("--lmgauge-baselines", default="baselines", help="baseline directory")
    group.addoption(
        "--lmgauge-report-dir",
        default="reports",
        help="where the run report goes (default: reports); written as cases are measured",
    )
    group.addoption(
        "--lmgauge-tolerance",
        type=float,
        default=0.05,
        help="smallest change that counts as a regression (default 0.05 = 5%%)",
    )
    group.addoption(
        "--lmgauge-scenarios",
        action="store_true",
        help="also run seed 003's scenario workloads on heavy embedded cases (minutes each "
        "on a 2-core machine; they run by default elsewhere)",
    )
    group.addoption(
        "--config",
        "--lmgauge-config",
        dest="lmgauge_config",
        default=None,
        help="a server config under test (configs/*.toml): linted, applied, and its [gate] "
        "slice benchmarked against the baseline of the base config",
    )
    group.addoption(
        "--lmgauge-allow-unlike",
        action="store_true",
        help="compare with a baseline recorded in an unlike environment (another model "
        "digest, quantization or host) instead of refusing; the report records it",
    )
    group.addoption(
        "--update-baselines",
        action="store_true",
        help="write this run's measurements as the baseline (keeps the old file)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "heavy: a case whose model has more than 1B parameters "
        "on the embedded engine (minutes on a 2-core machine)",
    )
    if config.getoption("--help", default=False):
        return
    server_config = _server_config(config)
    backend = config.getoption("--lmgauge-backend")
    if server_config is not None and backend == "auto":
        backend = server_config.backend
    config.stash[SESSION] = CheckSession(
        requested_backend=backend,
        base_url=config.getoption("--lmgauge-url"),
        workload=Workload(
            prompt_tokens=config.getoption("--lmgauge-prompt-tokens"),
            max_tokens=config.getoption("--lmgauge-max-tokens"),
            samples=config.getoption("--lmgauge-samples"),
            max_samples=config.getoption("--lmgauge-max-samples"),
            max_extra_sampling_s=config.getoption("--lmgauge-max-extra-s"),
            threads=config.getoption("--lmgauge-threads"),
        ),
        profile_override=config.getoption("--lmgauge-profile"),
        baselines=Path(config.getoption("--lmgauge-baselines")),
        tolerance=config.getoption("--lmgauge-tolerance"),
        update_baselines=config.getoption("--update-baselines"),
        runner_factory=Runner,
        heavy_scenarios=config.getoption("--lmgauge-scenarios"),
        allow_unlike=config.getoption("--lmgauge-allow-unlike"),
        report_dir=Path(config.getoption("--lmgauge-report-dir")),
        run_settings={"pytest_args": list(config.invocation_params.args)},
        server_config=server_config,
    )


def _server_config(config: pytest.Config) -> ServerConfig | None:
    """The --config file, linted: an error stops the run before anything is measured."""
    path = config.getoption("lmgauge_config")
    if path is None:
        return None
    try:
        server_config = load_config(Path(path))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from exc
    problems = lint_config(server_config)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        lines = "\n".join(f"  {path}: {p}" for p in errors)
        raise pytest.UsageError(
            f"{path} has {len(errors)} setting(s) its server does not have:\n{lines}\n"
            f"(lmgauge lint-config {path} lists them all)"
        )
    return server_config


def _cases(config: pytest.Config) -> list[Case]:
    """The matrix: the options where given, else the config's [gate] slice, else the
    backend's default."""
    session = config.stash[SESSION]
    gate = session.server_config
    contexts = _csv(config.getoption("--lmgauge-contexts"))
    return build_cases(
        session.backend_name,
        _csv(config.getoption("--lmgauge-models")) or (gate.models if gate else None),
        _csv(config.getoption("--lmgauge-quants")) or (gate.quantizations if gate else None),
        [int(c) for c in contexts] if contexts else (gate.contexts if gate else None),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    params = [
        pytest.param(case, id=case.id, marks=[pytest.mark.heavy] if case.heavy else [])
        for case in _cases(metafunc.config)
    ]
    metafunc.parametrize("case", params)


def _case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("case") if callspec is not None else None
    return case if isinstance(case, Case) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run all tests of one case together: switching models costs a reload each time."""
    order: dict[str, int] = {}
    for item in items:
        case = _case_of(item)
        if case is not None:
            order.setdefault(case.id, len(order))
    session = config.stash.get(SESSION, None)
    if order and session is not None and session.report_dir is not None:
        try:  # before any benchmark starts, not after the first one
            check_writable(session.report_dir)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from exc

    def position(item: pytest.Item) -> int:
        case = _case_of(item)
        return -1 if case is None else order[case.id]

    items.sort(key=position)


@pytest.fixture(scope="session")
def server_config(request: pytest.FixtureRequest) -> ServerConfig:
    """The config under test (--config); tests that need one are skipped without it."""
    config = request.config.stash[SESSION].server_config
    if config is None:
        pytest.skip("no server config under test (--config configs/X.toml)")
    return config


@pytest.fixture(scope="session")
def lmgauge(request: pytest.FixtureRequest) -> CheckSession:
    """The session: ``lmgauge.check(case, metric)`` measures, compares and judges."""
    return request.config.stash[SESSION]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    session = terminalreporter.config.stash.get(SESSION, None)
    if session is None or not (session.rows or session.report):
        return
    terminalreporter.section("lmgauge verdicts")
    for line in session.table_lines():
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    check_session = session.config.stash.get(SESSION, None)
    if check_session is None:
        return
    check_session.write_baselines()
    report = check_session.report
    if report is not None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        report.finish(
            "interrupted" if interrupted else "complete",
            failed_tests=session.testsfailed,
            exit_code=int(exitstatus),
        )
        write_step_summary(report.data)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[object], output_json: dict[str, object]
) -> None:
    """Users of pytest-benchmark's --benchmark-json get the LLM figures in the same file."""
    session = config.stash.get(SESSION, None)
    if session is not None and session.report is not None:
        output_json["lmgauge"] = session.report.data


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.finish()
