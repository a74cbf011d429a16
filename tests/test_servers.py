"""Servers lmgauge starts and stops itself ([server.start]; lmgauge.servers).

Each test says what runs: REAL servers where they run here (llama-cpp-python's
``python -m llama_cpp.server`` and ``python -m mlx_lm server``), FAKE executables under
tests/fakes/ for Ollama and LM Studio's ``lms`` (neither runs on this machine), and tiny
Python commands for misbehaving servers. Commands that are not on PATH here (``ollama``,
``lms``) are found through a PATH that puts tests/fakes first, so the default commands run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lmgauge.config import ServerStart, lint_config, load_config
from lmgauge.errors import ConfigError, ServerStartError
from lmgauge.servers import ManagedServer, build_command, stop_command

sys.path.insert(0, str(Path(__file__).parent))  # the tests' shared helper modules
from tiny_models import TINY_MLX_QWEN3

FAKES = Path(__file__).parent / "fakes"
README = Path(__file__).parent.parent / "configs" / "README.md"
GATE = """[gate]
backend = "{backend}"
models = ["qwen3-0.6b"]
quantizations = ["{quant}"]
contexts = [512]
"""


def _config(tmp_path: Path, body: str, backend: str = "openai", quant: str = "Q8_0") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(GATE.format(backend=backend, quant=quant) + textwrap.dedent(body))
    return path


def _fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ollama`` and ``lms`` on PATH: wrappers that run the fakes with this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ollama", "lms"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES / name}" "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- build_command: pure, no server runs -------------------------------------------------------


def test_ollama_settings_become_its_environment() -> None:
    spec = ServerStart(kind="ollama", env={"OLLAMA_MODELS": "/models"})
    settings = {
        "OLLAMA_KV_CACHE_TYPE": "q8_0",
        "OLLAMA_FLASH_ATTENTION": True,
        "OLLAMA_NUM_PARALLEL": 2,
    }
    argv, env = build_command(spec, settings=settings, port=4321)
    assert argv == ["ollama", "serve"]
    assert env == {
        "OLLAMA_MODELS": "/models",
        "OLLAMA_KV_CACHE_TYPE": "q8_0",
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_NUM_PARALLEL": "2",
        "OLLAMA_HOST": "127.0.0.1:4321",
    }
    assert spec.ready_path == "/api/version"
    everywhere = ServerStart(kind="ollama", host="0.0.0.0", port=4321)
    assert build_command(everywhere)[1]["OLLAMA_HOST"] == "0.0.0.0:4321"  # listens there
    assert ManagedServer(everywhere, log_dir=Path()).base_url == "http://127.0.0.1:4321"


def test_flag_styles_follow_each_server() -> None:
    settings: dict[str, Any] = {"prompt-cache-size": 0, "trust-remote-code": True}
    settings |= {"pipeline": False, "chat-template-args": {"enable_thinking": False}}
    argv, env = build_command(ServerStart(kind="mlx_lm"), "/m", settings=settings, port=1)
    assert argv == [
        *(sys.executable, "-m", "mlx_lm", "server"),
        *("--host", "127.0.0.1", "--port", "1", "--model", "/m"),
        *("--prompt-cache-size", "0", "--trust-remote-code"),  # store_true: false is omitted
        *("--chat-template-args", '{"enable_thinking": false}'),
    ]
    assert env == {}
    # llama-server: dashes; a false boolean is its --no- form (llama.cpp common/arg.cpp)
    settings = {"ctx-size": 4096, "cont-batching": False, "no-webui": True, "no-mmap": False}
    argv, _ = build_command(ServerStart(kind="llama-server"), "/m.gguf", settings=settings, port=2)
    assert Path(argv[0]).name == "llama-server"  # scripts/setup.sh's build, or the bare name
    assert argv[1:7] == ["--host", "127.0.0.1", "--port", "2", "--model", "/m.gguf"]
    assert argv[7:] == ["--ctx-size", "4096", "--no-cont-batching", "--no-webui"]
    # llama_cpp.server: underscores, booleans as values, lists as several values
    settings = {"n_ctx": 512, "flash_attn": False, "tensor_split": [0.5, 0.5]}
    argv, _ = build_command(
        ServerStart(kind="llama_cpp.server"), "/m.gguf", settings=settings, port=3
    )
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert argv[-7:] == ["--n_ctx", "512", "--flash_attn", "false", "--tensor_split", "0.5", "0.5"]


def test_mlx_lm_gets_no_prompt_cache_unless_asked_for() -> None:
    """No server runs. mlx_lm.server reads no per-request ``cache_prompt`` and reuses the
    longest prefix it has cached (10 prompts by default): a started one gets
    ``--prompt-cache-size 0`` unless [server] or the command sets the size."""
    argv, _ = build_command(ServerStart(kind="mlx_lm"), "/m", port=1)
    assert argv[-2:] == ["--prompt-cache-size", "0"]
    argv, _ = build_command(
        ServerStart(kind="mlx_lm"), "/m", settings={"prompt-cache-size": 4}, port=1
    )
    assert argv.count("--prompt-cache-size") == 1
    assert argv[-2:] == ["--prompt-cache-size", "4"]
    command = ("mlx_lm.server", "--port", "{port}", "--prompt-cache-size=2")
    argv, _ = build_command(ServerStart(kind="mlx_lm", command=command), port=1)
    assert argv == ["mlx_lm.server", "--port", "1", "--prompt-cache-size=2"]
    argv, _ = build_command(ServerStart(kind="llama-server"), "/m.gguf", port=1)
    assert "--prompt-cache-size" not in argv


def test_lmstudio_is_started_and_stopped_through_lms() -> None:
    spec = ServerStart(kind="lmstudio")
    argv, env = build_command(spec, settings={"cors": True}, port=1234)
    assert argv == ["lms", "server", "start", "--port", "1234", "--cors"]
    assert env == {}
    assert stop_command(spec) == ["lms", "server", "stop"]
    custom = ServerStart(
        kind="lmstudio", command=("/opt/lms", "server", "start", "--port", "{port}")
    )
    assert stop_command(custom) == ["/opt/lms", "server", "stop"]
    assert stop_command(ServerStart(kind="ollama")) is None


def test_a_custom_command_gets_placeholders_and_keeps_json_braces() -> None:
    command = ("srv", "--listen={host}:{port}", "-m", "{model}", '--args={"a": 1}')
    spec = ServerStart(kind="llama-server", command=command, host="127.0.0.2", port=9000)
    argv, _ = build_command(spec, Path("/x.gguf"), settings={"threads": 2})
    assert argv == [
        *("srv", "--listen=127.0.0.2:9000", "-m", "/x.gguf", '--args={"a": 1}'),
        *("--threads", "2"),  # [server] settings follow a custom command too
    ]
    with pytest.raises(ConfigError, match=r"\{model\} but no model"):
        build_command(spec)
    with pytest.raises(ConfigError, match=r"llama_cpp\.server needs a model"):
        build_command(ServerStart(kind="llama_cpp.server"), port=1)
    with pytest.raises(ConfigError, match=r"sets port, which lmgauge sets from \[server.start\]"):
        build_command(ServerStart(kind="mlx_lm"), settings={"port": 8080}, port=1)
    with pytest.raises(ValueError, match="needs a port"):
        build_command(ServerStart(kind="ollama"))


# --- [server.start] in a config, and its lint: no server runs -----------------------------


def test_server_start_parses_with_defaults_and_stays_out_of_settings(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """
        [server]
        OLLAMA_KV_CACHE_TYPE = "q8_0"

        [server.start]
        env = { OLLAMA_MODELS = "/models" }
        ready_timeout_s = 30
        log = "ollama.log"
        """,
        backend="ollama",
        quant="Q4_K_M",
    )
    config = load_config(path)
    assert dict(config.server) == {"OLLAMA_KV_CACHE_TYPE": "q8_0"}  # settings only
    assert config.start == ServerStart(
        kind="ollama",  # from [gate].backend
        env={"OLLAMA_MODELS": "/models"},
        ready_path="/api/version",
        ready_timeout_s=30.0,
        log=Path("ollama.log"),
    )
    assert lint_config(config) == []
    plain = load_config(_config(tmp_path, "[server]\nOLLAMA_DEBUG = 1\n", backend="ollama"))
    assert plain.start is None


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ('kind = "ollama"\nportt = 1', r"unknown key\(s\) portt \(known: command, kind,"),
        (
            'kind = "llama.cpp"',
            r"kind 'llama.cpp' is not one of .*did you mean 'llama-server' or 'llama_cpp.server'",
        ),
        ("port = 80", r"no kind: \[gate\].backend 'openai' can be served by several servers"),
        ('kind = "mlx_lm"\ncommand = "mlx_lm server"', r"command must be a non-empty list"),
        ('kind = "mlx_lm"\nport = "8080"', r"port must be an integer from 0"),
        ('kind = "mlx_lm"\nenv = { A = 1 }', r"env must be a table of strings"),
        (
            'kind = "mlx_lm"\nready_path = "health"',
            r'ready_path must be a URL path such as "/health"',
        ),
        ('kind = "mlx_lm"\nready_timeout_s = 0', r"ready_timeout_s must be a number of seconds"),
        (
            'kind = "mlx_lm"\nstop_grace_s = -1',
            r"stop_grace_s must be a number of seconds, at least 0",
        ),
    ],
)
def test_bad_server_start_tables_say_what_is_wrong(
    tmp_path: Path, start: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[server.start\]: .*" + message):
        load_config(_config(tmp_path, f"[server.start]\n{start}\n"))


def test_all_problems_of_a_start_table_come_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, '[server.start]\nkind = "vllm"\nport = -1\nhost = ""\n'))
    assert str(caught.value).count("; ") == 2  # kind, port and host
    with pytest.raises(ConfigError, match=r"\[server.start\] must be a table"):
        load_config(_config(tmp_path, '[server]\nstart = "ollama serve"\n'))


OWNED = "lmgauge sets {} from [server.start] (host, port, and the case's model)"


@pytest.mark.parametrize(
    ("backend", "start", "server", "expected"),
    [
        # mlx_lm.server flags, including ones lmgauge's in-process engine takes under [load]
        ("openai", 'kind = "mlx_lm"', "prompt-cache-size = 0\nkv-bits = 8", {}),
        (
            "openai",
            'kind = "mlx_lm"',
            "prompt_cache_size = 0\nkv-bits = 3\nport = 8080",
            {
                "prompt_cache_size": "is not a flag of mlx_lm; did you mean prompt-cache-size?",
                "kv-bits": "kv-bits must be one of 4, 8; got 3",
                "port": OWNED.format("port"),
            },
        ),
        (
            "openai",
            'kind = "llama_cpp.server"',
            "n_ctx = 512\nctx-size = 1\n--verbose = true",
            {
                "ctx-size": "ctx-size is not a flag of llama_cpp.server",
                "--verbose": "write the flag without its dashes: verbose",
            },
        ),
        (
            "openai",
            'kind = "llama-server"',
            "n_ctx = 512\nctx-size = 1\nlora = ['a', 'b']",
            {
                "n_ctx": "llama-server flags are spelt with dashes: did you mean ctx-size?",
                "lora": "llama-server takes one value per flag",
            },
        ),
        (
            "ollama",
            'env = { OLLAMA_DEBUG = "1" }',
            'OLLAMA_MMAP = "1"\nOLLAMA_HOST = "0.0.0.0"\nOLLAMA_DEBUG = "2"',
            {
                "OLLAMA_MMAP": "is not an Ollama setting; memory mapping is the `use_mmap`",
                "OLLAMA_HOST": OWNED.format("OLLAMA_HOST"),
                "OLLAMA_DEBUG": "OLLAMA_DEBUG is set in [server.start].env too: keep one",
            },
        ),
        ("lmstudio", "", "cors = true\nport = 1234", {"port": OWNED.format("port")}),
    ],
)
def test_lint_checks_server_settings_against_the_started_kind(
    tmp_path: Path, backend: str, start: str, server: str, expected: dict[str, str]
) -> None:
    path = _config(tmp_path, f"[server]\n{server}\n[server.start]\n{start}\n", backend)
    problems = lint_config(load_config(path))
    assert [p.location for p in problems] == [f"server.{key}" for key in expected]
    for problem, fragment in zip(problems, expected.values(), strict=True):
        assert problem.severity == "error"
        assert fragment in problem.message


def test_the_readme_examples_load_and_lint_clean(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    kinds = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        config = load_config(path)
        assert lint_config(config) == [], block
        if config.start is not None:
            kinds.append(config.start.kind)
    assert sorted(kinds) == sorted(
        ["ollama", "mlx_lm", "llama-server", "llama_cpp.server", "lmstudio"]
    )


# --- processes: fakes and misbehaving commands ----------------------------------------------


def test_fake_ollama_gets_the_server_settings_as_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAKE ``ollama`` (tests/fakes/ollama) run by the default command ``ollama serve``."""
    _fake_path(tmp_path, monkeypatch)
    path = _config(
        tmp_path,
        """
        [server]
        OLLAMA_KV_CACHE_TYPE = "q8_0"
        OLLAMA_FLASH_ATTENTION = "1"
        OLLAMA_NUM_PARALLEL = "2"

        [server.start]
        stop_grace_s = 5
        """,
        backend="ollama",
        quant="Q4_K_M",
    )
    config = load_config(path)
    server = ManagedServer.from_config(config, log_dir=tmp_path / "report")
    with server:
        url = server.base_url
        env = httpx.get(f"{url}/_fake/env", timeout=5).json()
        assert {k: env[k] for k in config.server} == dict(config.server)
        assert env["OLLAMA_HOST"] == url.removeprefix("http://")
        assert httpx.get(f"{url}/api/version", timeout=5).json()["version"] == "0.33.0"
        assert server.pid is not None
        assert server.pid in server.pids()
        first_pid = server.pid
        # Between arms: the same port, the other arm's settings.
        assert server.restart({"OLLAMA_KV_CACHE_TYPE": "f16"}) == url
        env = httpx.get(f"{url}/_fake/env", timeout=5).json()
        assert env["OLLAMA_KV_CACHE_TYPE"] == "f16"
        assert "OLLAMA_FLASH_ATTENTION" not in env
        assert _gone(first_pid)
    assert server.exit_code == 0  # it shut down on SIGTERM, as Ollama does
    assert server.stop() == 0  # idempotent
    assert not server.running
    log = server.log_path.read_text()
    assert server.log_path == tmp_path / "report" / "server-ollama.log"
    assert log.count("Listening on") == 2  # both starts, in one log
    assert "OLLAMA_KV_CACHE_TYPE=q8_0" in log  # the header names what lmgauge set


