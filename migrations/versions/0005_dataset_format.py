"""dataset.format ("csv" | "npz") and dataset.input_shape (one row's shape, a JSON list)

Rows that exist already are CSV uploads: format "csv", input_shape [n_features].

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs with constant defaults (no table copy; offline SQL renders without a
    # database), then the real shapes. PostgreSQL drops input_shape's placeholder default;
    # SQLite cannot without copying the table, and bnlab always writes the column.
    op.add_column("dataset", sa.Column("format", sa.String(length=8), server_default="csv",
                                       nullable=False))
    op.add_column("dataset", sa.Column("input_shape", sa.JSON(), server_default=sa.text("'[]'"),
                                       nullable=False))
    if op.get_context().dialect.name == "postgresql":
        op.execute("UPDATE dataset SET input_shape = json_build_array(n_features)")
        op.alter_column("dataset", "input_shape", server_default=None)
    else:
        op.execute("UPDATE dataset SET input_shape = '[' || n_features || ']'")


def downgrade() -> None:
    # Batch mode: SQLite copies the table where it cannot drop a column in place.
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("input_shape")
        batch.drop_column("format")
