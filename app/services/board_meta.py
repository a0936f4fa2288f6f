"""Board metadata (``serial``, ``line``, ``station``, ``product``, ``tags``): what an inspection
record is found by later, sent as query parameters or multipart form fields.

``product`` is also the golden board a board is compared with (``?product=``): the form field
means the same as the query parameter, so one name never means two things.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from app.core.ids import check_product
from app.records import META_MAX_CHARS as MAX_CHARS
from app.records import META_MAX_TAGS as MAX_TAGS
from app.services.errors import InvalidMetadataError
from app.services.recipes import MAX_UNITS

#: The multipart text fields read as metadata.
META_FIELDS: tuple[str, ...] = ("serial", "line", "station", "product", "tags", "unit_serials")
#: Most unit serials per panel: a recipe's most units.
MAX_UNIT_SERIALS = MAX_UNITS


@dataclasses.dataclass(frozen=True)
class BoardMeta:
    """A board's metadata; ``None`` (or no tags): not given."""

    serial: str | None = None
    line: str | None = None
    station: str | None = None
    product: str | None = None
    tags: tuple[str, ...] = ()
    #: One serial per board of a panel, by position (else the units are named from
    #: ``serial``); not recorded as such, but as each unit's identifier.
    unit_serials: tuple[str, ...] = ()


def _invalid(message: str) -> InvalidMetadataError:
    return InvalidMetadataError(message)


def check_text(name: str, value: str) -> str:
    """One metadata value: 1 to :data:`MAX_CHARS` characters, no control characters
    (PostgreSQL refuses a NUL in text, which would leave the record unstorable). 422
    ``invalid_metadata``."""
    if not 1 <= len(value) <= MAX_CHARS:
        raise _invalid(f"{name}: expected 1 to {MAX_CHARS} characters, received "
                       f"{len(value)} ({value[:40]!r}{'...' if len(value) > 40 else ''})")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _invalid(f"{name}: control characters are not accepted, received {value!r}")
    return value


def split_tags(values: Sequence[str]) -> tuple[str, ...]:
    """Tags from repeated values, each possibly comma-separated; blanks dropped, duplicates
    once, in the order given. 422 past 32 tags or for a bad tag."""
    tags: dict[str, None] = {}
    for value in values:
        for tag in value.split(","):
            if tag.strip():
                tags[check_text("tags", tag.strip())] = None
    if len(tags) > MAX_TAGS:
        raise _invalid(f"tags: at most {MAX_TAGS} tags per board, received {len(tags)}")
    return tuple(tags)


def split_unit_serials(values: Sequence[str]) -> tuple[str, ...]:
    """Unit serials from repeated values, each possibly comma-separated, in the order given
    (by position). 422 past :data:`MAX_UNIT_SERIALS`, for a bad or a repeated serial."""
    serials = [check_text("unit_serials", s.strip())
               for value in values for s in value.split(",")]
    if len(serials) > MAX_UNIT_SERIALS:
        raise _invalid(f"unit_serials: at most {MAX_UNIT_SERIALS} per panel, received "
                       f"{len(serials)}")
    if len(set(serials)) != len(serials):
        twice = sorted({s for s in serials if serials.count(s) > 1})
        raise _invalid(f"unit_serials: {twice} given twice; expected one serial per unit")
    return tuple(serials)


def query_meta(serial: str | None = None, line: str | None = None,
               station: str | None = None, product: str | None = None,
               tags: Sequence[str] | None = None,
               unit_serials: Sequence[str] | None = None) -> BoardMeta:
    """The metadata of a request's query, checked (but ``product``: see below)."""
    def checked(name: str, value: str | None) -> str | None:
        return None if value is None else check_text(name, value)

    return BoardMeta(
        serial=checked("serial", serial), line=checked("line", line),
        # The product is checked by the product-id rule (app.core.ids) where it is used: the
        # inspection service answers 422 invalid_product for it, not invalid_metadata.
        station=checked("station", station), product=product,
        tags=split_tags(tags or ()), unit_serials=split_unit_serials(unit_serials or ()),
    )


def _form_value(name: str, value: str) -> str:
    """A form field's value: the product by the product-id rule (422 ``invalid_product``),
    the others as metadata text."""
    if name == "product":
        return check_product(value, "form field product: ")
    return check_text(name, value)


def with_form(meta: BoardMeta, form: Mapping[str, list[str]]) -> BoardMeta:
    """``meta`` (from the query) completed with the multipart form's metadata fields.

    A field given in both must have the same value: which one was meant cannot be guessed.
    Tags from both are kept.
    """
    values: dict[str, str | None] = {}
    for name in ("serial", "line", "station", "product"):
        given = form.get(name, [])
        if len(given) > 1:
            raise _invalid(f"{name}: one value per request, received {len(given)} form fields")
        query = getattr(meta, name)
        value = _form_value(name, given[0]) if given else None
        if value is not None and query is not None and value != query:
            raise _invalid(f"{name}: the query says {query!r} and the form field {value!r}; "
                           "send it once")
        values[name] = query if value is None else value
    tags = split_tags([*meta.tags, *form.get("tags", [])])
    unit_serials = meta.unit_serials
    if form.get("unit_serials"):
        from_form = split_unit_serials(form["unit_serials"])
        if unit_serials and from_form != unit_serials:
            raise _invalid("unit_serials: the query and the form fields differ; send them once")
        unit_serials = from_form
    return BoardMeta(**values, tags=tags, unit_serials=unit_serials)
