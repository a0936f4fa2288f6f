"""Real server processes for the tests: the names of :mod:`pcb_inspect.testing.server`.

One harness serves the tests and the benchmarks; this module only keeps the import path the
test modules use (``tests.helpers.server`` / ``helpers.server``).
"""

from pcb_inspect.testing.server import (
    REPO_ROOT,
    TEST_ENV,
    ServerProcess,
    free_port,
    running_server,
    server_env,
    start_server,
)

__all__ = [
    "REPO_ROOT",
    "TEST_ENV",
    "ServerProcess",
    "free_port",
    "running_server",
    "server_env",
    "start_server",
]
