"""``pcb-inspect predict``, ``batch``, ``golden`` and ``product``: the line client on the
command line.

``predict`` inspects a few files and prints one table per board. ``batch`` pushes a whole
folder through ``POST /predict/batch`` with several requests in flight, writing one result per
file to a JSONL or CSV file as each arrives (flushed and fsynced), so that a crash or a network
hiccup never loses a finished result and a rerun picks up where the last one stopped. Both
can compare each board with a golden board: ``--golden FILE`` (``predict``) uploads one with
every request, ``--product ID`` uses the one stored on the service (and the product's recipe,
if it has one: a verdict per board of a panel). ``golden put|list|get|delete`` manages the
stored golden boards, ``product put|get|revisions`` the products' recipes.

Exit codes (``predict``, ``batch``): 0 every board passed, 1 at least one board failed
inspection, 2 errors (a file or request failed, bad arguments). Errors win over failed boards:
an incomplete run must not look like a clean "some boards failed". ``golden``, ``product``: 0
done, 2 error.

Only ``httpx`` and ``rich`` are imported: no TensorFlow on the line station.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import csv
import fnmatch
import io
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pcb_inspect.client import PERMANENT_CODES, InspectClient, InspectError

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PATTERNS = "*.png,*.jpg,*.jpeg,*.bmp,*.tif,*.tiff,*.webp"
#: Whole-request errors that no other file would escape: stop the run instead of recording
#: the same error against every file (and then skipping them all on the next run).
_FATAL_STATUSES = frozenset({401, 403, 404, 405, 422})


def _console(stderr: bool = False) -> Console:
    # Built per call so that redirected or captured streams (tests, pipes) are honoured.
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--api-key``, ``--timeout``, ``--retries``: what every command needs."""
    parser.add_argument(
        "--url", default=os.environ.get("PCB_URL", DEFAULT_URL),
        help="the service (default: $PCB_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("PCB_API_KEY"),
        help="API key, sent as X-API-Key (default: $PCB_API_KEY)",
    )
    parser.add_argument("--timeout", type=_positive_float, default=120.0,
                        help="seconds per request attempt (default: %(default)s)")
    parser.add_argument("--retries", type=_non_negative_int, default=5,
                        help="retries on 503/429/connection errors (default: %(default)s)")


def _finish(parser: argparse.ArgumentParser, *subs: argparse.ArgumentParser) -> None:
    """The exit-code epilog of a command that prints a result, and on each of its (sub)parsers
    the connection arguments and ``--json``."""
    parser.epilog = "Exit code: 0 done, 2 error."
    for sub in subs:
        _add_connection_args(sub)
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")


def _product_action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    """An action of ``golden`` or ``product`` that names a product first."""
    sub = actions.add_parser(name, help=help)
    sub.add_argument("product", type=_product_arg, metavar="PRODUCT", help="product id")
    return sub


def _read_json(path: Path, expected: str) -> Any:
    """The JSON document in ``path`` (``-``: stdin), or a ValueError saying it is not JSON and
    what was ``expected``."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); expected {expected}") from None


def _add_rule_args(parser: argparse.ArgumentParser) -> None:
    """The inspection rules (``--threshold``, ...): only the commands that inspect."""
    parser.add_argument("--threshold", type=float, default=None,
                        help="confidence cut in [0, 1] (default: the service's)")
    parser.add_argument("--min-area-px", type=_non_negative_int, default=None,
                        help="smallest defect reported, in pixels (default: the service's)")
    parser.add_argument("--pixels-per-mm", type=_positive_float, default=None,
                        help="scan resolution for mm² areas (default: the service's)")


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    return _number(text, int, "an integer", ">= 0", lambda value: value >= 0)


def _positive_float(text: str) -> float:
    return _number(text, float, "a number", "> 0", lambda value: value > 0)


_N = TypeVar("_N", int, float)


def _number(
    text: str, convert: Callable[[str], _N], noun: str, bound: str, ok: Callable[[_N], bool]
) -> _N:
    """``text`` as ``convert`` reads it, or the one-line error that argparse prints."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text!r}")
    return value


def _printed_as_json(args: argparse.Namespace, value: Any) -> bool:
    """With ``--json``, prints ``value`` as the one JSON document a script reads; says whether
    it did (then the command prints nothing else)."""
    if args.json:
        print(json.dumps(value))
    return bool(args.json)


def _table(title: str, columns: Iterable[str], right: Collection[str] = ()) -> Table:
    """A left-titled table with these columns, the ``right`` ones right-justified."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _fields_table(title: str) -> Table:
    """A headerless two-column table of one thing's fields: names in bold, then values."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    return table


def _client(args: argparse.Namespace, connections: int = 4) -> InspectClient:
    return InspectClient(
        args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries,
        max_connections=connections,
    )


