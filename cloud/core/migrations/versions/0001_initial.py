"""Gateways and the append-only raw records.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# NOTE for later revisions: SQLite batch mode rebuilds a table by copy-and-rename, which
# drops its triggers; a revision that batch-alters `records` must recreate them.
SQLITE_TRIGGERS = [
    "CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records "
    "BEGIN SELECT RAISE(ABORT, 'records are append-only'); END",
    "CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records "
    "BEGIN SELECT RAISE(ABORT, 'records are append-only'); END",
]
PG_TRIGGERS = [
    "CREATE FUNCTION records_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'records are append-only'; END $$",
    "CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records "
    "FOR EACH ROW EXECUTE FUNCTION records_append_only()",
]


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("clock_skew_ms", sa.BigInteger(), nullable=True),
        sa.Column("clock_skew_exact", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_gateways"),
        sa.UniqueConstraint("token_hash", name="uq_gateways_token_hash"),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["gateway_id"], ["gateways.id"],
                                name="fk_records_gateway_id_gateways"),
        sa.PrimaryKeyConstraint("id", name="pk_records"),
        sa.UniqueConstraint("gateway_id", "seq", name="uq_records_gateway_id_seq"),
    )
    op.create_index("ix_records_gateway_kind_seq", "records", ["gateway_id", "kind", "seq"])
    op.create_index("ix_records_gateway_device_kind_seq", "records",
                    ["gateway_id", "device", "kind", "seq"])
    triggers = PG_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for ddl in triggers:
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS records_append_only ON records")
        op.execute("DROP FUNCTION IF EXISTS records_append_only()")
    op.drop_index("ix_records_gateway_device_kind_seq", table_name="records")
    op.drop_index("ix_records_gateway_kind_seq", table_name="records")
    op.drop_table("records")  # SQLite drops its triggers with the table
    op.drop_table("gateways")
