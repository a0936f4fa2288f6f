"""Inspection records: every verdict stored, reviewed, counted and exported.

- :class:`RecordStore`: inspections and reviews in SQLite (default) or PostgreSQL.
- :class:`Recorder`: records without ever failing or stalling an inspection (spool + replay).
- :class:`ImageStore`: the board images kept by policy, with retention.
- :mod:`app.records.migrate`: Alembic ``upgrade``, ``current_revision``, ``check_schema``.
- :func:`main_db`: ``pcb-inspect db upgrade|current``.

No TensorFlow here.
"""

from app.records.cli import main_db, resolve_url
from app.records.db import default_url, display_url, make_engine
from app.records.errors import (
    InvalidBoxError,
    InvalidCursorError,
    RecordsError,
    ReviewValidationError,
    SchemaError,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.records.export import CSV_COLUMNS, csv_lines, jsonl_lines
from app.records.images import ImageStore, KeepPolicy, RetentionResult, StoredImage
from app.records.migrate import check_schema, current_revision, head_revision, upgrade
from app.records.recorder import Recorder, RecordResult, ReplayResult
from app.records.schemas import (
    MAX_REVIEW_BYTES,
    MAX_REVIEW_MISSED,
    MAX_REVIEW_OUTCOMES,
    META_MAX_CHARS,
    META_MAX_TAGS,
    ClassStats,
    DefectOutcome,
    GoldenBoardRef,
    IgnoredRecord,
    Inspection,
    InspectionFilter,
    InspectionRecord,
    MissedDefect,
    Page,
    RecipeRef,
    RecordedRules,
    Review,
    ReviewBody,
    ReviewedInspection,
    ReviewRequest,
    Stats,
    TimeBucket,
    UnitRecord,
)
from app.records.store import RecordStore

__all__ = [
    "CSV_COLUMNS",
    "MAX_REVIEW_BYTES",
    "MAX_REVIEW_MISSED",
    "MAX_REVIEW_OUTCOMES",
    "META_MAX_CHARS",
    "META_MAX_TAGS",
    "ClassStats",
    "DefectOutcome",
    "GoldenBoardRef",
    "IgnoredRecord",
    "ImageStore",
    "Inspection",
    "InspectionFilter",
    "InspectionRecord",
    "InvalidBoxError",
    "InvalidCursorError",
    "KeepPolicy",
    "MissedDefect",
    "Page",
    "RecipeRef",
    "RecordedRules",
    "RecordResult",
    "RecordStore",
    "Recorder",
    "RecordsError",
    "ReplayResult",
    "RetentionResult",
    "Review",
    "ReviewBody",
    "ReviewRequest",
    "ReviewValidationError",
    "ReviewedInspection",
    "SchemaError",
    "Stats",
    "StoredImage",
    "TimeBucket",
    "UnitRecord",
    "UnknownClassError",
    "UnknownDefectError",
    "UnknownInspectionError",
    "check_schema",
    "csv_lines",
    "current_revision",
    "default_url",
    "display_url",
    "head_revision",
    "jsonl_lines",
    "main_db",
    "make_engine",
    "resolve_url",
    "upgrade",
]