def _rule_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "threshold": args.threshold,
        "min_area_px": args.min_area_px,
        "pixels_per_mm": args.pixels_per_mm,
    }


def _add_meta_args(parser: argparse.ArgumentParser, *, serial: bool) -> None:
    """The board metadata that goes into each record (and the review queue's filters)."""
    if serial:
        parser.add_argument("--serial", metavar="TEXT",
                            help="the board's serial number (with several files: each one's)")
    parser.add_argument("--line", metavar="TEXT", help="the production line")
    parser.add_argument("--station", metavar="TEXT", help="the inspection station")
    parser.add_argument("--tag", action="append", default=[], metavar="TEXT", dest="tags",
                        help="a tag of the record; repeat for several (at most 32)")


def _meta_params(args: argparse.Namespace) -> dict[str, Any]:
    """The metadata flags as the service's query parameters (unset ones left out)."""
    params: dict[str, Any] = {
        name: getattr(args, name, None) for name in ("serial", "line", "station")
        if getattr(args, name, None) is not None
    }
    if args.tags:
        params["tags"] = list(args.tags)
    return params


def _product_arg(text: str) -> str:
    # The same rule as the client's, checked while parsing so a typo fails before any upload.
    if not text.strip() or text in (".", "..") or "/" in text:
        raise argparse.ArgumentTypeError(
            f"expected a product id without '/' (e.g. A17-top), got {text!r}"
        )
    return text


def _describe_golden(result: dict[str, Any]) -> str | None:
    """One line on the golden board a result was compared with, or ``None`` without one."""
    # "reference" is the API's JSON name for the golden board.
    golden = result.get("reference")
    if not golden:
        return None
    source = (
        f"product {golden.get('product')}" if golden.get("source") == "product"
        else "uploaded with the request"
    )
    line = f"golden board: {source}"
    if golden.get("sha256"):
        line += f" (sha256 {str(golden['sha256'])[:12]})"
    alignment = golden.get("alignment")
    if alignment:
        line += (
            f"; aligned by dx {alignment['dx']:+.1f} px, dy {alignment['dy']:+.1f} px, "
            f"rotation {alignment['rotation_deg']:+.2f}°, score {alignment['score']:.3f}"
        )
    return line


def _describe(error: InspectError) -> str:
    """``[status] code: message``, escaped for rich (which would eat "[no response]")."""
    status = error.status if error.status is not None else "no response"
    return escape(f"[{status}] {error.code}: {error.message}")


# --- predict ---------------------------------------------------------------------------------


