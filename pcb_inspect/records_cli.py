"""``pcb-inspect inspections``, ``review`` and ``stats``: the service's inspection records
from the command line.

``inspections list`` pages through the records (newest first, with the API's filters),
``inspections get`` shows one with its reviews, ``inspections export`` streams them as CSV or
JSON lines to a file. ``review`` records an operator's calls on one board; ``stats`` prints the
dashboard's figures. Reading and reviewing need a key of role ``review``, exporting ``admin``.

Exit codes: 0 done, 2 error (one line on stderr naming the value, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pcb_inspect.client import (
    EXPORT_FORMATS,
    MAX_PAGE_LIMIT,
    MAX_TAGS,
    STATS_BUCKETS,
    InspectClient,
)
from pcb_inspect.client_cli import (
    EXIT_PASS,
    _fields_table,
    _finish,
    _positive_int,
    _printed_as_json,
    _read_json,
    _run_action,
    _table,
)

__all__ = [
    "build_inspections_parser",
    "build_review_parser",
    "build_stats_parser",
    "run_inspections",
    "run_review",
    "run_stats",
]

_Action = Callable[[InspectClient, argparse.Namespace, Console], int]


def _time_arg(text: str) -> str:
    # Checked here so a typo fails before a request; the service takes the same text.
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with a zone (e.g. 2026-12-01T06:00:00Z), got {text!r}"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected a time with a zone (…Z or …+01:00), got {text!r}")
    return text


def _add_filter_args(parser: argparse.ArgumentParser) -> None:
    """The records' filters, as ``GET /v1/inspections`` takes them."""
    parser.add_argument("--since", type=_time_arg, metavar="TIME",
                        help="inspected at or after (ISO 8601 with a zone)")
    parser.add_argument("--until", type=_time_arg, metavar="TIME",
                        help="inspected before (ISO 8601 with a zone)")
    parser.add_argument("--verdict", choices=("pass", "fail"))
    for name in ("product", "serial", "line", "station"):
        parser.add_argument(f"--{name}", metavar="TEXT", help=f"the board's {name}")
    reviewed = parser.add_mutually_exclusive_group()
    reviewed.add_argument("--reviewed", dest="reviewed", action="store_true", default=None,
                          help="reviewed boards only")
    reviewed.add_argument("--unreviewed", dest="reviewed", action="store_false",
                          help="boards not yet reviewed (the review queue)")
    parser.add_argument("--tag", action="append", default=[], metavar="TEXT", dest="tags",
                        help=f"records carrying this tag; repeat for several (at most {MAX_TAGS})")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"since": args.since, "until": args.until, "verdict": args.verdict,
            "product": args.product, "serial": args.serial, "line": args.line,
            "station": args.station, "reviewed": args.reviewed, "tags": args.tags or None}


# --- inspections -----------------------------------------------------------------------------


def build_inspections_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``pcb-inspect inspections list|get|export`` to ``parser`` and returns it."""
    parser.description = ("Read the inspection records of a running service: list them "
                          "(filtered, a page at a time), show one with its reviews, export them.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="one page of records, newest first")
    _add_filter_args(listing)
    listing.add_argument("--limit", type=_limit_arg, default=50,
                         help=f"records per page, 1 to {MAX_PAGE_LIMIT} (default: %(default)s)")
    listing.add_argument("--cursor", metavar="TEXT",
                         help="the next page: the cursor the previous page printed")

    get = actions.add_parser("get", help="one record and its reviews")
    get.add_argument("inspection_id", metavar="ID", help="the record's id (insp_...)")

    export = actions.add_parser("export", help="every matching record as CSV or JSON lines "
                                               "(needs an admin key)")
    _add_filter_args(export)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv",
                        help="csv (a row per defect) or jsonl (default: %(default)s)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the file to write; '-' writes to stdout")

    _finish(parser, listing, get, export)
    return parser


def _limit_arg(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_PAGE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to {MAX_PAGE_LIMIT}, got {text!r}")
    return value


def run_inspections(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect inspections ACTION``; returns the exit code (0 done, 2 error)."""
    target = getattr(args, "inspection_id", None)
    return _run_action(args, f"inspections {args.action}" + (f" {target}" if target else ""),
                       _INSPECTION_ACTIONS)


