"""A small client for the pcb-inspect service, for line integrators.

Example::

    from pcb_inspect.client import InspectClient, InspectError

    with InspectClient("http://aoi-server:8000", api_key="...") as client:
        result = client.predict("board_0001.png")
        if result["summary"]["verdict"] == "fail":
            ...
        # Against a golden board: uploaded with the request, or stored once per product.
        client.predict("board_0002.png", golden="golden_A17.png")
        client.put_golden_board("A17", "golden_A17.png")
        client.predict("board_0003.png", product="A17")
        # A panel of two boards, with an ignore zone: a verdict per board.
        client.put_recipe("A17", {"units": [{"position": 1, "bbox": [0, 0, 640, 640]},
                                            {"position": 2, "bbox": [640, 0, 1280, 640]}],
                                  "zones": [{"name": "rails", "action": "ignore",
                                             "polygon": [[0, 0], [1280, 0], [1280, 12]]}]})
        units = client.predict("panel.png", product="A17", serial="P1")["units"]

The client retries what is worth retrying and nothing else:

* ``503`` (overloaded, not ready, shutting down) and ``429``, honouring ``Retry-After``;
* connection errors and timeouts (inspection has no side effects, and storing or deleting a
  golden board is idempotent, so a repeat is safe; so is storing a recipe: resending the
  current one adds no revision).

Waits grow exponentially with *full jitter* (a uniform draw in ``[0, backoff * 2**attempt]``,
capped at ``max_backoff``), so that many stations knocked off by the same overload do not come
back in lockstep. Every other failure raises :class:`InspectError` at once.

Only ``httpx`` is needed: importing this module does not import TensorFlow.
"""

from __future__ import annotations

import asyncio
import email.utils
import mimetypes
import os
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import httpx

__all__ = [
    "AsyncInspectClient",
    "ImageInput",
    "InspectClient",
    "InspectError",
    "PERMANENT_CODES",
    "RETRY_STATUSES",
    "RetryPolicy",
]

#: What :meth:`InspectClient.predict` accepts as an image (a board, or a golden board): a
#: path, raw bytes, an open binary file, or a ``(filename, bytes)`` pair.
ImageInput = str | os.PathLike[str] | bytes | IO[bytes] | tuple[str, bytes]
MaskMode = Literal["png", "rle", "none"]

#: Statuses worth another try: the service is busy or says so.
RETRY_STATUSES: frozenset[int] = frozenset({429, 503})
#: Codes of a retry status that waiting does not cure: the service runs without the
#: golden-board model until someone deploys one, so retrying would only delay the error.
PERMANENT_CODES: frozenset[str] = frozenset({"pair_model_unavailable"})

_USER_AGENT = "pcb-inspect-client/0.1.0"