def test_fake_lms_starts_and_stops_lm_studio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAKE ``lms`` (tests/fakes/lms): ``lms server start --port P --cors`` returns once the
    (fake) LM Studio serves; ``lms server stop`` stops it."""
    _fake_path(tmp_path, monkeypatch)
    state = tmp_path / "lms-home"
    spec = ServerStart(kind="lmstudio", env={"FAKE_LMS_HOME": str(state)}, stop_grace_s=5)
    server = ManagedServer(spec, {"cors": True}, log_dir=tmp_path)
    url = server.start()
    try:
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
        argv = httpx.get(f"{url}/_fake/argv", timeout=5).json()
        assert argv[-3:] == ["--port", url.rsplit(":", 1)[1], "--cors"]
        daemon = json.loads((state / "server.json").read_text())["pid"]
        assert server.running
        assert daemon in server.pids()  # the process listening on the port, not `lms`
    finally:
        code = server.stop()
    assert code == 0
    assert _gone(daemon)
    assert not (state / "server.json").exists()
    assert "Stopped the server." in server.log_path.read_text()


def test_a_server_that_exits_at_once_gives_its_log_and_the_fix(tmp_path: Path) -> None:
    """FAKE server: a command that exits with 3 at once (a server that finds no model).
    Its API key and token reach it but neither the message nor the log."""
    script = "import sys; print('loading...'); print('boom: no model at /nowhere'); sys.exit(3)"
    spec = ServerStart(
        kind="llama-server", command=(sys.executable, "-c", script), env={"HF_TOKEN": "hf-s3"}
    )
    server = ManagedServer(spec, {"api-key": "sk-s3cret", "threads": 2}, log_dir=tmp_path)
    with pytest.raises(ServerStartError) as caught:
        server.start()
    message = str(caught.value)
    command = shlex.join([sys.executable, "-c", script, "--api-key", "***", "--threads", "2"])
    assert f"llama-server did not start: `{command}` exited with code 3 before http" in message
    assert "    boom: no model at /nowhere" in message  # the log's last lines
    assert "Fix: its log above says why" in message
    assert not server.running
    log = server.log_path.read_text()
    assert f"HF_TOKEN=*** {command}" in log
    assert "sk-s3cret" not in message + log
    assert "hf-s3" not in message + log


def test_a_server_that_never_gets_ready_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    """FAKE server: a command that never listens: ready_timeout_s (2 s) passes; it is killed."""
    script = "import time; print('loading weights', flush=True); time.sleep(600)"
    spec = ServerStart(
        kind="mlx_lm", command=(sys.executable, "-c", script), ready_timeout_s=2, stop_grace_s=2
    )
    server = ManagedServer(spec, log_dir=tmp_path, name="slow")
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"(?s)within 2 s, and was stopped.*loading weights"):
        server.start()
    assert time.monotonic() - started >= 2
    assert server.pid is None or _gone(server.pid)
    assert server.exit_code == -signal.SIGTERM
    assert server.log_path.name == "server-slow.log"


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    """FAKE server (tests/fakes/stubborn_server): it and its child both ignore SIGTERM."""
    spec = ServerStart(
        kind="llama-server",
        command=(sys.executable, str(FAKES / "stubborn_server"), "{port}"),
        stop_grace_s=1,
    )
    server = ManagedServer(spec, log_dir=tmp_path)
    server.start()
    pids = server.pids()
    assert len(pids) == 2  # the server and its child
    started = time.monotonic()
    assert server.stop() == -signal.SIGKILL
    assert time.monotonic() - started >= 1  # the grace was given
    assert all(_gone(pid) for pid in pids)
    assert "ignoring SIGTERM" in server.log_path.read_text()


def test_a_server_that_died_is_cleaned_up_and_started_again(tmp_path: Path) -> None:
    """FAKE server (tests/fakes/stubborn_server) killed from outside; its child (which
    ignores SIGTERM) is left behind until the next start() reaps it and kills what it left."""
    spec = ServerStart(
        kind="llama-server",
        command=(sys.executable, str(FAKES / "stubborn_server"), "{port}"),
        stop_grace_s=0.5,
    )
    with ManagedServer(spec, log_dir=tmp_path) as server:
        url, first = server.base_url, server.pids()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running
        assert server.start() == url
        assert all(_gone(pid) for pid in first)
        assert not set(first) & set(server.pids())
    assert server.log_path.read_text().count("ignoring SIGTERM") == 2


def test_a_missing_executable_and_a_taken_port_are_clear_errors(tmp_path: Path) -> None:
    """No server runs: the executable does not exist / the port is taken."""
    missing = ServerStart(kind="ollama", command=(str(tmp_path / "no-ollama"), "serve"))
    with pytest.raises(ServerStartError, match=r"cannot run .*no-ollama serve`: No such file"):
        ManagedServer(missing, log_dir=tmp_path).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = ServerStart(kind="ollama", port=port)
        with pytest.raises(
            ServerStartError, match=f"on http://127.0.0.1:{port}: something already"
        ):
            ManagedServer(spec, log_dir=tmp_path).start()


# --- REAL servers -----------------------------------------------------------------------------


def test_real_llama_cpp_server_starts_answers_and_stops(tmp_path: Path, tiny_gguf: Path) -> None:
    """REAL ``python -m llama_cpp.server`` on the tiny synthetic GGUF."""
    pytest.importorskip("uvicorn", reason="the server needs llama-cpp-python[server]")
    path = _config(
        tmp_path,
        """
        [server]
        n_ctx = 512
        n_threads = 2
        verbose = false

        [server.start]
        kind = "llama_cpp.server"
        ready_timeout_s = 120
        """,
    )
    config = load_config(path)
    assert lint_config(config) == []
    with ManagedServer.from_config(config, log_dir=tmp_path / "report", model=tiny_gguf) as server:
        models = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == str(tiny_gguf)
        pid = server.pid
        assert pid is not None
        cmdline = psutil.Process(pid).cmdline()
        assert cmdline[cmdline.index("--n_ctx") :][:2] == ["--n_ctx", "512"]
        assert cmdline[cmdline.index("--verbose") :][:2] == ["--verbose", "false"]
    assert _gone(pid)
    assert server.exit_code is not None
    assert server.log_path.stat().st_size > 0
    assert "--- lmgauge: stopped, exit code" in server.log_path.read_text()


def test_real_mlx_lm_server_runs_with_the_config_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REAL ``python -m mlx_lm server`` on a tiny synthetic MLX model."""
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed: pip install -e '.[mlx]'")
    from lmgauge.synthetic_mlx import synthetic_mlx_model

    model = synthetic_mlx_model(TINY_MLX_QWEN3, "bf16")
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)  # as errors, mlx_lm's start-up hangs
    # Without an existing HF_HUB_CACHE /v1/models answers an empty body: poll /health.
    (tmp_path / "hub").mkdir()
    path = _config(
        tmp_path,
        f"""
        [server]
        prompt-cache-size = 0
        max-tokens = 64

        [server.start]
        kind = "mlx_lm"
        env = {{ HF_HUB_CACHE = "{tmp_path / "hub"}", HF_HUB_OFFLINE = "1" }}
        """,
        quant="4bit",
    )
    config = load_config(path)
    assert config.start is not None
    assert config.start.ready_path == "/health"
    assert lint_config(config) == []
    with ManagedServer.from_config(config, log_dir=tmp_path, model=model) as server:
        assert server.pid is not None
        cmdline = psutil.Process(server.pid).cmdline()
        assert cmdline[cmdline.index("--prompt-cache-size") :][:2] == ["--prompt-cache-size", "0"]
        assert cmdline[cmdline.index("--model") :][:2] == ["--model", str(model)]
        body = {"model": str(model), "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        answer = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200
        assert answer.json()["usage"]["completion_tokens"] >= 1
        pid = server.pid
    assert _gone(pid)
    assert "--- lmgauge: stopped" in server.log_path.read_text()
