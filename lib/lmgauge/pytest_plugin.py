"""The pytest plugin: options, the case matrix, verdicts and thresholds as test outcomes.

Registered as the ``lmgauge`` pytest11 entry point, so it loads in every pytest run of
every project installed beside lmgauge. It therefore acts only on lmgauge's own tests:
a test that asks for the ``lmgauge_case`` fixture is parametrized by the case matrix, and
only then is the matrix built (and, with ``auto``, a server probed). A project with no
such test gets the ``--lmgauge-*`` options and nothing else: no collection work, no
network, and no heavy import (the session and its statistics load on first use).

Tests call ``lmgauge.check(lmgauge_case, metric)``, which measures the case once per
session, compares the metric with the baseline of this hardware profile, applies the
planning documents' thresholds, records a row of the verdict table printed at the end,
and fails the test on a regression or a breach.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lmgauge.backends import BACKEND_NAMES

if TYPE_CHECKING:
    from lmgauge.config import ServerConfig
    from lmgauge.runner import Case
    from lmgauge.verdicts import CheckSession

CASE_FIXTURE = "lmgauge_case"
SESSION = pytest.StashKey["CheckSession"]()
SERVER_CONFIG = pytest.StashKey["ServerConfig | None"]()
AGAINST = pytest.StashKey["ServerConfig"]()
STORED = pytest.StashKey[str]()  # what became of the run in the results store


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
        default=None,
        help="smallest change that counts as a regression (default: 0.05 = 5%% against a "
        "stored baseline, 0.02 in a paired run, whose interval carries the noise)",
    )
    group.addoption(
        "--lmgauge-scenarios",
        action="store_true",
        help="also run seed 003's scenario workloads on heavy embedded cases (minutes each "
        "on a 2-core machine; they run by default elsewhere)",
    )
    group.addoption(
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
        "--lmgauge-update-baselines",
        action="store_true",
        help="write this run's measurements as the baseline (keeps the old file)",
    )
    group.addoption(
        "--lmgauge-against",
        default=None,
        help="the paired gate: measure --lmgauge-config (arm B) against this base config "
        "(arm A) in one session, in randomized interleaved rounds, and judge the ratio B/A",
    )
    group.addoption(
        "--lmgauge-round-samples",
        type=int,
        default=3,
        help="paired gate: samples per arm per round (default 3; the round's median)",
    )
    group.addoption(
        "--lmgauge-rounds",
        default="12:4:24",
        help="paired gate: MIN:STEP:MAX rounds; a verdict is looked at after MIN rounds and "
        "every STEP more, up to MAX (default 12:4:24)",
    )
    group.addoption(
        "--lmgauge-paired-budget-s",
        type=float,
        default=900.0,
        help="paired gate: no new round starts after this many seconds per case (900)",
    )
    group.addoption(
        "--lmgauge-disturbance-limit",
        type=float,
        default=0.25,
        help="share of the CPU other processes may take during a measurement before it is "
        "discarded and re-run (default 0.25; 1 turns the guard off)",
    )
    group.addoption(
        "--lmgauge-cooldown-s",
        type=float,
        default=0.0,
        help="paired gate: pause between rounds, e.g. 30 on a laptop that throttles",
    )
    group.addoption(
        "--lmgauge-seed",
        type=int,
        default=None,
        help="paired gate: seed of the arms' random order (default: drawn, and reported)",
    )
    group.addoption(
        "--lmgauge-store",
        default=None,
        metavar="URL",
        help="at the end of the run, store its report in this results store: a SQLite file "
        "path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB ('default': "
        "~/.cache/lmgauge/results.sqlite); a failure there keeps the report and says so",
    )
    group.addoption(
        "--lmgauge-catalog",
        default=None,
        help="a TOML file of catalog overrides: backend model names per label, e.g. "
        '[models.qwen3-7b] ollama = "my-qwen:7b-{quant}"',
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "heavy: a case whose model has more than 1B parameters "
        "on the embedded engine (minutes on a 2-core machine)",
    )
    if config.getoption("--help", default=False):
        return
    # Files named on the command line are checked now, so a typo stops the run before
    # anything is collected; everything else waits until a test asks for a case.
    catalog = config.getoption("lmgauge_catalog", default=None)
    if catalog is not None:
        from lmgauge.catalog import use_overrides
        from lmgauge.errors import ConfigError

        try:
            use_overrides(Path(catalog))
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from exc
    store = config.getoption("lmgauge_store", None)
    if store is not None:  # a URL of no known kind stops the run before it starts
        from lmgauge.errors import ConfigError
        from lmgauge.store_schema import normalize_url

        try:
            normalize_url(store)
        except ConfigError as exc:
            raise pytest.UsageError(f"--lmgauge-store: {exc}") from exc
    config.stash[SERVER_CONFIG] = _server_config(config.getoption("lmgauge_config", None))
    against = config.getoption("lmgauge_against", None)
    if against is not None:
        base = _server_config(against)
        candidate = config.stash[SERVER_CONFIG]
        if candidate is None or base is None:
            raise pytest.UsageError(
                "--lmgauge-against BASE.toml needs the candidate as --lmgauge-config X.toml"
            )
        if config.getoption("lmgauge_update_baselines", False):
            raise pytest.UsageError(
                "a paired run (--lmgauge-against) writes no baseline: drop "
                "--lmgauge-update-baselines, or run the config alone to record one"
            )
        from lmgauge.errors import ConfigError
        from lmgauge.paired_gate import check_pairable

        try:
            check_pairable(base, candidate)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from exc
        config.stash[AGAINST] = base


def lmgauge_session(config: pytest.Config) -> CheckSession:
    """The session of this pytest run, made on first use: importing the statistics,
    fingerprinting the host and detecting the backend cost nothing until then."""
    session = config.stash.get(SESSION, None)
    if session is not None:
        return session
    from lmgauge.runner import Runner, Workload
    from lmgauge.verdicts import CheckSession

    server_config = config.stash.get(SERVER_CONFIG, None)
    backend = config.getoption("--lmgauge-backend")
    if server_config is not None and backend == "auto":
        backend = server_config.backend
    settings: dict[str, Any] = {"progress": _progress_writer(config)}
    session_class: type[CheckSession] = CheckSession
    tolerance = config.getoption("--lmgauge-tolerance")
    against = config.stash.get(AGAINST, None)
    if against is not None:
        from lmgauge.paired_gate import PAIRED_TOLERANCE, PairedSession

        session_class = PairedSession
        settings |= {"against": against, "plan": _paired_plan(config)}
        tolerance = PAIRED_TOLERANCE if tolerance is None else tolerance
    session = session_class(
        requested_backend=backend,
        base_url=config.getoption("--lmgauge-url"),
        workload=Workload(
            prompt_tokens=config.getoption("--lmgauge-prompt-tokens"),
            max_tokens=config.getoption("--lmgauge-max-tokens"),
            samples=config.getoption("--lmgauge-samples"),
            max_samples=config.getoption("--lmgauge-max-samples"),
            max_extra_sampling_s=config.getoption("--lmgauge-max-extra-s"),
            threads=config.getoption("--lmgauge-threads"),
            disturbance_limit=config.getoption("--lmgauge-disturbance-limit"),
        ),
        profile_override=config.getoption("--lmgauge-profile"),
        baselines=Path(config.getoption("--lmgauge-baselines")),
        tolerance=0.05 if tolerance is None else tolerance,
        update_baselines=config.getoption("--lmgauge-update-baselines"),
        runner_factory=Runner,
        heavy_scenarios=config.getoption("--lmgauge-scenarios"),
        allow_unlike=config.getoption("--lmgauge-allow-unlike"),
        report_dir=Path(config.getoption("--lmgauge-report-dir")),
        run_settings={"pytest_args": list(config.invocation_params.args)},
        server_config=server_config,
        **settings,
    )
    config.stash[SESSION] = session
    return session


def _paired_plan(config: pytest.Config) -> Any:
    from lmgauge.paired import ROUND_METRICS, PairedPlan
    from lmgauge.paired_stats import SequentialPlan

    text = config.getoption("--lmgauge-rounds")
    try:
        low, step, high = (int(part) for part in text.split(":"))
        return PairedPlan(
            samples_per_arm=config.getoption("--lmgauge-round-samples"),
            sequential=SequentialPlan(
                min_rounds=low, step_rounds=step, max_rounds=high, metrics=len(ROUND_METRICS)
            ),
            budget_s=config.getoption("--lmgauge-paired-budget-s"),
            disturbance_limit=config.getoption("--lmgauge-disturbance-limit"),
            cooldown_s=config.getoption("--lmgauge-cooldown-s"),
            seed=config.getoption("--lmgauge-seed"),
        )
    except ValueError as exc:
        raise pytest.UsageError(
            f"--lmgauge-rounds {text!r} / paired options: {exc} (e.g. --lmgauge-rounds 12:4:24)"
        ) from exc


def _progress_writer(config: pytest.Config) -> Any:
    """Progress lines on the terminal while a test runs (a synthetic model being written, a
    case measured, a paired case's rounds: minutes where the terminal would be silent)."""

    def write(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"lmgauge: {message}")
        else:
            reporter.write_line(f"lmgauge: {message}")

    return write


def _server_config(path: str | None) -> ServerConfig | None:
    """A config file named on the command line, linted: an error stops the run before
    anything is measured."""
    if path is None:
        return None
    from lmgauge.config import lint_config, load_config
    from lmgauge.errors import ConfigError

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
    from lmgauge.runner import build_cases

    session = lmgauge_session(config)
    gate = session.server_config
    contexts = _csv(config.getoption("--lmgauge-contexts"))
    return build_cases(
        session.backend_name,
        _csv(config.getoption("--lmgauge-models")) or (gate.models if gate else None),
        _csv(config.getoption("--lmgauge-quants")) or (gate.quantizations if gate else None),
        [int(c) for c in contexts] if contexts else (gate.contexts if gate else None),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_FIXTURE not in metafunc.fixturenames:
        return  # not an lmgauge test: leave it alone
    params = [
        pytest.param(case, id=case.id, marks=[pytest.mark.heavy] if case.heavy else [])
        for case in _cases(metafunc.config)
    ]
    metafunc.parametrize(CASE_FIXTURE, params)


def _case_id_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    case: Any = callspec.params.get(CASE_FIXTURE) if callspec is not None else None
    return None if case is None else str(case.id)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run all tests of one case together: switching models costs a reload each time."""
    order: dict[str, int] = {}
    for item in items:
        case_id = _case_id_of(item)
        if case_id is not None:
            order.setdefault(case_id, len(order))
    if not order:
        return  # no lmgauge test collected: the user's order stands
    session = lmgauge_session(config)
    if session.report_dir is not None:
        from lmgauge.errors import ConfigError
        from lmgauge.report import check_writable

        try:  # before any benchmark starts, not after the first one
            check_writable(session.report_dir)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from exc

    def position(item: pytest.Item) -> int:
        case_id = _case_id_of(item)
        return -1 if case_id is None else order[case_id]

    items.sort(key=position)


@pytest.fixture(scope="session")
def lmgauge_server_config(request: pytest.FixtureRequest) -> ServerConfig:
    """The config under test (--lmgauge-config); tests that need one skip without it."""
    config = request.config.stash.get(SERVER_CONFIG, None)
    if config is None:
        pytest.skip("no server config under test (--lmgauge-config configs/X.toml)")
    return config


@pytest.fixture(scope="session")
def lmgauge(request: pytest.FixtureRequest) -> CheckSession:
    """The session: ``lmgauge.check(lmgauge_case, metric)`` measures, compares, judges."""
    return lmgauge_session(request.config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    session = terminalreporter.config.stash.get(SESSION, None)
    if session is None or not (session.rows or session.report):
        return
    terminalreporter.section("lmgauge verdicts")
    for line in session.table_lines():
        terminalreporter.write_line(line)
    stored = terminalreporter.config.stash.get(STORED, None)
    if stored is not None:
        terminalreporter.write_line(stored)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    check_session = session.config.stash.get(SESSION, None)
    if check_session is None:
        return
    check_session.write_baselines()
    report = check_session.report
    if report is not None:
        from lmgauge.report_markdown import write_step_summary

        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        report.finish(
            "interrupted" if interrupted else "complete",
            failed_tests=session.testsfailed,
            exit_code=int(exitstatus),
        )
        write_step_summary(report.data)
        store = session.config.getoption("lmgauge_store", None)
        if store is not None:
            _store_report(session.config, store, report.path)


def _store_report(config: pytest.Config, url: str, path: Path) -> None:
    """The finished run's report into the results store; a failure is said (after the
    verdicts), not raised: the report is on disk and can be stored later."""
    try:
        from lmgauge.store import Store

        with Store.open(url) as store:
            result = store.ingest(path)
        line = f"{'stored' if result.stored else 'already in'} {store} (run {result.run_id})"
    except Exception as exc:  # whatever the store does, the run and its report stand
        line = (
            f"could not store the run: {exc}; the report is kept: store it later with "
            f"lmgauge store ingest {path} --store {url}"
        )
    if config.pluginmanager.get_plugin("terminalreporter") is not None:
        config.stash[STORED] = f"lmgauge: {line}"
    else:
        print(f"lmgauge: {line}", file=sys.stderr)


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
