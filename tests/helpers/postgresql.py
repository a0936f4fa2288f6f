"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, run with
pytest-postgresql's ``PostgreSQLExecutor`` (``pg_ctl``) on a free loopback port.

``pg_ctl`` refuses to run as root (CI containers run as root). pytest-postgresql has no option
for that (dbfixtures/pytest-postgresql#341, #455), and its own ``postgresql_proc`` puts the
data directory under pytest's temporary folder, which is private to root. So as root the
server's folder is one owned by ``postgres`` and ``pg_ctl`` runs through a two-line wrapper
that switches to that user with ``runuser``.

A server whose port was taken before it bound it is started again on another port (the
policy of :mod:`.ports`); any other failure fails with the server's log.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .ports import free_port, start_retrying

#: Overrides the search for pg_ctl (a path).
PG_CTL_ENV = "PCB_TEST_PG_CTL"
INSTALL_HINT = "install it with: apt-get install -y postgresql"


def find_pg_ctl() -> str | None:
    """pg_ctl from $PCB_TEST_PG_CTL, PATH, or the newest /usr/lib/postgresql/<ver>/bin."""
    if os.environ.get(PG_CTL_ENV):
        return os.environ[PG_CTL_ENV]
    found = shutil.which("pg_ctl")
    if found:
        return found
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in m.group(1).split(".")) if m else (0,)

    return max(candidates, key=version) if candidates else None


def pg_ctl_or_skip(tmp_base: Path) -> tuple[Path, Path]:
    """The folder a server's files go in (``tmp_base``; as root, a new one owned by
    ``postgres``) and the pg_ctl to run. Skips the test, with the reason, where PostgreSQL
    or pytest-postgresql is missing."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        pytest.skip(f"PostgreSQL server not installed (no pg_ctl on PATH or in "
                    f"/usr/lib/postgresql/*/bin); {INSTALL_HINT}")
    pytest.importorskip("pytest_postgresql", reason="pytest-postgresql is in the test extra")
    if os.geteuid() != 0:
        return tmp_base, Path(pg_ctl)
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(f"running as root and there is no 'postgres' user to run {pg_ctl} as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and runuser (util-linux) is missing")
    base = Path(tempfile.mkdtemp(prefix="pcb-records-pg-"))
    os.chown(base, owner.pw_uid, owner.pw_gid)
    executable = base / "pg_ctl-as-postgres"
    # cd /: postgres may not read the current folder, and pg_ctl looks at it.
    executable.write_text(f'#!/bin/sh\ncd /\nexec {runuser} -u postgres -- "{pg_ctl}" "$@"\n')
    executable.chmod(0o755)
    return base, executable


def port_taken(log: str, port: int) -> bool:
    """Whether a PostgreSQL log says it could not listen on ``port`` because it was in use."""
    return ("Address already in use" in log
            and f"another postmaster already running on port {port}?" in log)


def start_postgresql(
    executable: Path,
    base: Path,
    *,
    pick_port: Callable[[], int] = free_port,
    postgres_options: str = "",
) -> Any:
    """A started ``PostgreSQLExecutor`` with its data and log in ``base`` (``data-<port>``,
    ``pg-<port>.log``); database ``pcb_records``, superuser ``postgres`` without password.

    Raises:
        RuntimeError: It did not start (after the retries, when its port was taken); with
            the server's log.
    """
    from mirakuru.exceptions import AlreadyRunning
    from pytest_postgresql.executors import PostgreSQLExecutor

    def attempt() -> Any:
        port = pick_port()
        logfile = base / f"pg-{port}.log"
        executor = PostgreSQLExecutor(
            executable=str(executable), host="127.0.0.1", port=port,
            datadir=str(base / f"data-{port}"), unixsocketdir=str(base), logfile=str(logfile),
            startparams="-w", dbname="pcb_records", user="postgres",
            postgres_options=postgres_options,
        )
        try:
            executor.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                executor.stop()
            log = logfile.read_text(errors="replace") if logfile.exists() else "(no log)"
            shutil.rmtree(executor.datadir, ignore_errors=True)
            error = _StartFailed(f"PostgreSQL did not start on 127.0.0.1:{port} "
                                 f"({type(exc).__name__}); its log:\n{log}")
            # mirakuru refuses to start a server whose port already accepts connections;
            # with a data directory of its own, that is another process on the port.
            error.port_taken = isinstance(exc, AlreadyRunning) or port_taken(log, port)
            raise error from exc
        return executor

    return start_retrying(attempt, lambda exc: getattr(exc, "port_taken", False))


class _StartFailed(RuntimeError):
    port_taken = False
