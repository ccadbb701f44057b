"""study table; experiment.study_id (ON DELETE CASCADE) and experiment.claim

Experiments that exist already belong to no study (both columns null).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
ANONYMOUS = "anonymous"
FK = "fk_experiment_study_id_study"


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=64), server_default=ANONYMOUS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
        sa.UniqueConstraint("owner", "idempotency_key",
                            name=op.f("uq_study_owner_idempotency_key")),
    )
    op.create_index("ix_study_owner_created_at_id", "study", ["owner", "created_at", "id"])
    ctx = op.get_context()
    if ctx.dialect.name == "sqlite" and not ctx.as_sql:
        # SQLite cannot ALTER in a named constraint: batch mode rebuilds the table (online).
        with op.batch_alter_table("experiment") as batch:
            batch.add_column(sa.Column("study_id", sa.String(length=32), nullable=True))
            batch.create_foreign_key(FK, "study", ["study_id"], ["id"], ondelete="CASCADE")
    elif ctx.dialect.name == "sqlite":
        # Offline SQL cannot reflect the table to rebuild it; an inline REFERENCES clause on a
        # new nullable column is what SQLite's ALTER TABLE takes.
        op.execute(f"ALTER TABLE experiment ADD COLUMN study_id VARCHAR(32) CONSTRAINT {FK} "
                   "REFERENCES study (id) ON DELETE CASCADE")
    else:
        op.add_column("experiment",
                      sa.Column("study_id", sa.String(length=32), nullable=True))
        op.create_foreign_key(FK, "experiment", "study", ["study_id"], ["id"],
                              ondelete="CASCADE")
    op.add_column("experiment", sa.Column("claim", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_experiment_study_id"), "experiment", ["study_id"])


def downgrade() -> None:
    # Batch mode: SQLite copies the table where it cannot drop a column or constraint.
    with op.batch_alter_table("experiment") as batch:
        batch.drop_index(op.f("ix_experiment_study_id"))
        batch.drop_constraint(FK, type_="foreignkey")
        batch.drop_column("claim")
        batch.drop_column("study_id")
    op.drop_index("ix_study_owner_created_at_id", table_name="study")
    op.drop_table("study")
