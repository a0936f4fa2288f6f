"""Real server processes: ``python -m app.serve`` on a free loopback port.

Used by the tests that need what only a real process shows: signals, exit codes, sockets
cut mid-upload, chunked uploads through uvicorn's HTTP parser.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A started ``app.serve`` process and where it listens."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Waits until ``/readyz`` answers 200; fails with the process log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before ready:\n{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.log()}")

    def stop(self) -> int:
        """Stops the process (SIGTERM, then SIGKILL) and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def server_env(weights: Path, port: int, **settings: object) -> dict[str, str]:
    """The environment of a server process: the tiny weights, the port, extra ``PCB_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCB_")}
    env.update(
        {
            "PCB_WEIGHTS_PATH": str(weights),
            "PCB_PORT": str(port),
            "PCB_HOST": "127.0.0.1",
            "PCB_DEVICE": "cpu",
            # Two cores are shared with a training job: keep TF from oversubscribing them.
            "PCB_INTRA_OP_THREADS": "1",
            "PCB_INTER_OP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONUNBUFFERED": "1",
            # No golden-board model unless a test asks for one (the shipped one is large),
            # and golden boards beside the logs, not in the repository's ./data.
            "PCB_PAIR_WEIGHTS_PATH": "",
            "PCB_DATA_DIR": str(Path(tempfile.gettempdir()) / f"pcb-test-data-{port}"),
        }
    )
    env.update({f"PCB_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_server(
    weights: Path, log_dir: Path, env: Mapping[str, str] | None = None, **settings: object
) -> ServerProcess:
    """Starts ``python -m app.serve`` on a free port (not waiting for readiness)."""
    port = free_port()
    full_env = server_env(weights, port, **settings)
    full_env.update(env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.serve"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(proc, port, log_path)


@contextlib.contextmanager
def running_server(
    weights: Path, log_dir: Path, ready_timeout_s: float = 120.0, **settings: object
) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block; always stopped afterwards."""
    server = start_server(weights, log_dir, **settings)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
