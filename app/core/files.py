"""Durable file writes: the one way the service replaces a file on disk."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomic(
    path: Path, chunks: Iterable[bytes], *, prefix: str = ".tmp-", suffix: str = ".partial",
    mode: int = 0o644,
) -> None:
    """Writes ``chunks`` to ``path`` so that a crash leaves the old file or the new one, never a
    torn one: a temporary file in the same folder (so the rename is atomic, never a copy across
    devices), flushed and fsynced, renamed over ``path``, and the folder fsynced (without that a
    power cut can undo the rename). Temporary files are named ``prefix...suffix``, so a sweep
    can find what a killed writer left.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        # mkstemp creates 0600; other replicas may run as another user of the group.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Makes a rename or unlink in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