class InspectError(Exception):
    """The service answered with an error, or could not be reached.

    Attributes:
        status: HTTP status, or ``None`` when no response came (connection error, timeout).
        code: The API's machine-readable code (e.g. ``"unsupported_media_type"``), or
            ``"connection_error"`` / ``"timeout"`` / ``"http_<status>"`` when the body had none.
        message: The API's message for the operator, or what went wrong on the way.
        retry_after: The ``Retry-After`` the service sent, in seconds, if any.
    """

    def __init__(
        self, status: int | None, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status if status is not None else '-'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _json(response: httpx.Response) -> Any:
    return response.json()


def _content(response: httpx.Response) -> bytes:
    return response.content


def _nothing(response: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class _Request:
    """One request, fully materialised so it can be sent again on a retry.

    ``parse`` turns the successful response into what the public method returns: the sync
    and async clients share every request and parser, and differ only in how they send (see
    ``_call``). A ``probe`` is tried once and answers with ``parse`` whatever the status, and
    ``False`` when no response came.
    """

    method: str
    path: str
    params: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    headers: dict[str, str] | None = None
    parse: Callable[[httpx.Response], Any] = _json
    probe: bool = False
    #: A JSON body (the recipe of ``put_recipe``).
    json: Any = None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        value: The header's value, or ``None``.
        now: The current time, for HTTP dates (default: now, UTC).

    Returns:
        Seconds (>= 0), or ``None`` when the header is missing or unparseable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    # NaN compares false with everything, so this also turns "nan" into None.
    if not seconds == seconds or seconds == float("inf"):
        return None
    return max(0.0, seconds)


def _read_image(
    image: ImageInput, index: int = 0, role: str = "image"
) -> tuple[str, bytes, str]:
    """Reads ``image`` once into ``(filename, bytes, content type)`` so retries can resend it.

    ``role`` names the argument in errors and in the file name of unnamed bytes
    (``"image"``, ``"golden"``).
    """
    if isinstance(image, tuple):
        name, data = image
    elif isinstance(image, bytes | bytearray | memoryview):
        name, data = f"{role}{index or ''}", bytes(image)
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        name, data = path.name, path.read_bytes()
    elif hasattr(image, "read"):
        data = image.read()
        name = Path(str(getattr(image, "name", "") or f"{role}{index or ''}")).name
    else:
        raise TypeError(
            f"{role} must be a path, bytes, a binary file or a (filename, bytes) pair; "
            f"got {type(image).__name__}"
        )
    if not isinstance(data, bytes):
        raise TypeError(
            f"the {role} file must be opened in binary mode; read {type(data).__name__}"
        )
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return name, data, content_type


def _product_id(product: object) -> str:
    """Checks a product id before it goes into a URL; the service checks the rest (422).

    An empty id, ``.``/``..`` or one with a ``/`` would change which endpoint the URL names
    (the list, a parent path, another route) rather than reach the service as an id.
    """
    if not isinstance(product, str):
        raise TypeError(f"product must be a str; got {type(product).__name__}")
    if not product.strip() or product in (".", "..") or "/" in product:
        raise ValueError(
            f"product must be a non-empty id without '/' (e.g. 'A17-top'); got {product!r}"
        )
    return product


def _golden_path(product: str) -> str:
    return "/v1/golden-boards/" + urllib.parse.quote(_product_id(product), safe="")


def _recipe_path(product: str, *rest: str) -> str:
    return "/".join(["/v1/products", urllib.parse.quote(_product_id(product), safe=""),
                     "recipe", *rest])


#: The service's bounds on the records' queries and reviews, checked here too so that a wrong
#: value fails before anything is sent, with the value named.
MAX_PAGE_LIMIT = 500
MAX_TAGS = 32
MAX_META_CHARS = 128
MAX_CURSOR_CHARS = 512
MAX_REVIEW_OUTCOMES = 2000
MAX_REVIEW_MISSED = 500
EXPORT_FORMATS = ("csv", "jsonl")
STATS_BUCKETS = ("hour", "day")


def _inspection_path(inspection_id: object, *rest: str) -> str:
    """``/v1/inspections/{id}...``; an id that would name another endpoint is refused."""
    if not isinstance(inspection_id, str):
        raise TypeError(f"inspection_id must be a str; got {type(inspection_id).__name__}")
    if (not inspection_id.strip() or inspection_id in (".", "..", "export")
            or "/" in inspection_id or len(inspection_id) > MAX_META_CHARS):
        raise ValueError("inspection_id must be a record's id (e.g. "
                         f"'insp_01JD...', as predict returns it); got {inspection_id!r}")
    return "/".join(["/v1/inspections", urllib.parse.quote(inspection_id, safe=""), *rest])


def _time_param(name: str, value: datetime | str | None) -> str | None:
    """A time filter as the service takes it: ISO 8601 with a zone."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or an ISO 8601 string; got "
                        f"{type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (e.g. datetime.now(UTC)); got the "
                         f"naive {value.isoformat()}")
    return value.isoformat()


def _text_param(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str; got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_META_CHARS:
        raise ValueError(f"{name} must have 1 to {MAX_META_CHARS} characters; got "
                         f"{len(value)}: {value[:40]!r}")
    return value


def _filter_params(
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    verdict: Literal["pass", "fail"] | None = None,
    product: str | None = None,
    serial: str | None = None,
    line: str | None = None,
    station: str | None = None,
    reviewed: bool | None = None,
    tags: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The records' filters as query parameters (unset ones left out)."""
    if verdict not in (None, "pass", "fail"):
        raise ValueError(f"verdict must be 'pass' or 'fail'; got {verdict!r}")
    if reviewed is not None and not isinstance(reviewed, bool):
        raise TypeError(f"reviewed must be a bool; got {type(reviewed).__name__}")
    params: dict[str, Any] = {
        "since": _time_param("since", since), "until": _time_param("until", until),
        "verdict": verdict, "reviewed": None if reviewed is None else str(reviewed).lower(),
    }
    for name, value in (("product", product), ("serial", serial), ("line", line),
                        ("station", station)):
        params[name] = None if value is None else _text_param(name, value)
    if tags is not None:
        if isinstance(tags, str):
            tags = [tags]
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags; got {len(tags)}")
        params["tags"] = [_text_param("tag", tag) for tag in tags]
    return {k: v for k, v in params.items() if v is not None}


def _review_body(
    defects: Sequence[Mapping[str, Any]], missed: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A review's JSON body; the service checks each entry (422 naming it)."""
    for name, items, bound in (("defects", defects, MAX_REVIEW_OUTCOMES),
                               ("missed", missed, MAX_REVIEW_MISSED)):
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise TypeError(f"{name} must be a list of objects; got {type(items).__name__}")
        if len(items) > bound:
            raise ValueError(f"{name}: at most {bound} entries per review; got {len(items)}")
        for item in items:
            if not isinstance(item, Mapping):
                raise TypeError(f"{name}: each entry must be a mapping; got "
                                f"{type(item).__name__}: {item!r}")
    return {"defects": [dict(d) for d in defects], "missed": [dict(m) for m in missed]}


def _review_stored(response: httpx.Response) -> dict[str, Any]:
    """The stored review, with ``new_review``: whether it is a new one (201; 200: the current
    one was sent again)."""
    body = response.json()
    if not isinstance(body, dict):
        body = {"response": body}
    body.setdefault("new_review", response.status_code == 201)
    return body


def _recipe_stored(response: httpx.Response) -> dict[str, Any]:
    """The stored revision, with ``new_revision``: whether it is a new one (201; 200: the
    current one was sent again)."""
    body = response.json()
    if not isinstance(body, dict):
        body = {"response": body}
    body.setdefault("new_revision", response.status_code == 201)
    return body


def _revision_list(response: httpx.Response) -> list[dict[str, Any]]:
    """The revisions of ``GET .../recipe/revisions`` (``{"product", "count", "revisions"}``)."""
    body = response.json()
    if not (isinstance(body, dict) and isinstance(body.get("revisions"), list)):
        shape = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise InspectError(
            response.status_code, "unexpected_response",
            f"GET .../recipe/revisions: expected an object with a 'revisions' list; got {shape}",
        )
    return body["revisions"]


def _golden_list(response: httpx.Response) -> list[dict[str, Any]]:
    """The boards of ``GET /v1/golden-boards`` (``{"count", "boards": [...]}``).

    A bare list is accepted too, so that a proxy or an older service that flattens the
    answer still lists.
    """
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("boards"), list):
        body = body["boards"]
    if not isinstance(body, list):
        shape = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise InspectError(
            response.status_code, "unexpected_response",
            "GET /v1/golden-boards: expected an object with a 'boards' list (or a bare list); "
            f"got {shape}",
        )
    return body


def _stored(response: httpx.Response) -> dict[str, Any]:
    """The stored board's metadata, with ``replaced``: whether the id had a board (200/201)."""
    body = response.json() if response.content else {}
    if not isinstance(body, dict):
        body = {"response": body}
    body.setdefault("replaced", response.status_code == 200)
    return body


def _params(
    mask: str | None = None,
    threshold: float | None = None,
    min_area_px: int | None = None,
    pixels_per_mm: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    values = {
        "mask": mask,
        "threshold": threshold,
        "min_area_px": min_area_px,
        "pixels_per_mm": pixels_per_mm,
        **extra,
    }
    return {k: v for k, v in values.items() if v is not None}


def _error_from_response(response: httpx.Response) -> InspectError:
    """Builds the error from an API error response, falling back to the raw body."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
        error = body["error"]
        return InspectError(
            response.status_code, str(error["code"]), str(error["message"]), retry_after
        )
    except (ValueError, KeyError, TypeError):
        # Not our JSON: a proxy or load balancer answered. Keep a short, printable excerpt.
        text = " ".join(response.text.split())[:300] or response.reason_phrase
        return InspectError(response.status_code, f"http_{response.status_code}", text, retry_after)


def _transport_error(exc: httpx.TransportError, url: str) -> InspectError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    detail = str(exc) or type(exc).__name__
    return InspectError(None, code, f"{url}: {detail}")


@dataclass(frozen=True)
class RetryPolicy:
    """What to retry and how long to wait: one policy for both clients and the batch command.

    Attributes:
        retries: Retries after the first attempt.
        backoff: Base of the exponential backoff, in seconds.
        max_backoff: Longest single wait, in seconds (``Retry-After`` included).
        rng: Random source of the jitter.
    """

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0; got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(
                f"backoff and max_backoff must be >= 0; got {self.backoff} and {self.max_backoff}"
            )

    @staticmethod
    def retryable(status: int | None, code: str | None = None) -> bool:
        """Whether an error of this kind may go away by itself.

        Only a busy service (503, 429) or a lost connection (``status`` None) earns a retry:
        any other 4xx/5xx would come back the same, a 500 may be the image itself, and a
        code in :data:`PERMANENT_CODES` says waiting does not cure it.
        """
        return status in (None, *RETRY_STATUSES) and code not in PERMANENT_CODES

    def should_retry(self, error: InspectError, attempt: int) -> bool:
        """Whether ``error`` after ``attempt`` retries is worth another try."""
        return attempt < self.retries and self.retryable(error.status, error.code)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``.

        Full jitter: uniform in ``[0, min(max_backoff, backoff * 2**attempt)]``. A
        ``Retry-After`` from the service is a lower bound (it knows its own load better than
        we do), still capped at ``max_backoff`` so that a misconfigured proxy cannot park a
        line station for an hour.

        Args:
            attempt: 0 for the first retry, 1 for the second, ...
            retry_after: The service's ``Retry-After`` in seconds, if it sent one.
        """
        cap = min(self.max_backoff, self.backoff * (2 ** min(attempt, 32)))
        delay = self.rng.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff)


# --- request builders and parsers, shared by both clients ----------------------------------


def _predict_request(
    image: ImageInput,
    params: dict[str, Any],
    accept: str | None = None,
    *,
    golden: ImageInput | None = None,
    template: ImageInput | None = None,
    product: str | None = None,
    parse: Callable[[httpx.Response], Any] = _json,
) -> _Request:
    if golden is not None and template is not None:
        raise ValueError("pass the golden board as golden= (template= is its older name), "
                         "not both")
    golden = template if golden is None else golden
    if golden is not None and product is not None:
        # The service answers 422 too; failing here saves the upload.
        raise ValueError(
            "pass a golden board as golden= (uploaded) or product= (stored), not both; "
            f"got golden and product={product!r}"
        )
    files = [("file", _read_image(image))]
    if golden is not None:
        # "template" is the field's name on every server version ("golden" is newer).
        files.append(("template", _read_image(golden, role="golden")))
    if product is not None:
        params = {**params, "product": _product_id(product)}
    return _Request("POST", "/predict", params=params, files=files,
                    headers={"Accept": accept} if accept else None, parse=parse)


def _export_request(format: str, filters: Mapping[str, Any]) -> _Request:
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be 'csv' or 'jsonl'; got {format!r}")
    params = {**_filter_params(**filters), "format": format}
    return _Request("GET", "/v1/inspections/export", params=params, parse=_content)


def _is_ready(response: httpx.Response) -> bool:
    return response.status_code == 200


class _Client:
    """Settings and every API method, once; a subclass only sends (``_call``).

    Each method builds a :class:`_Request` and returns ``self._call(request)``: the value
    itself in :class:`InspectClient`, an awaitable of it in :class:`AsyncInspectClient`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        policy: RetryPolicy,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://; got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds; got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.policy = policy

    @property
    def retries(self) -> int:
        return self.policy.retries

    def retry_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (:meth:`RetryPolicy.delay`)."""
        return self.policy.delay(attempt, retry_after)

    def _http_args(self, timeout: float, max_connections: int) -> dict[str, Any]:
        """What the sync and the async httpx client are built with."""
        return {"base_url": self.base_url, "timeout": timeout, "headers": self._headers(),
                "limits": httpx.Limits(max_connections=max_connections)}

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": _USER_AGENT}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    def _call(self, request: _Request) -> Any:
        raise NotImplementedError

    def _settle(
        self, request: _Request, outcome: httpx.Response | InspectError, attempt: int
    ) -> tuple[bool, Any]:
        """What one attempt (a response, or the error of a lost connection) came to.

        Returns:
            ``(True, value)``: the method returns ``value``; ``(False, seconds)``: wait that
            long and try again.

        Raises:
            InspectError: The error that ends the request, once retries are spent or not
                warranted.
        """
        if request.probe:  # a yes/no question: one try, never an error
            return True, isinstance(outcome, httpx.Response) and request.parse(outcome)
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return True, request.parse(outcome)
            outcome = _error_from_response(outcome)
        if not self.policy.should_retry(outcome, attempt):
            raise outcome
        return False, self.policy.delay(attempt, outcome.retry_after)

    def _send_args(self, request: _Request) -> dict[str, Any]:
        return {"method": request.method, "url": request.path, "params": request.params,
                "files": request.files, "headers": request.headers, "json": request.json}

    # --- the API ---------------------------------------------------------------------------

    def predict(
        self,
        image: ImageInput,
        *,
        golden: ImageInput | None = None,
        template: ImageInput | None = None,
        product: str | None = None,
        mask: MaskMode = "none",
        threshold: float | None = None,
        min_area_px: int | None = None,
        pixels_per_mm: float | None = None,
        **params: Any,
    ) -> Any:
        """Inspects one board, alone or against its golden (defect-free) board.

        Args:
            image: A path, bytes, binary file or ``(filename, bytes)``.
            golden: The golden board, uploaded with this request (same forms as ``image``).
            template: The older name of ``golden``, still accepted.
            product: The id of a golden board stored with :meth:`put_golden_board`. At most
                one of ``golden`` and ``product``.
            mask: How the mask comes back: ``"png"`` (base64), ``"rle"`` or ``"none"``.
            threshold: Confidence cut in ``[0, 1]``; default: the service's.
            min_area_px: Smallest defect reported, in pixels; default: the service's.
            pixels_per_mm: Scan resolution for the mm² areas; default: the service's.
            **params: Other query parameters of ``/predict``, e.g. ``min_confidence=0.9``,
                ``serial="SER123"`` or ``unit_serials=["A1", "A2"]`` (one per board of a
                panel, by position).

        Returns:
            The API's JSON result (``image``, ``model`` with its ``mode``, ``defects``,
            ``summary``, and ``reference``: where the golden board came from and how it was
            aligned, or ``None`` without one; ``units``: a verdict per board of the panel,
            ``ignored``: the defects its recipe's zones set aside, and ``recipe``: the
            product recipe revision applied, or ``None``).

        Raises:
            InspectError: The service rejected the image or could not be reached; against a
                golden board also ``unknown_product`` (404), ``alignment_failed`` (422) and
                ``pair_model_unavailable`` (503).
            ValueError: Both ``golden`` and ``product``, or an unusable product id.
        """
        query = _params(mask, threshold, min_area_px, pixels_per_mm, **params)
        return self._call(_predict_request(image, query, golden=golden, template=template,
                                            product=product))

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        *,
        product: str | None = None,
        mask: MaskMode = "none",
        threshold: float | None = None,
        min_area_px: int | None = None,
        pixels_per_mm: float | None = None,
        **params: Any,
    ) -> Any:
        """Inspects several boards in one request (``POST /predict/batch``).

        A bad image does not fail the others: each item of ``results`` has its own
        ``status`` and either ``result`` or ``error``. With ``product``, every board is
        compared with that product's stored golden board.

        Returns:
            ``{"count", "succeeded", "failed", "results": [...]}`` in upload order.

        Raises:
            InspectError: The request as a whole failed (e.g. 413: too many files, 404:
                unknown product).
        """
        if not images:
            raise ValueError("predict_batch needs at least one image; got an empty sequence")
        query = _params(mask, threshold, min_area_px, pixels_per_mm, **params)
        if product is not None:
            query["product"] = _product_id(product)
        files = [("files", _read_image(img, i)) for i, img in enumerate(images)]
        return self._call(_Request("POST", "/predict/batch", params=query, files=files))

    def overlay(
        self,
        image: ImageInput,
        *,
        golden: ImageInput | None = None,
        template: ImageInput | None = None,
        product: str | None = None,
        **params: Any,
    ) -> Any:
        """PNG of the board with the defect masks, boxes, labels and a legend drawn on it."""
        return self._call(_predict_request(
            image, _params(render="overlay", **params), golden=golden, template=template,
            product=product, parse=_content,
        ))

    def mask_png(
        self,
        image: ImageInput,
        *,
        golden: ImageInput | None = None,
        template: ImageInput | None = None,
        product: str | None = None,
        **params: Any,
    ) -> Any:
        """The class-mask PNG (8-bit: 0 background, k the k-th class)."""
        return self._call(_predict_request(
            image, _params(**params), accept="image/png", golden=golden, template=template,
            product=product, parse=_content,
        ))

    def put_golden_board(self, product: str, image: ImageInput) -> Any:
        """Stores ``image`` as the golden board of ``product``, replacing any earlier one.

        Returns:
            The stored board's metadata as the service reports it (``product``, ``width``,
            ``height``, ``sha256``, ``created``), and ``replaced``: ``True`` when the product
            already had one (HTTP 200), ``False`` when it is new (201).

        Raises:
            InspectError: E.g. ``invalid_product`` (422) or an unreadable image (400/415).
        """
        files = [("file", _read_image(image, role="golden board"))]
        return self._call(_Request("PUT", _golden_path(product), files=files, parse=_stored))

    def list_golden_boards(self) -> Any:
        """The stored golden boards: ``[{product, width, height, sha256, created}, ...]``."""
        return self._call(_Request("GET", "/v1/golden-boards", parse=_golden_list))

    def get_golden_board(self, product: str) -> Any:
        """The metadata of ``product``'s golden board.

        Raises:
            InspectError: ``unknown_product`` (404) when none is stored.
        """
        return self._call(_Request("GET", _golden_path(product),
                                   headers={"Accept": "application/json"}))

    def golden_board_png(self, product: str) -> Any:
        """``product``'s golden board itself, as PNG bytes."""
        return self._call(_Request("GET", _golden_path(product),
                                   headers={"Accept": "image/png"}, parse=_content))

    def delete_golden_board(self, product: str) -> Any:
        """Deletes ``product``'s golden board (returns ``None``).

        Raises:
            InspectError: ``unknown_product`` (404) when none is stored.
        """
        return self._call(_Request("DELETE", _golden_path(product), parse=_nothing))

    def put_recipe(self, product: str, recipe: Mapping[str, Any]) -> Any:
        """Stores ``recipe`` (``units``, ``zones``, ``rules``) as the next revision of
        ``product``'s recipe, for its stored golden board.

        Returns:
            The revision (``product``, ``revision``, ``sha256``, ``created``, ``author``,
            ``golden_board``, ``units``, ``zones``, ``rules``), with ``new_revision``:
            ``False`` when the recipe was the current one already (no revision added).

        Raises:
            InspectError: ``invalid_request``/``invalid_recipe`` (422, naming the field),
                ``unknown_product`` (404: no golden board), ``forbidden`` (403: not admin).
        """
        if not isinstance(recipe, Mapping):
            raise TypeError(f"recipe must be a mapping (units, zones, rules); got "
                            f"{type(recipe).__name__}")
        return self._call(_Request("PUT", _recipe_path(product), json=dict(recipe),
                                   parse=_recipe_stored))

    def get_recipe(self, product: str, revision: int | None = None) -> Any:
        """The current revision of ``product``'s recipe, or revision ``revision``.

        Raises:
            InspectError: ``unknown_recipe`` (404).
        """
        if revision is None:
            return self._call(_Request("GET", _recipe_path(product)))
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValueError(f"revision must be an integer >= 1; got {revision!r}")
        return self._call(_Request("GET", _recipe_path(product, "revisions", str(revision))))

    def recipe_revisions(self, product: str) -> Any:
        """Every revision of ``product``'s recipe, oldest first:
        ``[{revision, sha256, created, author}, ...]``.

        Raises:
            InspectError: ``unknown_recipe`` (404).
        """
        return self._call(_Request("GET", _recipe_path(product, "revisions"),
                                   parse=_revision_list))

    def list_inspections(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        verdict: Literal["pass", "fail"] | None = None,
        product: str | None = None,
        serial: str | None = None,
        line: str | None = None,
        station: str | None = None,
        reviewed: bool | None = None,
        tags: Sequence[str] | None = None,
    ) -> Any:
        """One page of the inspection records, newest first (``GET /v1/inspections``).

        Args:
            limit: Records per page, 1 to :data:`MAX_PAGE_LIMIT`.
            cursor: The ``next_cursor`` of the previous page (with the same filters).
            since: Inspected at or after (an aware datetime or ISO 8601 with a zone).
            until: Inspected before.
            verdict: ``"pass"`` or ``"fail"``.
            product, serial, line, station: The board's metadata, each 1-128 characters.
            reviewed: ``True`` reviewed boards only, ``False`` the review queue.
            tags: Records carrying every one of these (at most :data:`MAX_TAGS`).

        Returns:
            ``{"items": [record, ...], "next_cursor"}``; ``next_cursor`` is ``None`` on the
            last page.

        Raises:
            InspectError: E.g. ``records_disabled`` (404), ``forbidden`` (403: no review role).
            ValueError: A value out of its bounds, named.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not (
                1 <= limit <= MAX_PAGE_LIMIT):
            raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}; got {limit!r}")
        params = _filter_params(since, until, verdict, product, serial, line, station,
                                reviewed, tags)
        params["limit"] = limit
        if cursor is not None:
            if not isinstance(cursor, str) or not 1 <= len(cursor) <= MAX_CURSOR_CHARS:
                raise ValueError(f"cursor must be the next_cursor of a page (1 to "
                                 f"{MAX_CURSOR_CHARS} characters); got {cursor!r:.60}")
            params["cursor"] = cursor
        return self._call(_Request("GET", "/v1/inspections", params=params))

    def get_inspection(self, inspection_id: str) -> Any:
        """One record (metadata, model, rules, verdict, defects) and its reviews, oldest first.

        Raises:
            InspectError: ``unknown_inspection`` (404).
        """
        return self._call(_Request("GET", _inspection_path(inspection_id)))

    def export_inspections(
        self, *, format: Literal["csv", "jsonl"] = "csv", **filters: Any
    ) -> Any:
        """Every matching record as CSV (a row per defect) or JSON lines, as bytes.

        Held in memory whole: for a large export, :meth:`InspectClient.export_inspections_to`
        writes it to a file as it arrives.

        Args:
            format: ``"csv"`` or ``"jsonl"``.
            **filters: Those of :meth:`list_inspections` (``since``, ``verdict``, ``tags``, ...).

        Raises:
            InspectError: ``forbidden`` (403: exporting needs an admin key).
        """
        return self._call(_export_request(format, filters))

    def review_inspection(
        self,
        inspection_id: str,
        defects: Sequence[Mapping[str, Any]] = (),
        missed: Sequence[Mapping[str, Any]] = (),
    ) -> Any:
        """Records an operator's review of an inspection
        (``POST /v1/inspections/{id}/review``).

        Sending the same review again changes nothing, so a retry is safe.

        Args:
            inspection_id: The record's id (``inspection_id`` of a ``predict`` result).
            defects: An outcome per reported defect: ``{"defect_id": 1, "outcome":
                "confirmed"}``, ``"false_call"``, or ``"reclassified"`` with ``"class"``; at
                most :data:`MAX_REVIEW_OUTCOMES`.
            missed: Defects the model missed: ``{"bbox": [x0, y0, x1, y1], "class": "spur"}``;
                at most :data:`MAX_REVIEW_MISSED`. Both empty: the board is reviewed clean.

        Returns:
            The stored review (``id``, ``inspection_id``, ``reviewer``, ``created_at``,
            ``digest``, ``body``), with ``new_review``: ``False`` when it was the current
            review already.

        Raises:
            InspectError: ``unknown_inspection`` (404); ``unknown_defect``, ``unknown_class``,
                ``box_outside_image`` (422); ``forbidden`` (403: no review role).
        """
        body = _review_body(defects, missed)
        return self._call(_Request("POST", _inspection_path(inspection_id, "review"),
                                   json=body, parse=_review_stored))

    def stats(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        bucket: Literal["hour", "day"] = "hour",
    ) -> Any:
        """Boards, fail rate and false-call rate per class in ``[since, until)``
        (``GET /v1/stats``; default: the last 24 hours).

        Returns:
            ``{since, until, bucket, boards, failed, fail_rate, reviewed, buckets: [{start,
            boards, failed, fail_rate}], classes: [{class, reviewed_calls, confirmed,
            false_calls, reclassified, missed, false_call_rate}]}``.

        Raises:
            InspectError: ``invalid_time`` or ``too_many_buckets`` (422).
        """
        if bucket not in STATS_BUCKETS:
            raise ValueError(f"bucket must be 'hour' or 'day'; got {bucket!r}")
        params = {"since": _time_param("since", since), "until": _time_param("until", until),
                  "bucket": bucket}
        return self._call(_Request("GET", "/v1/stats",
                                   params={k: v for k, v in params.items() if v is not None}))

    def health(self) -> Any:
        """Whether the service is ready now (``GET /readyz``); never raises, never retries."""
        return self._call(_Request("GET", "/readyz", parse=_is_ready, probe=True))

    def model_info(self) -> Any:
        """The served model's name, version, classes, input spec, resolution, ...

        Raises:
            InspectError: E.g. 401 for a missing or wrong API key.
        """
        return self._call(_Request("GET", "/v1/model"))


class InspectClient(_Client):
    """Synchronous client of the pcb-inspect REST API; safe to share between threads.

    Args:
        base_url: The service, e.g. ``"http://127.0.0.1:8000"``.
        api_key: Sent as ``X-API-Key`` when given (services with ``PCB_API_KEYS`` set).
        timeout: Seconds per attempt (connect, read and write each).
        retries: Retries after the first attempt, on 503, 429 and connection errors.
        backoff: Base of the exponential backoff, in seconds.
        max_backoff: Longest single wait, in seconds (``Retry-After`` included).
        sleep: The sleep function (tests replace it to observe and skip the waits).
        rng: Random source of the jitter.
        max_connections: Size of the connection pool (one per concurrent request).
        transport: An httpx transport, for tests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        *,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        policy = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        super().__init__(base_url, api_key, timeout, policy)
        self._sleep = sleep if sleep is not None else time.sleep
        self._http = httpx.Client(**self._http_args(timeout, max_connections), transport=transport)

    def __enter__(self) -> InspectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def _call(self, request: _Request) -> Any:
        attempt = 0
        while True:
            outcome: httpx.Response | InspectError
            try:
                outcome = self._http.request(**self._send_args(request))
            except httpx.TransportError as exc:
                outcome = _transport_error(exc, self.base_url + request.path)
            done, value = self._settle(request, outcome, attempt)
            if done:
                return value
            self._sleep(value)
            attempt += 1

    def export_inspections_to(
        self, out: IO[bytes], *, format: Literal["csv", "jsonl"] = "csv", **filters: Any
    ) -> int:
        """:meth:`export_inspections`, written to ``out`` as it arrives; the bytes written.

        Retried as any request until the first byte arrives; a connection lost after that
        raises (a retry would write the start again).
        """
        request = _export_request(format, filters)
        attempt = 0
        while True:
            written = 0
            outcome: httpx.Response | InspectError
            try:
                with self._http.stream(**self._send_args(request)) as response:
                    if response.is_success:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            written += len(chunk)
                        return written
                    response.read()
                    outcome = response
            except httpx.TransportError as exc:
                outcome = _transport_error(exc, self.base_url + request.path)
                if written:
                    raise InspectError(None, outcome.code, f"{outcome.message} (after "
                                       f"{written} bytes of the export)") from exc
            # Only an error gets here: _settle raises it or says how long to wait.
            _, delay = self._settle(request, outcome, attempt)
            self._sleep(delay)
            attempt += 1


class AsyncInspectClient(_Client):
    """The asyncio twin of :class:`InspectClient`: same arguments, same methods, awaited.

    ``sleep`` must be a coroutine function (default: :func:`asyncio.sleep`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        policy = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        super().__init__(base_url, api_key, timeout, policy)
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._http = httpx.AsyncClient(
            **self._http_args(timeout, max_connections), transport=transport
        )

    async def __aenter__(self) -> AsyncInspectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _call(self, request: _Request) -> Any:
        attempt = 0
        while True:
            outcome: httpx.Response | InspectError
            try:
                outcome = await self._http.request(**self._send_args(request))
            except httpx.TransportError as exc:
                outcome = _transport_error(exc, self.base_url + request.path)
            done, value = self._settle(request, outcome, attempt)
            if done:
                return value
            await self._sleep(value)
            attempt += 1
