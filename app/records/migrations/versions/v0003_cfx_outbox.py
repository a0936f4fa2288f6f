"""The CFX outbox: messages written with their inspection or review, published later.

Revision ID: 0003_cfx_outbox
Revises: 0002_recipes
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_cfx_outbox"
down_revision: str | None = "0002_recipes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cfx_outbox",
        # INTEGER PRIMARY KEY on SQLite (the rowid, assigned in insert order), BIGSERIAL on
        # PostgreSQL.
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("unique_id", sa.String(36), nullable=False),
        sa.Column("message_name", sa.String(128), nullable=False),
        sa.Column("inspection_id", sa.String(40), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_at", _TIME, nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_cfx_outbox"),
        sa.UniqueConstraint("unique_id", name="uq_cfx_outbox_unique_id"),
    )
    op.create_index("ix_cfx_outbox_sent_at_seq", "cfx_outbox", ["sent_at", "seq"])


def downgrade() -> None:
    op.drop_table("cfx_outbox")
