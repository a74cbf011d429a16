"""Reading a running server's environment: a real child process stands in for
``ollama serve`` (Ollama cannot run here); it listens on a port with a known environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lmgauge.server_env import environment_mismatches, find_server_process

LISTENER = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
time.sleep(60)
"""


@pytest.fixture
def listener() -> Iterator[tuple[int, int]]:
    env = {**os.environ, "OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KV_CACHE_TYPE": "q8_0"}
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        port = int(process.stdout.readline())
        yield process.pid, port
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_the_process_listening_on_the_port_is_found_with_its_environment(
    listener: tuple[int, int],
) -> None:
    pid, port = listener
    found = find_server_process(f"http://127.0.0.1:{port}")
    assert found.pid == pid
    assert found.how == f"listening on port {port}"
    assert found.environment["OLLAMA_KV_CACHE_TYPE"] == "q8_0"


def test_no_server_process_is_a_lookup_error_saying_what_was_tried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LookupError, match=f"no process listens on port {port}"):
        find_server_process(f"http://127.0.0.1:{port}", names=("no-such-server",))


def test_mismatches_name_the_setting_and_both_values() -> None:
    running = {"OLLAMA_FLASH_ATTENTION": "true", "OLLAMA_KV_CACHE_TYPE": "q8_0"}
    defaults = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KV_CACHE_TYPE": "f16"}
    wanted = {
        "OLLAMA_FLASH_ATTENTION": "1",  # true and 1 are the same to Ollama
        "OLLAMA_KV_CACHE_TYPE": "q4_0",
        "OLLAMA_NUM_PARALLEL": "1",  # unset: the default, which matches
        "OLLAMA_CONTEXT_LENGTH": "8192",
    }
    assert environment_mismatches(wanted, running, defaults) == [
        "OLLAMA_CONTEXT_LENGTH: the config says '8192', the running server has unset "
        "(default None)",
        "OLLAMA_KV_CACHE_TYPE: the config says 'q4_0', the running server has 'q8_0'",
    ]
