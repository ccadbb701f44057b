"""api_key table; owner on dataset, job and experiment; idempotency keys unique per owner

Rows that exist already belong to "anonymous" (what auth-off requests own).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
ANONYMOUS = "anonymous"


def _owner() -> sa.Column[str]:
    return sa.Column("owner", sa.String(length=64), server_default=ANONYMOUS, nullable=False)


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_key_key_hash")),
    )
    op.add_column("dataset", _owner())
    op.create_index("ix_dataset_owner_created_at_id", "dataset", ["owner", "created_at", "id"])
    ctx = op.get_context()
    for table in ("job", "experiment"):
        old_uq, new_uq = f"uq_{table}_idempotency_key", f"uq_{table}_owner_idempotency_key"
        if ctx.dialect.name == "sqlite" and ctx.as_sql:
            # Offline SQL cannot rebuild a SQLite table (it would need to reflect it): the
            # per-owner index is added, the old table-wide constraint stays (stricter, never
            # looser). Online upgrades rebuild the table below.
            op.add_column(table, _owner())
            op.create_index(new_uq, table, ["owner", "idempotency_key"], unique=True)
        elif ctx.dialect.name == "sqlite":
            with op.batch_alter_table(table) as batch:
                batch.add_column(_owner())
                batch.drop_constraint(old_uq, type_="unique")
                batch.create_unique_constraint(new_uq, ["owner", "idempotency_key"])
        else:
            op.add_column(table, _owner())
            op.drop_constraint(old_uq, table, type_="unique")
            op.create_unique_constraint(new_uq, table, ["owner", "idempotency_key"])
        op.create_index(f"ix_{table}_owner_created_at_id", table, ["owner", "created_at", "id"])
    op.create_index("ix_job_owner_status", "job", ["owner", "status"])


def downgrade() -> None:
    op.drop_index("ix_job_owner_status", table_name="job")
    for table in ("experiment", "job"):
        op.drop_index(f"ix_{table}_owner_created_at_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_owner_idempotency_key", type_="unique")
            batch.drop_column("owner")
            batch.create_unique_constraint(f"uq_{table}_idempotency_key", ["idempotency_key"])
    op.drop_index("ix_dataset_owner_created_at_id", table_name="dataset")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("owner")
    op.drop_table("api_key")
