"""``pcb-inspect db upgrade|current``: the records database's migrations from the command line.

``pcb_inspect.cli`` hands it the arguments after ``db``. The URL is ``--url``, else
``PCB_DATABASE_URL``, else SQLite ``records.db`` in ``PCB_DATA_DIR`` (default ``data``), the
same database the service opens.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from app.records.db import default_url, display_url, sqlite_path
from app.records.migrate import current_revision, head_revision, upgrade

__all__ = ["main_db", "resolve_url"]


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``PCB_DATABASE_URL``, else the SQLite file in ``PCB_DATA_DIR``."""
    return url or os.environ.get("PCB_DATABASE_URL") or default_url(
        Path(os.environ.get("PCB_DATA_DIR", "data")))


def main_db(argv: Sequence[str] | None = None) -> int:
    """Runs ``db upgrade`` or ``db current``; returns the exit status.

    ``current`` exits 0 when the database is at the code's revision and 1 when it is not
    (behind, empty or ahead), so a deployment can gate on it; 2 when it cannot connect.
    """
    parser = argparse.ArgumentParser(prog="pcb-inspect db",
                                     description="The inspection-records database.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (("upgrade", "migrate the database to this version's schema"),
                            ("current", "show the database's schema revision")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", help="database URL (default: PCB_DATABASE_URL, else "
                                     "sqlite:///$PCB_DATA_DIR/records.db)")
    args = parser.parse_args(argv)
    url = resolve_url(args.url)
    shown = display_url(url)
    head = head_revision()
    try:
        if args.action == "upgrade":
            before = _revision(url)
            after = upgrade(url)
            if before == after:
                print(f"{shown}: already at revision {after}")
            else:
                print(f"{shown}: upgraded from {before or 'empty'} to revision {after}")
            return 0
        found = _revision(url)
    except SQLAlchemyError as exc:
        print(f"pcb-inspect db {args.action}: cannot use {shown}: {exc}", file=sys.stderr)
        return 2
    if found == head:
        print(f"{shown}: revision {found} (up to date)")
        return 0
    state = "empty: no schema" if found is None else f"revision {found}"
    print(f"{shown}: {state}; this version expects revision {head}: run "
          f"`pcb-inspect db upgrade --url {shown}`")
    return 1


def _revision(url: str) -> str | None:
    # Asking must not create the database: a missing SQLite file is simply empty.
    path = sqlite_path(url)
    return None if path is not None and not path.exists() else current_revision(url)
