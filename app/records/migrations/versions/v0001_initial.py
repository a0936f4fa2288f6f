"""Inspection records and their reviews.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from app.records.models: a migration must create
# the same tables forever, whatever the models later become.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("serial", sa.String(128), nullable=True),
        sa.Column("line", sa.String(128), nullable=True),
        sa.Column("station", sa.String(128), nullable=True),
        sa.Column("product", sa.String(128), nullable=True),
        sa.Column("tags", _JSON, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_bytes", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("image_path", sa.String(255), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_mode", sa.String(32), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("rules", _JSON, nullable=False),
        sa.Column("verdict", sa.String(4), nullable=False),
        sa.Column("defect_count", sa.Integer(), nullable=False),
        sa.Column("defects", _JSON, nullable=False),
        sa.Column("reference", _JSON, nullable=True),
        sa.Column("reviewed", sa.Boolean(), nullable=False),
        sa.Column("review_id", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_inspections"),
        sa.CheckConstraint("verdict IN ('pass', 'fail')", name="ck_inspections_verdict"),
        sa.CheckConstraint("defect_count >= 0", name="ck_inspections_defect_count"),
    )
    op.create_index("ix_inspections_created_at_id", "inspections", ["created_at", "id"])
    # Each filter's index ends in the page order (created_at, id): a filtered page is one
    # range scan that stops after `limit` rows.
    for column in ("serial", "line", "station", "product", "verdict"):
        op.create_index(f"ix_inspections_{column}_created_at_id", "inspections",
                        [column, "created_at", "id"])
    op.create_index("ix_inspections_reviewed_verdict_created_at_id", "inspections",
                    ["reviewed", "verdict", "created_at", "id"])
    for column in ("image_sha256", "image_path"):
        op.create_index(f"ix_inspections_{column}", "inspections", [column])

    op.create_table(
        "reviews",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("inspection_id", sa.String(40), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("body", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"],
                                name="fk_reviews_inspection_id_inspections", ondelete="CASCADE"),
    )
    op.create_index("ix_reviews_inspection_id_created_at", "reviews",
                    ["inspection_id", "created_at"])


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("inspections")