def build_predict_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the arguments of ``pcb-inspect predict`` to ``parser`` and returns it."""
    parser.description = "Inspect board images through a running pcb-inspect service."
    parser.epilog = "Exit code: 0 all boards pass, 1 a board failed, 2 errors."
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="board images")
    _add_connection_args(parser)
    _add_rule_args(parser)
    golden = parser.add_mutually_exclusive_group()
    golden.add_argument("--golden", "--template", dest="golden", type=Path, metavar="FILE",
                        help="compare each board with this golden (defect-free) board, "
                             "uploaded with each request (--template: its older name)")
    golden.add_argument("--product", type=_product_arg, metavar="ID",
                        help="compare each board with the golden board stored on the "
                             "service for this product (see: pcb-inspect golden)")
    parser.add_argument("--mask-out", type=Path, metavar="DIR",
                        help="write each board's class-mask PNG here (<name>.mask.png)")
    parser.add_argument("--overlay-out", type=Path, metavar="DIR",
                        help="write each board's overlay PNG here (<name>.overlay.png)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per file instead of tables")
    _add_meta_args(parser, serial=True)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect predict``; returns the exit code (0 pass, 1 fail, 2 errors)."""
    out, err = _console(), _console(stderr=True)
    for folder in (args.mask_out, args.overlay_out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    golden: dict[str, Any] = {"product": args.product}
    if args.golden is not None:
        try:
            # Read once, not once per board: every board is compared with the same bytes.
            golden["golden"] = (args.golden.name, args.golden.read_bytes())
        except OSError as exc:
            err.print("[bold red]ERROR[/] " + escape(
                f"--golden: cannot read {args.golden}: {exc.strerror or exc}; expected a "
                "golden-board image file"))
            return EXIT_ERROR
    errors = fails = 0
    with _client(args) as client:
        for path in args.files:
            try:
                # One request gives the mask too (mask=png): no second inference for it.
                result = client.predict(
                    path, mask="png" if args.mask_out else "none", **golden,
                    **_rule_params(args), **_meta_params(args),
                )
                if args.mask_out:
                    target = args.mask_out / f"{path.stem}.mask.png"
                    target.write_bytes(base64.b64decode(result["mask"]["data"]))
                if args.overlay_out:
                    target = args.overlay_out / f"{path.stem}.overlay.png"
                    target.write_bytes(client.overlay(path, **golden, **_rule_params(args)))
            except OSError as exc:
                errors += 1
                _report_error(args, out, err, path, None, "file_error", str(exc))
                continue
            except InspectError as exc:
                errors += 1
                _report_error(args, out, err, path, exc.status, exc.code, exc.message)
                continue
            fails += result["summary"]["verdict"] == "fail"
            if args.json:
                print(json.dumps({"file": str(path), "status": 200, "result": result}))
            else:
                out.print(_board_table(str(path), result))
    if not args.json and len(args.files) > 1:
        passed = len(args.files) - fails - errors
        out.print(f"{len(args.files)} boards: {passed} pass, {fails} fail, {errors} errors")
    return EXIT_ERROR if errors else EXIT_FAIL if fails else EXIT_PASS


def _report_error(
    args: argparse.Namespace, out: Console, err: Console, path: Path,
    status: int | None, code: str, message: str,
) -> None:
    if args.json:
        error = {"code": code, "message": message}
        print(json.dumps({"file": str(path), "status": status, "error": error}))
    detail = escape(f"{path}: [{status if status is not None else '-'}] {code}: {message}")
    err.print(f"[bold red]ERROR[/] {detail}", markup=True)


def _board_table(name: str, result: dict[str, Any]) -> Table:
    summary = result["summary"]
    verdict = summary["verdict"]
    style = "bold white on red" if verdict == "fail" else "bold white on green"
    title = (
        f"{name}  [{style}] {verdict.upper()} [/]  {summary['defect_count']} defects, "
        f"{summary['defect_area_mm2']:.3f} mm²"
    )
    caption = _describe_golden(result)
    mode = (result.get("model") or {}).get("mode")
    if mode:
        caption = f"{caption}; model mode: {mode}" if caption else f"model mode: {mode}"
    recipe = result.get("recipe")
    if recipe:
        line = f"recipe: {recipe.get('product')} revision {recipe.get('revision')}"
        units = result.get("units") or []
        if len(units) > 1:
            line += "; boards: " + ", ".join(
                f"{u.get('position')}"
                f"{'' if u.get('identifier') is None else ' ' + str(u['identifier'])} "
                f"{str(u.get('verdict')).upper()}" for u in units)
        if result.get("ignored"):
            line += f"; {len(result['ignored'])} defects set aside by zones"
        caption = f"{caption}; {line}" if caption else line
    caption = escape(caption) if caption else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("conf", justify="right")
    table.add_column("area mm²", justify="right")
    table.add_column("bbox [x0, y0, x1, y1]")
    for d in result["defects"]:
        table.add_row(
            str(d["id"]), d["class"], f"{d['confidence']:.2f}", f"{d['area_mm2']:.4f}",
            "[" + ", ".join(str(v) for v in d["bbox"]) + "]",
        )
    return table


# --- batch -----------------------------------------------------------------------------------


def build_batch_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the arguments of ``pcb-inspect batch`` to ``parser`` and returns it."""
    parser.description = (
        "Inspect every board image under a folder through POST /predict/batch, appending one "
        "result per file to --out. A rerun skips files already in --out (resume)."
    )
    parser.epilog = "Exit code: 0 all boards pass, 1 a board failed, 2 errors."
    parser.add_argument("folder", type=Path, metavar="DIR", help="folder of board images")
    _add_connection_args(parser)
    _add_rule_args(parser)
    parser.add_argument("--product", type=_product_arg, metavar="ID",
                        help="compare every board with the golden board stored on the service "
                             "for this product (see: pcb-inspect golden)")
    parser.add_argument("--out", type=Path, required=True,
                        help="results file: .jsonl (one JSON object per file) or .csv")
    parser.add_argument("--concurrency", type=_positive_int, default=2,
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=8,
                        help="files per request (default: %(default)s)")
    parser.add_argument("--pattern", default=DEFAULT_PATTERNS,
                        help="comma-separated file name globs, case-insensitive "
                             "(default: %(default)s)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="on resume, upload again the files whose last record is an error "
                             "(by default only service-side errors, 5xx, are redone)")
    _add_meta_args(parser, serial=False)
    return parser


@dataclass
class _Record:
    """One line of the results file."""

    path: str
    status: int | None
    verdict: str | None = None
    defect_count: int | None = None
    defect_area_mm2: float | None = None
    by_class: dict[str, int] = field(default_factory=dict)
    defects: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    model: str | None = None
    #: The golden board and its alignment (JSONL only: CSV keeps its fixed columns).
    reference: dict[str, Any] | None = None
    #: The board's record on the service (JSONL only); ``None`` when records are off.
    inspection_id: str | None = None
    #: A panel's boards and the recipe revision that judged them (JSONL only, with a recipe).
    units: list[dict[str, Any]] | None = None
    recipe: dict[str, Any] | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def from_result(cls, path: str, result: dict[str, Any]) -> _Record:
        summary = result["summary"]
        model = result.get("model") or {}
        return cls(
            path=path,
            status=200,
            verdict=summary["verdict"],
            defect_count=summary["defect_count"],
            defect_area_mm2=summary["defect_area_mm2"],
            by_class=dict(summary["by_class"]),
            defects=[
                {k: d[k] for k in ("id", "class", "confidence", "bbox", "area_px", "area_mm2",
                                   "centroid") if k in d}
                for d in result["defects"]
            ],
            model=f"{model.get('name')} {model.get('version')}" if model else None,
            reference=result.get("reference"),
            inspection_id=result.get("inspection_id"),
            units=result.get("units") if result.get("recipe") else None,
            recipe=result.get("recipe"),
        )

    @classmethod
    def from_error(cls, path: str, status: int | None, code: str, message: str) -> _Record:
        # Newlines would break CSV rows for naive readers; the message is one line anyway.
        return cls(path=path, status=status, error={"code": code, "message": " ".join(
            message.split())})

    @property
    def done(self) -> bool:
        """Whether a rerun may skip this file: a result, or an error the file itself causes."""
        return self.status is not None and self.status < 500

    @property
    def ok(self) -> bool:
        return self.status == 200


class _ResultsFile:
    """The append-only results file (JSONL or CSV), read back for resuming."""

    FIXED = ("path", "status", "verdict", "defect_count", "defect_area_mm2")
    TAIL = ("defects", "error_code", "error_message", "model", "time")

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise ValueError(
                f"--out must end in .jsonl or .csv (it picks the format); got {path.name!r}"
            )
        self.path = path
        self.format = suffix[1:]
        self.columns: list[str] | None = None
        self._lock = threading.Lock()

    def load(self) -> dict[str, _Record]:
        """The last record of each path in the file; drops a torn last line first."""
        if not self.path.exists():
            return {}
        self._drop_torn_tail()
        text = self.path.read_text(encoding="utf-8")
        records: dict[str, _Record] = {}
        for record in self._parse(text):
            records[record.path] = record  # the last line for a path wins (a redo)
        return records

    def _drop_torn_tail(self) -> None:
        # A crash mid-write can leave a line without its newline. Cut it, so the next line
        # does not glue onto it; its file is simply inspected again.
        with self.path.open("rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def _parse(self, text: str) -> Iterator[_Record]:
        if self.format == "jsonl":
            for n, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    yield _Record(
                        path=str(raw["path"]),
                        status=raw.get("status"),
                        verdict=raw.get("verdict"),
                        defect_count=raw.get("defect_count"),
                        by_class=raw.get("by_class") or {},
                        error=raw.get("error"),
                    )
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(
                        f"{self.path}:{n} is not a results line ({exc!r}); expected a JSON "
                        "object with a 'path'. Is --out the right file?"
                    ) from None
            return
        reader = csv.DictReader(io.StringIO(text))
        self.columns = list(reader.fieldnames or []) or None
        for row in reader:
            status = row.get("status") or ""
            error = None
            if row.get("error_code"):
                error = {"code": row["error_code"], "message": row.get("error_message", "")}
            yield _Record(
                path=row["path"],
                status=int(status) if status.isdigit() else None,
                verdict=row.get("verdict") or None,
                defect_count=int(row["defect_count"]) if row.get("defect_count") else None,
                by_class={k[len("n_"):]: int(v) for k, v in row.items()
                          if k and k.startswith("n_") and v},
                error=error,
            )

    def ensure_header(self, classes: Iterable[str]) -> None:
        """Writes the CSV header for a new file, or checks an existing one matches."""
        if self.format != "csv":
            return
        columns = [*self.FIXED, *(f"n_{c}" for c in classes), *self.TAIL]
        if self.columns is None:
            if not self.path.exists() or self.path.stat().st_size == 0:
                self._append(self._csv_line(columns))
            else:
                self.columns = self._read_header()
        if self.columns is not None and self.columns != columns:
            raise ValueError(
                f"{self.path} has columns {self.columns}, but this model's results need "
                f"{columns}; write to a new --out file"
            )
        self.columns = columns

    def _read_header(self) -> list[str]:
        with self.path.open(encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh), [])

    def write(self, record: _Record) -> None:
        """Appends ``record`` as one line, flushed and fsynced before returning."""
        if self.format == "jsonl":
            line = json.dumps(
                {
                    "path": record.path, "status": record.status,
                    "inspection_id": record.inspection_id, "verdict": record.verdict,
                    "defect_count": record.defect_count,
                    "defect_area_mm2": record.defect_area_mm2, "by_class": record.by_class,
                    "defects": record.defects, "error": record.error, "model": record.model,
                    "reference": record.reference,
                    **({"units": record.units, "recipe": record.recipe} if record.recipe else {}),
                    "time": record.time,
                },
                ensure_ascii=False,
            ) + "\n"
        else:
            assert self.columns is not None, "ensure_header() first"
            row: dict[str, Any] = {
                "path": record.path, "status": record.status, "verdict": record.verdict,
                "defect_count": record.defect_count, "defect_area_mm2": record.defect_area_mm2,
                "defects": json.dumps(record.defects, separators=(",", ":")) if record.ok else "",
                "error_code": (record.error or {}).get("code"),
                "error_message": (record.error or {}).get("message"),
                "model": record.model, "time": record.time,
                **{f"n_{k}": v for k, v in record.by_class.items()},
            }
            line = self._csv_line([row.get(c) for c in self.columns])
        self._append(line)

    @staticmethod
    def _csv_line(values: Iterable[Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
        return buf.getvalue()

    def _append(self, line: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8", newline="") as fh:
            fh.write(line)
            fh.flush()
            # fsync per line: the point of the results file is that a finished board's result
            # survives a power cut; one fsync per board is cheap next to its inspection.
            os.fsync(fh.fileno())


def find_images(folder: Path, patterns: str, exclude: Path | None = None) -> list[Path]:
    """Files under ``folder`` (recursively) whose name matches one of ``patterns``.

    Args:
        folder: Where to look.
        patterns: Comma-separated globs on the file name, matched case-insensitively.
        exclude: A file to leave out (the results file, should it live in the folder).

    Returns:
        The matching files, sorted by relative path.
    """
    globs = [p.strip().lower() for p in patterns.split(",") if p.strip()]
    if not globs:
        raise ValueError(f"--pattern needs at least one glob, e.g. '*.png'; got {patterns!r}")
    skip = exclude.resolve() if exclude is not None else None
    found = [
        p for p in folder.rglob("*")
        if p.is_file() and any(fnmatch.fnmatchcase(p.name.lower(), g) for g in globs)
        and p.resolve() != skip
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class _FatalError(Exception):
    """A whole-request error that every other request would hit too (wrong key, URL, ...)."""

    def __init__(self, error: InspectError) -> None:
        super().__init__(str(error))
        self.error = error


def _item_error(item: dict[str, Any]) -> InspectError:
    """The error of one failed item of a ``/predict/batch`` answer."""
    error = item.get("error") or {}
    status = int(item["status"])
    return InspectError(status, str(error.get("code", f"http_{status}")),
                        str(error.get("message", "")))


def _inspect_chunk(
    client: InspectClient, folder: Path, chunk: list[Path], params: dict[str, Any],
    stop: threading.Event, product: str | None = None,
) -> list[_Record]:
    """Sends ``chunk`` through /predict/batch and returns one record per file.

    Per-file errors become that file's record. Items the service shed with 503 are sent
    again (alone with their peers) with the client's backoff; a 413 for the whole request
    splits it in halves, since the files together may pass the body limit where each fits.
    """
    rel = {p: p.relative_to(folder).as_posix() for p in chunk}
    records: dict[Path, _Record] = {}
    pending, attempt = list(chunk), 0
    while pending and not stop.is_set():
        try:
            images = [(p.name, p.read_bytes()) for p in pending]
        except OSError:
            # Read one by one so only the unreadable file gets the error.
            images = []
            for p in list(pending):
                try:
                    images.append((p.name, p.read_bytes()))
                except OSError as exc:
                    records[p] = _Record.from_error(rel[p], None, "file_error", str(exc))
                    pending.remove(p)
            if not pending:
                break
        try:
            body = client.predict_batch(images, mask="none", product=product, **params)
        except InspectError as exc:
            if exc.status == 413 and len(pending) > 1:
                half = len(pending) // 2
                for part in (pending[:half], pending[half:]):
                    for r in _inspect_chunk(client, folder, part, params, stop, product):
                        records[next(p for p in part if rel[p] == r.path)] = r
                pending = []
                break
            if exc.status is None or exc.status in _FATAL_STATUSES or exc.code in PERMANENT_CODES:
                raise _FatalError(exc) from None
            for p in pending:
                records[p] = _Record.from_error(rel[p], exc.status, exc.code, exc.message)
            break
        retry: list[Path] = []
        for item, path in zip(body["results"], pending, strict=True):
            if item["status"] == 200:
                records[path] = _Record.from_result(rel[path], item["result"])
            elif client.policy.should_retry(_item_error(item), attempt):
                retry.append(path)
            else:
                error = _item_error(item)
                records[path] = _Record.from_error(rel[path], error.status, error.code,
                                                   error.message)
        if retry:
            stop.wait(client.policy.delay(attempt))
            attempt += 1
        pending = retry
    return [records[p] for p in chunk if p in records]


@dataclass
class _Totals:
    boards: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    defects: Counter[str] = field(default_factory=Counter)

    def add(self, record: _Record) -> None:
        self.boards += 1
        if not record.ok:
            self.errors += 1
            return
        if record.verdict == "fail":
            self.failed += 1
        else:
            self.passed += 1
        self.defects.update({k: v for k, v in record.by_class.items() if v})


def run_batch(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect batch``; returns the exit code (0 pass, 1 fail, 2 errors)."""
    out, err = _console(), _console(stderr=True)
    try:
        return _run_batch(args, out, err)
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]ERROR[/] {exc}")
        return EXIT_ERROR


