"""campaigns.updated_at: added nullable, backfilled from created_at, then NOT NULL.

A data migration in three steps so that existing rows get a meaningful value (their creation
time) instead of the time of the migration.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("updated_at", sa.DateTime(timezone=True),
                                         nullable=True))
    op.execute("UPDATE campaigns SET updated_at = created_at WHERE updated_at IS NULL")
    op.alter_column("campaigns", "updated_at", nullable=False,
                    server_default=sa.text("now()"))


def downgrade() -> None:
    op.drop_column("campaigns", "updated_at")
