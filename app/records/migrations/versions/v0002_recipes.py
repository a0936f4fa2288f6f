"""Product recipes: the recipe revision a board was judged by, its units and ignored defects.

Revision ID: 0002_recipes
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002_recipes"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_COLUMNS = ("recipe", "units", "ignored")


def upgrade() -> None:
    # Nullable: the records made before recipes have none of these, and adding a nullable
    # column rewrites no row on either database.
    with op.batch_alter_table("inspections") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