def _run_batch(args: argparse.Namespace, out: Console, err: Console) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the folder that holds the images")
    results = _ResultsFile(args.out)
    previous = results.load()
    files = find_images(folder, args.pattern, exclude=args.out)

    def wanted(path: Path) -> bool:
        record = previous.get(path.relative_to(folder).as_posix())
        if record is None:
            return True
        return not record.ok if args.retry_errors else not record.done

    todo = [p for p in files if wanted(p)]
    skipped = len(files) - len(todo)
    stop = threading.Event()
    interrupted = fatal = None
    with _client(args, connections=args.concurrency) as client:
        if todo:
            classes = _server_classes(client, args, err)
            if classes is None:
                return EXIT_ERROR
            results.ensure_header(classes)
        out.print(
            f"{len(files)} images under {folder}: {skipped} already in {args.out}, "
            f"{len(todo)} to inspect"
        )
        chunks = [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
        progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=out, transient=False, disable=not todo,
        )
        run = _Totals()
        with progress, concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            task = progress.add_task("inspecting", total=len(todo))
            futures = [
                pool.submit(_inspect_chunk, client, folder, c,
                            {**_rule_params(args), **_meta_params(args)}, stop,
                            args.product)
                for c in chunks
            ]
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        records = future.result()
                    except _FatalError as exc:
                        fatal = fatal or exc.error
                        stop.set()
                        continue
                    for record in records:
                        results.write(record)  # as soon as it arrives: nothing to lose
                        previous[record.path] = record
                        run.add(record)
                        if not record.ok and record.error:
                            progress.console.print("[red]error[/] " + escape(
                                f"{record.path}: [{record.status or '-'}] "
                                f"{record.error['code']}: {record.error['message']}"
                            ))
                        progress.advance(task)
            except KeyboardInterrupt:
                interrupted = True
                stop.set()  # in-flight chunks stop retrying; queued ones never start
                pool.shutdown(wait=False, cancel_futures=True)
    if fatal is not None:
        err.print(f"[bold red]ERROR[/] stopped: {_describe(fatal)}")
    if interrupted:
        err.print("[yellow]interrupted[/]: finished results are saved; rerun to resume")
    total = _Totals()
    for record in previous.values():
        total.add(record)
    out.print(_summary_table(total, run, skipped, args.out))
    if fatal is not None or interrupted or total.errors:
        return EXIT_ERROR
    return EXIT_FAIL if total.failed else EXIT_PASS