def _list(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    page = client.list_inspections(limit=args.limit, cursor=args.cursor, **_filters(args))
    if _printed_as_json(args, page):
        return EXIT_PASS
    table = Table(title=f"Inspections ({len(page['items'])})", title_justify="left")
    for column in ("id", "created", "product", "serial", "verdict", "defects", "reviewed"):
        # An id is copied from here into `inspections get` and `review`: never wrapped.
        table.add_column(column, justify="right" if column == "defects" else "left",
                         no_wrap=column == "id")
    for record in page["items"]:
        table.add_row(*(escape(str(v)) for v in (
            record["id"], record["created_at"], record.get("product") or "-",
            record.get("serial") or "-", record["verdict"], record.get("defect_count", "?"),
            "yes" if record.get("reviewed") else "no")))
    out.print(table)
    if page.get("next_cursor"):
        out.print(escape(f"next page: --cursor {page['next_cursor']}"))
    return EXIT_PASS


def _get(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    record = client.get_inspection(args.inspection_id)
    if _printed_as_json(args, record):
        return EXIT_PASS
    head = _fields_table(escape(f"Inspection {record['id']}"))
    for key in ("created_at", "product", "serial", "line", "station", "tags", "verdict",
                "width", "height", "model_name", "model_version", "image_sha256"):
        if record.get(key) not in (None, []):
            head.add_row(key, escape(str(record[key])))
    out.print(head)
    defects = _table(f"defects ({len(record.get('defects') or [])})",
                     ("id", "class", "conf", "bbox [x0, y0, x1, y1]"))
    for d in record.get("defects") or []:
        defects.add_row(str(d.get("id")), escape(str(d.get("class"))),
                        f"{d.get('confidence', 0):.2f}", escape(str(d.get("bbox"))))
    out.print(defects)
    reviews = record.get("reviews") or []
    for review in reviews:
        body = review.get("body") or {}
        out.print(escape(f"review {review['id']} by {review['reviewer']} at "
                         f"{review['created_at']}: {len(body.get('defects') or [])} outcomes, "
                         f"{len(body.get('missed') or [])} missed"))
    if not reviews:
        out.print("not reviewed")
    return EXIT_PASS


def _export(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    to_stdout = str(args.out) == "-"
    if to_stdout:
        written = client.export_inspections_to(sys.stdout.buffer, format=args.format,
                                               **_filters(args))
        sys.stdout.flush()
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("wb") as fh:
            written = client.export_inspections_to(fh, format=args.format, **_filters(args))
    # With --out -, stdout carries the export itself: the summary goes to stderr.
    summary = {"out": str(args.out), "format": args.format, "bytes": written}
    if args.json and not to_stdout:
        print(json.dumps(summary))
    else:
        Console(stderr=to_stdout, highlight=False).print(escape(
            f"Wrote {written} bytes of {args.format} to {args.out}"))
    return EXIT_PASS


_INSPECTION_ACTIONS: dict[str, _Action] = {"list": _list, "get": _get, "export": _export}


# --- review ----------------------------------------------------------------------------------


def build_review_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the arguments of ``pcb-inspect review`` to ``parser`` and returns it."""
    parser.description = (
        "Review an inspection: an outcome per defect the model reported and the defects it "
        "missed, from flags or a JSON file {defects, missed} (the two merge). Sending the same "
        "review again changes nothing. Without any outcome the board is reviewed clean.")
    parser.add_argument("inspection_id", metavar="ID", help="the record's id (insp_...)")
    parser.add_argument("--file", type=Path, metavar="REVIEW.json",
                        help="the review as JSON: {defects: [...], missed: [...]}; '-' stdin")
    parser.add_argument("--confirm", type=_defect_id_arg, action="append", default=[],
                        metavar="N", help="defect N is a real defect (repeat)")
    parser.add_argument("--false-call", type=_defect_id_arg, action="append", default=[],
                        metavar="N", help="defect N is not a defect (repeat)")
    parser.add_argument("--reclassify", type=_reclassify_arg, action="append", default=[],
                        metavar="N=CLASS", help="defect N is of class CLASS (repeat)")
    parser.add_argument("--missed", type=_missed_arg, action="append", default=[],
                        metavar="X0,Y0,X1,Y1=CLASS",
                        help="a defect the model missed, its box in pixels (repeat)")
    parser.set_defaults(action="review")
    _finish(parser, parser)
    return parser


def _defect_id_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a defect id (an integer), got {text!r}"
                                         ) from None


def _reclassify_arg(text: str) -> tuple[int, str]:
    number, sep, name = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected N=CLASS (e.g. 3=spur), got {text!r}")
    return _defect_id_arg(number), name


def _missed_arg(text: str) -> dict[str, Any]:
    box, sep, name = text.partition("=")
    try:
        bbox = [int(v) for v in box.split(",")]
    except ValueError:
        bbox = []
    if not sep or not name or len(bbox) != 4:
        raise argparse.ArgumentTypeError(
            f"expected X0,Y0,X1,Y1=CLASS in pixels (e.g. 10,20,40,60=short), got {text!r}")
    return {"bbox": bbox, "class": name}


def _read_review(path: Path) -> dict[str, Any]:
    review = _read_json(path, "{defects, missed}")
    if not isinstance(review, dict) or not set(review) <= {"defects", "missed"}:
        shape = sorted(review) if isinstance(review, dict) else type(review).__name__
        raise ValueError(f"{path}: expected a JSON object {{defects, missed}}, got {shape}")
    for name, items in review.items():
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"{path}: {name} must be a list of objects, got {items!r:.80}")
    return review


def run_review(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect review``; returns the exit code (0 done, 2 error)."""
    return _run_action(args, f"review {args.inspection_id}", {"review": _review})


def _review(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    given = _read_review(args.file) if args.file is not None else {}
    defects = list(given.get("defects") or [])
    defects += [{"defect_id": n, "outcome": "confirmed"} for n in args.confirm]
    defects += [{"defect_id": n, "outcome": "false_call"} for n in args.false_call]
    defects += [{"defect_id": n, "outcome": "reclassified", "class": c}
                for n, c in args.reclassify]
    missed = list(given.get("missed") or []) + list(args.missed)
    review = client.review_inspection(args.inspection_id, defects, missed)
    if _printed_as_json(args, review):
        return EXIT_PASS
    verb = "Recorded review" if review.get("new_review") else "Unchanged: the current review is"
    body = review.get("body") or {}
    out.print(escape(f"{verb} {review['id']} of {args.inspection_id} by {review['reviewer']}: "
                     f"{len(body.get('defects') or [])} outcomes, "
                     f"{len(body.get('missed') or [])} missed"))
    return EXIT_PASS


# --- stats -----------------------------------------------------------------------------------


def build_stats_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the arguments of ``pcb-inspect stats`` to ``parser`` and returns it."""
    parser.description = ("Boards, fail rate and false-call rate per class over a time range "
                          "(default: the last 24 hours), as the review dashboard shows them.")
    parser.add_argument("--since", type=_time_arg, metavar="TIME",
                        help="start (ISO 8601 with a zone; default: 24 hours before --until)")
    parser.add_argument("--until", type=_time_arg, metavar="TIME",
                        help="end, exclusive (default: now)")
    parser.add_argument("--bucket", choices=STATS_BUCKETS, default="hour",
                        help="boards per hour or per day (default: %(default)s)")
    parser.set_defaults(action="stats")
    _finish(parser, parser)
    return parser


def run_stats(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect stats``; returns the exit code (0 done, 2 error)."""
    return _run_action(args, "stats", {"stats": _stats})


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _stats(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    stats = client.stats(since=args.since, until=args.until, bucket=args.bucket)
    if _printed_as_json(args, stats):
        return EXIT_PASS
    out.print(escape(
        f"{stats['since']} to {stats['until']}: {stats['boards']} boards, {stats['failed']} "
        f"failed ({_rate(stats['fail_rate'])}), {stats['reviewed']} reviewed"))
    busy = [b for b in stats["buckets"] if b["boards"]]
    if busy:
        table = _table(f"boards per {stats['bucket']}", ("start", "boards", "failed", "fail rate"),
                       right={"boards", "failed", "fail rate"})
        for b in busy:
            table.add_row(escape(str(b["start"])), str(b["boards"]), str(b["failed"]),
                          _rate(b["fail_rate"]))
        out.print(table)
    counts = ("reviewed", "confirmed", "false calls", "reclassified", "missed", "false-call rate")
    classes = _table("review outcomes per class", ("class", *counts), right=counts)
    for c in stats["classes"]:
        classes.add_row(escape(str(c["class"])), str(c["reviewed_calls"]), str(c["confirmed"]),
                        str(c["false_calls"]), str(c["reclassified"]), str(c["missed"]),
                        _rate(c["false_call_rate"]))
    out.print(classes)
    return EXIT_PASS
