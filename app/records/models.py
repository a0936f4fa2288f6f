"""The tables, as SQLAlchemy 2 typed ORM classes.

The migrations in ``migrations/versions`` create these tables explicitly (a migration must not
change when the models do); ``tests/app/records`` checks that both agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "InspectionRow", "JSONType", "OutboxRow", "ReviewRow", "UTCDateTime"]

#: JSONB on PostgreSQL (compact, comparable), JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: Constraint and index names fixed by convention, so the migration and the models name them
#: the same on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: The columns the query filters on by equality (each has its own index).
FILTER_COLUMNS = ("serial", "line", "station", "product", "verdict")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, on every database.

    SQLite has no time zones: values are stored as naive UTC text of fixed width, whose text
    order is time order, which the keyset pagination relies on. PostgreSQL stores timestamptz.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"expected a timezone-aware datetime, received naive {value!r}")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InspectionRow(Base):
    """One inspected board."""

    __tablename__ = "inspections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    serial: Mapped[str | None] = mapped_column(String(128))
    line: Mapped[str | None] = mapped_column(String(128))
    station: Mapped[str | None] = mapped_column(String(128))
    product: Mapped[str | None] = mapped_column(String(128))
    tags: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    image_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    image_path: Mapped[str | None] = mapped_column(String(255), index=True)
    model_name: Mapped[str] = mapped_column(String(128), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    model_mode: Mapped[str] = mapped_column(String(32), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    rules: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    verdict: Mapped[str] = mapped_column(String(4), nullable=False)
    defect_count: Mapped[int] = mapped_column(Integer, nullable=False)
    defects: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    units: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    ignored: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    reviewed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    #: The current review (the latest distinct one); no foreign key, which would make the two
    #: tables reference each other and need deferred constraints to insert.
    review_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        # The keyset pagination's order: newest first, id breaking ties.
        Index("ix_inspections_created_at_id", "created_at", "id"),
        # One per filter, each ending in the page order: a filtered page is one range scan
        # that stops after `limit` rows, instead of fetching every match and sorting it.
        *(Index(f"ix_inspections_{c}_created_at_id", c, "created_at", "id")
          for c in FILTER_COLUMNS),
        # The review queue: failed boards not yet reviewed, oldest or newest first.
        Index("ix_inspections_reviewed_verdict_created_at_id", "reviewed", "verdict",
              "created_at", "id"),
        CheckConstraint("verdict IN ('pass', 'fail')", name="verdict"),
        CheckConstraint("defect_count >= 0", name="defect_count"),
    )


class ReviewRow(Base):
    """One distinct review of an inspection; the history is every row of an inspection."""

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    inspection_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("inspections.id", ondelete="CASCADE"), nullable=False
    )
    reviewer: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    #: sha256 of the canonical body (:meth:`ReviewBody.digest`).
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)

    __table_args__ = (Index("ix_reviews_inspection_id_created_at", "inspection_id", "created_at"),)


class OutboxRow(Base):
    """One CFX message to publish (the transactional outbox of :mod:`app.records.outbox`),
    written in the transaction of the inspection or review it reports."""

    __tablename__ = "cfx_outbox"

    #: The publishing order: assigned in commit order (see app.records.outbox).
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True, autoincrement=True)
    #: The envelope's UniqueID: the same through every retry, for consumers to deduplicate.
    unique_id: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    message_name: Mapped[str] = mapped_column(String(128), nullable=False)
    inspection_id: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    #: The envelope's JSON text, sent byte for byte.
    body: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(300))

    __table_args__ = (
        # The publisher's scan: unsent rows in order.
        Index("ix_cfx_outbox_sent_at_seq", "sent_at", "seq"),
    )