def _server_classes(
    client: InspectClient, args: argparse.Namespace, err: Console
) -> list[str] | None:
    """The model's classes, from one cheap call before anything is uploaded, so that a wrong
    URL or key (or an unknown product, which would fail every request) is said once, up
    front; ``None`` once it is said."""
    try:
        classes: list[str] = client.model_info()["classes"]
        if args.product is not None:
            client.get_golden_board(args.product)
    except InspectError as exc:
        err.print(f"[bold red]ERROR[/] {args.url}: {_describe(exc)}")
        return None
    return classes


def _summary_table(total: _Totals, run: _Totals, skipped: int, out: Path) -> Table:
    table = Table(title=f"Summary of {out}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("boards", str(total.boards))
    table.add_row("passed", f"[green]{total.passed}[/]")
    table.add_row("failed boards", f"[red]{total.failed}[/]" if total.failed else "0")
    table.add_row("errors", f"[red]{total.errors}[/]" if total.errors else "0")
    table.add_row("inspected this run", str(run.boards))
    table.add_row("skipped (already done)", str(skipped))
    for name, count in sorted(total.defects.items()):
        table.add_row(f"defects: {name}", str(count))
    if not total.defects:
        table.add_row("defects", "0")
    return table


# --- product recipes -------------------------------------------------------------------------


def build_product_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``pcb-inspect product put|get|revisions`` to ``parser`` and returns it."""
    parser.description = (
        "Manage the products' recipes stored on the service: the boards of a panel (units), "
        "zones ignored or with their own rules, and the product's rules; every change is a "
        "new revision. Inspect with one: pcb-inspect predict --product ID."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    put = _product_action(actions, "put", "store a new revision of a product's recipe")
    put.add_argument("file", type=Path, metavar="RECIPE.json",
                     help="the recipe as JSON: {units, zones, rules}; '-' reads stdin")

    get = _product_action(actions, "get", "show a product's current recipe, or one revision")
    get.add_argument("--revision", type=_positive_int, metavar="N",
                     help="this revision instead of the current one")

    revisions = _product_action(actions, "revisions", "list every revision of a recipe")
    _finish(parser, put, get, revisions)
    return parser


def run_product(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect product ACTION``; returns the exit code (0 done, 2 error)."""
    return _run_action(args, f"product {args.action} {args.product}", _PRODUCT_ACTIONS)


def _read_recipe(path: Path) -> dict[str, Any]:
    recipe = _read_json(path, "{units, zones, rules}")
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: expected a JSON object {{units, zones, rules}}, got "
                         f"{type(recipe).__name__}")
    return recipe


