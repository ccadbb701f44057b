"""job.release_requested: a shutting-down worker asks its running job to stop and requeue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite can, with a constant default): no table copy, and offline
    # SQL renders without a database to reflect.
    op.add_column("job", sa.Column("release_requested", sa.Boolean(),
                                   server_default=sa.false(), nullable=False))


def downgrade() -> None:
    # Batch mode: SQLite copies the table where it cannot drop a column in place.
    with op.batch_alter_table("job") as batch:
        batch.drop_column("release_requested")
