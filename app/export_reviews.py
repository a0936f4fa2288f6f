"""``pcb-inspect export-reviews``: its command line, over :mod:`app.services.review_export`.

Reads the reviewed boards from the records database (``--database-url``, ``--data-dir``) or
from a running service (``--url``), and writes them as a DeepPCB-format folder for
``pcb-inspect train --data``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import httpx
from sqlalchemy.exc import SQLAlchemyError

from app.records import (
    ImageStore,
    RecordsError,
    RecordStore,
    check_schema,
    default_url,
    display_url,
)
from app.records.db import sqlite_path
from app.services.golden_store import GoldenStore
from app.services.review_export import (
    ApiSource,
    ExportSummary,
    RemoteServiceError,
    export_reviews,
    write_export,
)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``export-reviews`` arguments."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect export-reviews")
    p.description = ("Write the reviewed boards whose images were kept as a DeepPCB-format "
                     "folder for `pcb-inspect train --data`: read from the records database "
                     "(--database-url, --data-dir), or from a running service (--url, with an "
                     "admin key).")
    p.add_argument("--out", required=True, type=Path, help="the folder to write")
    p.add_argument("--url", help="a running service to export from over its API, e.g. "
                                 "http://127.0.0.1:8000 (needs an admin key: --api-key)")
    p.add_argument("--api-key", default=os.environ.get("PCB_API_KEY"),
                   help="with --url: an admin key (default: $PCB_API_KEY)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="with --url: seconds per request (default: %(default)s)")
    p.add_argument("--database-url",
                   help="the records database (default: PCB_DATABASE_URL, else "
                        "sqlite:///$PCB_DATA_DIR/records.db)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with the database: the service's data folder, holding images/ and "
                        "golden/ (default: PCB_DATA_DIR, else ./data)")
    return p


_PROG = "pcb-inspect export-reviews"
_HTTP = ("http://", "https://")


def _fail(message: str) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Runs the export; 0 when done, 2 (with one line on stderr) when the source cannot be
    used."""
    if args.url and args.database_url:
        return _fail("give --url (a running service) or --database-url (a records database), "
                     "not both")
    if args.url:
        if not args.url.startswith(_HTTP):
            return _fail(f"--url is a service's address (http://HOST:PORT); received "
                         f"{_shown(args.url)!r}: for a records database use --database-url")
        return _run_over_api(args)
    if args.database_url and args.database_url.startswith(_HTTP):
        return _fail(f"--database-url is a records database (sqlite:///..., "
                     f"postgresql+psycopg://...); received {args.database_url!r}: for a "
                     "running service use --url")
    return _run_on_database(args)


def _shown(url: str) -> str:
    """``url`` as it may be printed: its password hidden, even where it does not parse."""
    try:
        return display_url(url)
    except (ValueError, SQLAlchemyError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _run_over_api(args: argparse.Namespace) -> int:
    try:
        if not httpx.URL(args.url).host:
            raise httpx.InvalidURL("no host")
    except httpx.InvalidURL as exc:
        return _fail(f"--url {args.url!r} is not a service's address ({exc}); expected "
                     "http://HOST:PORT")
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as http:
            summary = write_export(ApiSource(http, args.api_key), args.out)
    except RemoteServiceError as exc:
        return _fail(f"{args.url}: {exc}")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return _fail(f"{args.url}: {exc}")
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
    _report(summary, args.out)
    return 0


def _run_on_database(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(os.environ.get("PCB_DATA_DIR", "data"))
    url = args.database_url or os.environ.get("PCB_DATABASE_URL") or default_url(data_dir)
    try:
        path = sqlite_path(url)
    except (ValueError, SQLAlchemyError):
        path = None
    if path is not None and not path.exists():
        return _fail(f"no records database at {path} (--database-url, PCB_DATABASE_URL, "
                     "--data-dir)")
    try:
        store = RecordStore(url)
    except (ValueError, ImportError, SQLAlchemyError) as exc:
        detail = str(exc) if "expected" in str(exc) else (
            f"{exc}; expected e.g. sqlite:///data/records.db or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB")
        return _fail(f"invalid --database-url {_shown(url)!r}: {detail}")
    try:
        check_schema(store.engine)
        summary = export_reviews(store, ImageStore(data_dir / "images"),
                                 GoldenStore(data_dir / "golden", 0), args.out)
    except (SQLAlchemyError, RecordsError) as exc:
        return _fail(f"cannot read {_shown(url)}: {' '.join(str(exc).split())[:300]}")
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
    finally:
        store.close()
    _report(summary, args.out)
    return 0


def _report(summary: ExportSummary, out: Path) -> None:
    print(f"wrote {summary.boards} reviewed boards ({summary.boxes} boxes, "
          f"{summary.templates} golden boards) to {out}; list {summary.list_file}"
          + (f"; {summary.skipped} left out (image gone)" if summary.skipped else ""))