def _product_put(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    stored = client.put_recipe(args.product, _read_recipe(args.file))
    if _printed_as_json(args, stored):
        return EXIT_PASS
    if stored.get("new_revision"):
        out.print(escape(f"Stored revision {stored['revision']} of {args.product}'s recipe "
                         f"(sha256 {str(stored['sha256'])[:12]})"))
    else:
        out.print(escape(f"Unchanged: revision {stored['revision']} of {args.product}'s "
                         "recipe is already this one"))
    return EXIT_PASS


def _product_get(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    recipe = client.get_recipe(args.product, args.revision)
    if _printed_as_json(args, recipe):
        return EXIT_PASS
    board = recipe.get("golden_board") or {}
    out.print(escape(
        f"{args.product} recipe revision {recipe['revision']} (sha256 "
        f"{str(recipe['sha256'])[:12]}), by {recipe.get('author')} at {recipe.get('created')}, "
        f"for the {_size(board)} px golden board {str(board.get('sha256', ''))[:12]}"))
    units = _table("units", ("position", "bbox [x0, y0, x1, y1]"), right={"position"})
    for unit in recipe.get("units") or []:
        units.add_row(str(unit["position"]), "[" + ", ".join(map(str, unit["bbox"])) + "]")
    if not recipe.get("units"):
        units.add_row("1", "the whole image")
    out.print(units)
    if recipe.get("zones"):
        zones = _table("zones (first match wins)", ("name", "action", "rules", "vertices"))
        for zone in recipe["zones"]:
            rules = {k: zone[k] for k in ("min_area_px", "min_confidence", "ignored_classes")
                     if zone.get(k) not in (None, [])}
            zones.add_row(escape(zone["name"]), zone["action"],
                          escape(json.dumps(rules)) if rules else "-", str(len(zone["polygon"])))
        out.print(zones)
    rules = {k: v for k, v in (recipe.get("rules") or {}).items() if v is not None}
    out.print(escape("rules: " + (json.dumps(rules) if rules else "the service's")))
    return EXIT_PASS


def _product_revisions(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    revisions = client.recipe_revisions(args.product)
    if _printed_as_json(args, revisions):
        return EXIT_PASS
    table = _table(escape(f"Recipe revisions of {args.product} ({len(revisions)})"),
                   ("revision", "sha256", "created", "author"), right={"revision"})
    for rev in revisions:
        table.add_row(str(rev["revision"]), str(rev["sha256"])[:12], str(rev["created"]),
                      escape(str(rev["author"])))
    out.print(table)
    return EXIT_PASS


_PRODUCT_ACTIONS = {
    "put": _product_put, "get": _product_get, "revisions": _product_revisions,
}


# --- golden ----------------------------------------------------------------------------------


def build_golden_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``pcb-inspect golden put|list|get|delete`` to ``parser`` and returns it."""
    parser.description = (
        "Manage the golden (defect-free) boards stored on the service, one per product id; "
        "inspect against one with: pcb-inspect predict --product ID."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    put = _product_action(actions, "put", "store (or replace) a product's golden board")
    put.add_argument("file", type=Path, metavar="FILE", help="the golden board image")

    listing = actions.add_parser("list", help="list the stored golden boards")

    get = _product_action(actions, "get", "show a golden board's metadata, or save its image")
    get.add_argument("-o", "--out", type=Path, metavar="FILE",
                     help="save the golden board as a PNG here")

    delete = _product_action(actions, "delete", "delete a product's golden board")
    _finish(parser, put, listing, get, delete)
    return parser


def run_golden(args: argparse.Namespace) -> int:
    """Runs ``pcb-inspect golden ACTION``; returns the exit code (0 done, 2 error)."""
    product = getattr(args, "product", None)
    return _run_action(args, f"golden {args.action}" + (f" {product}" if product else ""),
                       _GOLDEN_ACTIONS)


def _run_action(args: argparse.Namespace, what: str, actions: dict[str, Any]) -> int:
    """Runs ``actions[args.action]`` with one client; every failure is one line on stderr
    naming ``what`` (exit 2), never a traceback."""
    out, err = _console(), _console(stderr=True)
    what = escape(what)
    try:
        with _client(args, connections=1) as client:
            return int(actions[args.action](client, args, out))
    except InspectError as exc:
        err.print(f"[bold red]ERROR[/] {what}: {_describe(exc)}")
    except OSError as exc:
        detail = escape(f"{exc.filename or ''}: {exc.strerror or exc}")
        err.print(f"[bold red]ERROR[/] {what}: {detail}")
    except ValueError as exc:
        err.print(f"[bold red]ERROR[/] {what}: {escape(str(exc))}")
    return EXIT_ERROR


def _golden_put(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    stored = client.put_golden_board(args.product, args.file)
    if _printed_as_json(args, stored):
        return EXIT_PASS
    verb = "Replaced" if stored.get("replaced") else "Stored"
    out.print(escape(f"{verb} the golden board of {args.product}: {_golden_line(stored)}; "
                     f"warnings: {_warnings_text(stored)}"))
    return EXIT_PASS


def _golden_list(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    boards = client.list_golden_boards()
    if _printed_as_json(args, boards):
        return EXIT_PASS
    if not boards:
        out.print("No golden boards stored. Add one with: pcb-inspect golden put PRODUCT FILE")
        return EXIT_PASS
    table = _table(f"Golden boards ({len(boards)})",
                   ("product", "size", "sha256", "created", "warnings"), right={"size"})
    for board in boards:
        table.add_row(
            escape(str(board.get("product"))), _size(board), str(board.get("sha256", ""))[:12],
            str(board.get("created", "")), escape(_warnings_text(board)),
        )
    out.print(table)
    return EXIT_PASS


def _golden_get(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    if args.out is not None:
        png = client.golden_board_png(args.product)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
        if args.json:
            print(json.dumps({"product": args.product, "out": str(args.out), "bytes": len(png)}))
        else:
            out.print(escape(f"Wrote the golden board of {args.product} to {args.out} "
                             f"({len(png)} bytes)"))
        return EXIT_PASS
    board = client.get_golden_board(args.product)
    if _printed_as_json(args, board):
        return EXIT_PASS
    table = _fields_table(escape(f"Golden board {args.product}"))
    for key, value in board.items():
        if key == "warnings":
            value = _warnings_text(board)
            for w in board.get("warnings") or ():
                value += f"\n  {w.get('class')} at {w.get('bbox')} ({w.get('confidence')})"
        elif key == "checked_by" and isinstance(value, dict):
            value = f"{value.get('name')} {value.get('version')} ({value.get('mode')})"
        table.add_row(escape(str(key)), escape(str(value)))
    out.print(table)
    return EXIT_PASS


def _golden_delete(client: InspectClient, args: argparse.Namespace, out: Console) -> int:
    client.delete_golden_board(args.product)
    if args.json:
        print(json.dumps({"product": args.product, "deleted": True}))
    else:
        out.print(escape(f"Deleted the golden board of {args.product}"))
    return EXIT_PASS


_GOLDEN_ACTIONS = {
    "put": _golden_put, "list": _golden_list, "get": _golden_get, "delete": _golden_delete,
}


def _size(board: dict[str, Any]) -> str:
    width, height = board.get("width"), board.get("height")
    return f"{width}×{height}" if width is not None and height is not None else "?"


def _warnings_text(board: dict[str, Any]) -> str:
    """What the single-image model found on a golden board when it was stored, in short."""
    if "warnings" not in board:
        return "unknown"  # a server that does not keep them
    warnings = board["warnings"]
    if warnings is None:
        return "not checked"
    if not warnings:
        return "none"
    classes = Counter(str(w.get("class")) for w in warnings)
    return f"{len(warnings)} (" + ", ".join(f"{n} {c}" for c, n in sorted(classes.items())) + ")"


def _golden_line(board: dict[str, Any]) -> str:
    sha = str(board.get("sha256") or "")[:12]
    return f"{_size(board)} px" + (f", sha256 {sha}" if sha else "")


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - use `pcb-inspect`
    """Runs ``predict``, ``batch`` or ``golden`` as ``python -m pcb_inspect.client_cli``."""
    from pcb_inspect.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
