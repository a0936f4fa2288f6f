"""Real server processes on a free loopback port: the one harness of the tests and benchmarks.

Used wherever only a real process shows what matters: signals and exit codes, sockets cut
mid-upload, load and memory over time, the benchmark's server and its naive baseline.

* :func:`start_server` starts ``python -m app.serve`` (or any ``argv``) and returns at once;
* :func:`running_server` is a context manager: ready on entry, always stopped on exit;
* :class:`ServerProcess` waits for readiness, reads the log and ``/metrics``, and stops.

The process gets this process's environment *without* any ``PCB_*`` variable, then the
settings it is given: a stray ``PCB_FAIL_RULE`` in a shell must not change what a test or
a benchmark measures. :data:`TEST_ENV` (the default ``base``) pins what the tests need on two
shared cores; a benchmark passes ``base={}`` to measure the machine as configured.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# The retry policy all harnesses share (see .ports); free_port is re-exported.
from .ports import PORT_TAKEN_RETRIES, free_port

__all__ = [
    "REPO_ROOT",
    "SERVE_ARGV",
    "TEST_ENV",
    "ServerProcess",
    "free_port",
    "running_server",
    "server_env",
    "start_server",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The service, as ``pcb-inspect serve`` runs it.
SERVE_ARGV: tuple[str, ...] = (sys.executable, "-m", "app.serve")
#: Model load takes 5-20 s here, several times that while a training job shares the cores.
READY_TIMEOUT_S = 180.0

#: What a test's server runs with unless the test says otherwise: the CPU, one TensorFlow
#: thread each (two cores are shared with other work: more would only oversubscribe them), and
#: no golden-board model (the shipped one is large and slow to load).
TEST_ENV: Mapping[str, str] = {
    "PCB_DEVICE": "cpu",
    "PCB_INTRA_OP_THREADS": "1",
    "PCB_INTER_OP_THREADS": "1",
    "PCB_PAIR_WEIGHTS_PATH": "",
    "CUDA_VISIBLE_DEVICES": "",
}


def _port_taken(log: str, port: int) -> bool:
    """Whether a server's log says it could not listen on ``port`` because it was in use:
    the service's own early check, or uvicorn's bind once the models are loaded."""
    return (f"cannot listen on 127.0.0.1:{port} " in log
            or (f"('127.0.0.1', {port})" in log and "address already in use" in log.lower()))


@dataclass
class ServerProcess:
    """A started server process and where it listens."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    #: Starts the same server on a fresh port (set by :func:`start_server`).
    relaunch: Callable[[], ServerProcess] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, path: str = "/readyz") -> None:
        """Waits until ``path`` answers 200.

        Raises:
            AssertionError: The process exited first, or ``timeout_s`` passed; with its log.
        """
        deadline = time.monotonic() + timeout_s
        retries = PORT_TAKEN_RETRIES
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                # The port is free when picked and bound only once the models are loaded: a
                # process that took it meanwhile (any outgoing connection may) is no failure
                # of the server. Anything else is.
                if retries and self.relaunch is not None and _port_taken(self.log(), self.port):
                    retries -= 1
                    again = self.relaunch()
                    self.proc, self.port, self.log_path = again.proc, again.port, again.log_path
                    continue
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before ready:\n{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.log()}")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of ``GET /metrics``; 0.0 when the sample is absent.

        Args:
            name: The sample as exposed, e.g. ``"pcb_images_total"``.
            labels: The exact label set as exposed, e.g. ``'verdict="fail"'``; "" for none.
        """
        response = httpx.get(self.url + "/metrics", timeout=10)
        # A server with keys answers 401 here: say so rather than read every sample as 0.
        response.raise_for_status()
        text = response.text
        selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
        match = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self, timeout_s: float = 30.0) -> int:
        """Stops the process (SIGTERM, then SIGKILL after ``timeout_s``); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def server_env(
    weights: Path | None,
    port: int,
    *,
    base: Mapping[str, str] = TEST_ENV,
    **settings: Any,
) -> dict[str, str]:
    """The environment of a server process.

    Args:
        weights: ``PCB_WEIGHTS_PATH`` (``None``: the service's default, the shipped model).
        port: ``PCB_PORT``; the host is always 127.0.0.1.
        base: Variables applied before ``settings`` (default :data:`TEST_ENV`).
        **settings: ``PCB_*`` settings by flat name, e.g. ``batching_max_size=4``. Without a
            ``data_dir``, golden boards go to a folder of this port under the temp dir, never
            to the repository's ``./data``.
    """
    settings.setdefault("data_dir", Path(tempfile.gettempdir()) / f"pcb-data-{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCB_")}
    env.update(
        {
            "PCB_HOST": "127.0.0.1",
            "PCB_PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            **base,
        }
    )
    if weights is not None:
        env["PCB_WEIGHTS_PATH"] = str(weights)
    env.update({f"PCB_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_server(
    weights: Path | None,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    argv: Sequence[str] = SERVE_ARGV,
    base: Mapping[str, str] = TEST_ENV,
    **settings: Any,
) -> ServerProcess:
    """Starts a server on a free port, not waiting for readiness.

    Args:
        weights: The ``.keras`` file (its card beside it); ``None``: the shipped model.
        log_dir: Where ``server-<port>.log`` and the golden-board folder go (default: a new
            temp folder); the log's text is in every failure message.
        env: Extra environment variables, applied last (they win).
        argv: The command; ``{port}`` in it becomes the port (default: the service).
        base: See :func:`server_env`.
        **settings: ``PCB_*`` settings by flat name (``batching_max_size=4``).
    """
    port = free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="pcb-server-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    settings.setdefault("data_dir", log_dir / f"data-{port}")
    full_env = server_env(weights, port, base=base, **settings)
    full_env.update(env or {})
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [a.format(port=port) for a in argv],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def relaunch() -> ServerProcess:
        return start_server(weights, log_dir, env, argv=argv, base=base, **settings)

    return ServerProcess(proc, port, log_path, relaunch)


@contextlib.contextmanager
def running_server(
    weights: Path | None,
    log_dir: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    *,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = SERVE_ARGV,
    base: Mapping[str, str] = TEST_ENV,
    ready_path: str = "/readyz",
    **settings: Any,
) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block; always stopped afterwards.

    Arguments as for :func:`start_server`; ``ready_path`` is what must answer 200.
    """
    server = start_server(weights, log_dir, env, argv=argv, base=base, **settings)
    try:
        server.wait_ready(ready_timeout_s, ready_path)
        yield server
    finally:
        server.stop()
