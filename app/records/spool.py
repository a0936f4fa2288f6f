"""The spool files of :class:`app.records.recorder.Recorder`: records the database could not
take, one JSON line each, appended, flushed and fsynced.

The spool lives in ``<data_dir>/spool/``, one file per host (``records.<host>.jsonl``), since
the data directory may be shared by replicas. Appends and the replay's hand-over take an
exclusive ``flock`` on the file, so another replica replaying a dead replica's spool never
truncates a line that is being written.

Replay hands the spool over before touching the database: under the lock it copies the lines
to ``<name>.<id>.replaying`` (fsynced, then renamed into place), truncates the spool and lets
go, so ``record()`` never waits for a slow replay. The ``.replaying`` file is deleted once all
of its records are in; a crash in between leaves it to the next replay (its records may then
be inserted twice, which stores them once). At every moment each acknowledged record is in the
database or in a fsynced file.

The functions here do the file handling only; the recorder holds the in-process locks and
talks to the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field, ValidationError

from app.core.files import fsync_dir
from app.records.ids import new_id
from app.records.schemas import InspectionRecord

__all__ = [
    "REJECTED_SUFFIX",
    "REPLAYING_SUFFIX",
    "SPOOL_SUFFIX",
    "append",
    "count_records",
    "finish",
    "hand_over",
    "iter_spool_records",
    "read_records",
    "spool_files",
    "spool_name",
]

logger = logging.getLogger("pcb_inspect.records")

SPOOL_SUFFIX = ".jsonl"
REPLAYING_SUFFIX = ".replaying"
REJECTED_SUFFIX = ".rejected"


def spool_name(host: str | None = None) -> str:
    """The spool file name of this host: ``records.<host>.jsonl``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname()) or "host"
    return f"records.{host}{SPOOL_SUFFIX}"


def append(path: Path, lines: list[bytes]) -> None:
    """Appends ``lines`` (each without its newline) to spool ``path``, fsynced, under the
    file's ``flock``; creates the file (and fsyncs its folder) if it is missing.
    """
    if any(b"\n" in line for line in lines):
        raise ValueError("a spooled record must be one line")
    data = b"".join(line + b"\n" for line in lines)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # A process killed mid-append leaves a line without its newline: end it, or the first
        # record here would be glued to it and both lost.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the flock
    if created:
        fsync_dir(path.parent)


def spool_files(folder: Path) -> list[Path]:
    """The spool and replay files in ``folder`` (every host's)."""
    return sorted([*folder.glob("*" + SPOOL_SUFFIX), *folder.glob("*" + REPLAYING_SUFFIX)])


def count_records(paths: Iterable[Path]) -> int:
    """The records (non-blank lines) in ``paths``; files gone meanwhile count none."""
    n = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            n += sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
    return n


def hand_over(path: Path) -> None:
    """Moves the content of spool ``path`` to a new ``.replaying`` file, atomically."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size == 0:
            return
        data = os.pread(fd, size, 0)
        target = path.with_name(f"{path.stem}.{new_id('')}{REPLAYING_SUFFIX}")
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(path.parent)
        # Only now, with the copy durable, may the spool be emptied.
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


class _SpooledRecord(InspectionRecord):
    """A record as a spool line holds it."""

    # A line spooled by a version before the one product-id rule may name a product it took
    # then (up to 128 characters, the column's width): it was accepted, so it is replayed as
    # written, as the database keeps the records stored before.
    product: str | None = Field(None, max_length=128)


def read_records(path: Path) -> tuple[list[InspectionRecord], list[bytes]] | None:
    """The records of replay file ``path`` and the lines that are not records (logged);
    ``None`` if the file is gone (another replica finished it).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    # A last line without its newline was being written when the writer died: its record()
    # never returned, so no caller was told it was recorded.
    torn = lines.pop() if lines else b""
    if torn.strip():
        logger.warning("spool %s ends in a partial line (%d bytes, a writer killed "
                       "mid-append): skipped", path, len(torn))
    records: list[InspectionRecord] = []
    bad: list[bytes] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(_SpooledRecord.model_validate_json(line))
        except ValidationError as exc:
            logger.error("spool %s: a line is not a record (%s): moved to %s", path,
                         exc.errors()[0]["msg"], REJECTED_SUFFIX)
            bad.append(line)
    return records, bad


def finish(path: Path, rejected: list[bytes]) -> None:
    """Ends the replay of ``path``: appends the ``rejected`` lines to this host's
    ``.rejected`` file (fsynced), then deletes ``path``.
    """
    folder = path.parent
    if rejected:
        with open(folder / (spool_name() + REJECTED_SUFFIX), "ab") as out:
            out.write(b"".join(b + b"\n" for b in rejected))
            out.flush()
            os.fsync(out.fileno())
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fsync_dir(folder)


def iter_spool_records(path: Path) -> Iterator[InspectionRecord]:
    """The complete records in a spool or replay file (for tests and inspection by hand)."""
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            with contextlib.suppress(ValidationError):
                yield _SpooledRecord.model_validate_json(line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
