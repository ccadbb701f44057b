"""experiment table; job.experiment_id, variant, seed, child_index, stack_key

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_experiment_idempotency_key")),
    )
    op.create_index("ix_experiment_created_at_id", "experiment", ["created_at", "id"])
    fk = "fk_job_experiment_id_experiment"
    ctx = op.get_context()
    if ctx.dialect.name == "sqlite" and not ctx.as_sql:
        # SQLite cannot ALTER in a named constraint: batch mode rebuilds the table (online).
        with op.batch_alter_table("job") as batch:
            batch.add_column(sa.Column("experiment_id", sa.String(length=32), nullable=True))
            batch.create_foreign_key(fk, "experiment", ["experiment_id"], ["id"],
                                     ondelete="CASCADE")
    elif ctx.dialect.name == "sqlite":
        # Offline SQL cannot reflect the table to rebuild it; an inline REFERENCES clause on a
        # new nullable column is what SQLite's ALTER TABLE takes.
        op.execute(f"ALTER TABLE job ADD COLUMN experiment_id VARCHAR(32) CONSTRAINT {fk} "
                   "REFERENCES experiment (id) ON DELETE CASCADE")
    else:
        op.add_column("job", sa.Column("experiment_id", sa.String(length=32), nullable=True))
        op.create_foreign_key(fk, "job", "experiment", ["experiment_id"], ["id"],
                              ondelete="CASCADE")
    op.add_column("job", sa.Column("variant", sa.String(length=255), nullable=True))
    op.add_column("job", sa.Column("seed", sa.Integer(), nullable=True))
    op.add_column("job", sa.Column("child_index", sa.Integer(), nullable=True))
    op.add_column("job", sa.Column("stack_key", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_job_experiment_id"), "job", ["experiment_id"])
    op.create_index("ix_job_stack_key_status", "job", ["stack_key", "status"])

def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_stack_key_status")
        batch.drop_index(op.f("ix_job_experiment_id"))
        batch.drop_constraint(op.f("fk_job_experiment_id_experiment"), type_="foreignkey")
        for column in ("stack_key", "child_index", "seed", "variant", "experiment_id"):
            batch.drop_column(column)
    op.drop_index("ix_experiment_created_at_id", table_name="experiment")
    op.drop_table("experiment")
