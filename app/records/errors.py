"""Typed errors of the records package; each names the value received and what was expected.

Those a client's request meets are domain errors, answered by their code
(:data:`app.core.errors.DOMAIN_ERRORS`): :class:`UnknownInspectionError` (404), the
:class:`ReviewValidationError` family and :class:`InvalidCursorError` (422).
:class:`SchemaError` stops the service at startup.
"""

from __future__ import annotations

from typing import Any

from app.core.domain_errors import DomainError

__all__ = [
    "InvalidBoxError",
    "InvalidCursorError",
    "RecordsError",
    "ReviewValidationError",
    "SchemaError",
    "UnknownClassError",
    "UnknownDefectError",
    "UnknownInspectionError",
]


class RecordsError(Exception):
    """Base class of every error raised by :mod:`app.records`."""


class UnknownInspectionError(RecordsError, DomainError, LookupError):
    """No inspection has this id."""

    code = "unknown_inspection"

    def __init__(self, inspection_id: str) -> None:
        super().__init__(f"No inspection has id {inspection_id!r}; expected an inspection_id "
                         "from /predict or GET /v1/inspections.")
        self.inspection_id = inspection_id


class InvalidCursorError(RecordsError, DomainError, ValueError):
    """A pagination cursor that this store did not hand out (or that was altered)."""

    code = "invalid_cursor"

    def __init__(self, cursor: str, reason: str) -> None:
        super().__init__(
            f"invalid cursor {cursor!r}: {reason}; expected the next_cursor of a previous page"
        )
        self.cursor = cursor


class ReviewValidationError(RecordsError, DomainError, ValueError):
    """A review that does not fit its inspection.

    Attributes:
        loc: Where in the review body the bad value is, e.g. ``("defects", 2, "defect_id")``.
        value: The value received.
    """

    code = "invalid_review"

    def __init__(self, loc: tuple[str | int, ...], value: Any, message: str) -> None:
        where = ".".join(str(p) for p in loc)
        super().__init__(f"{where}: {message}")
        self.loc = loc
        self.value = value


class UnknownDefectError(ReviewValidationError):
    """A review outcome for a defect id that the inspection does not have."""

    code = "unknown_defect"


class UnknownClassError(ReviewValidationError):
    """A class that is not in the model's class list."""

    code = "unknown_class"


class InvalidBoxError(ReviewValidationError):
    """A missed-defect box outside the image, or with no area."""

    code = "box_outside_image"


class SchemaError(RecordsError, RuntimeError):
    """The database's schema revision is not the one this version of pcb-inspect expects."""

    def __init__(self, url: str, expected: str, found: str | None, hint: str) -> None:
        found_text = "no schema (empty database)" if found is None else f"revision {found!r}"
        super().__init__(
            f"database {url} has {found_text}, but this version of pcb-inspect expects "
            f"revision {expected!r}; {hint}"
        )
        self.url = url
        self.expected = expected
        self.found = found
