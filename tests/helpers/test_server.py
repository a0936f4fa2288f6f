"""The one server harness of the tests and benchmarks (``tests.helpers.server``).

Its mechanics are checked on a plain ``python -m http.server``, which starts in a second; the
service itself goes through it in every ``slow`` test.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest

import helpers.server
from helpers.server import TEST_ENV, running_server, server_env, start_server

HTTP_SERVER = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")


def test_a_shell_pcb_variable_never_reaches_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCB_FAIL_RULE", "area")
    monkeypatch.setenv("PCB_API_KEYS", "from-the-shell")
    env = server_env(Path("m.keras"), 8123, api_keys="k", batching_max_size=4)
    pcb = {k: v for k, v in env.items() if k.startswith("PCB_")}
    assert "PCB_FAIL_RULE" not in pcb
    assert pcb["PCB_API_KEYS"] == "k" and pcb["PCB_BATCHING_MAX_SIZE"] == "4"
    assert (pcb["PCB_HOST"], pcb["PCB_PORT"], pcb["PCB_WEIGHTS_PATH"]) == (
        "127.0.0.1", "8123", "m.keras")
    # Golden boards go to a folder of the port, never to the repository's ./data.
    assert pcb["PCB_DATA_DIR"].endswith("pcb-data-8123")


def test_tests_pin_the_cpu_and_benchmarks_do_not() -> None:
    pinned = server_env(None, 1)
    assert {k: pinned[k] for k in TEST_ENV} == dict(TEST_ENV)
    machine = server_env(None, 1, base={})
    assert not set(TEST_ENV) & {k for k in machine if k.startswith("PCB_")}
    assert "PCB_WEIGHTS_PATH" not in machine  # None: the service's default model


def test_running_server_is_ready_inside_and_stopped_after(tmp_path: Path) -> None:
    with running_server(None, tmp_path, 30, argv=HTTP_SERVER, ready_path="/") as server:
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
        assert server.pid == server.proc.pid
    assert server.proc.returncode is not None
    assert server.log_path.parent == tmp_path


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    argv = (sys.executable, "-c", "import sys; print('no weights here'); sys.exit(3)")
    server = start_server(None, tmp_path, argv=argv)
    with pytest.raises(AssertionError, match=r"(?s)exited with 3 before ready.*no weights here"):
        server.wait_ready(30)
    assert server.stop() == 3


def test_a_port_taken_before_the_server_binds_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port is free when picked, but the service binds it only once its models are loaded;
    # a process that takes it meanwhile must not fail the test. Real uvicorn, as the service
    # runs it, on a port that something listens on first.
    argv = (sys.executable, "-m", "uvicorn", "--factory", "fastapi:FastAPI",
            "--host", "127.0.0.1", "--port", "{port}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = iter([port])
        real_free_port = helpers.server.free_port
        monkeypatch.setattr(helpers.server, "free_port", lambda: next(ports, real_free_port()))
        with running_server(None, tmp_path, 60, argv=argv, ready_path="/docs") as server:
            assert server.port != port
            assert httpx.get(server.url + "/docs", timeout=5).status_code == 200
        assert "address already in use" in (tmp_path / f"server-{port}.log").read_text()
