"""Batches the MQTT consumer parked after its retries (``ingest_dead_letters``), and the
SMTP password file is no longer a setting (issue 12, item 13): an admin could point
it at any file. Stored ``notifications`` overrides lose ``smtp.password_file``, so that
the rest of their ``smtp`` (host, port, user) still validates; the password now comes
from the cloud's own configuration (cloud/notify/config.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 22:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_settings = sa.table('cloud_settings', sa.column('key', sa.String),
                     sa.column('value', sa.JSON().with_variant(JSONB(), 'postgresql')))


def upgrade() -> None:
    op.create_table(
        'ingest_dead_letters',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('gateway_id', sa.String(length=64), nullable=False),
        sa.Column('first_seq', sa.BigInteger(), nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        sa.Column('records', sa.Integer(), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=False),
        sa.Column('error', sa.String(length=1000), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_dead_letters')),
        sa.UniqueConstraint('gateway_id', 'first_seq', 'last_seq',
                            name=op.f('uq_ingest_dead_letters_gateway_id_first_seq_last_seq')),
    )
    _drop_password_file()


def _drop_password_file() -> None:
    bind = op.get_bind()
    row = bind.execute(sa.select(_settings.c.value)
                       .where(_settings.c.key == 'notifications')).first()
    if row is None or not isinstance(row.value, dict):
        return
    smtp = row.value.get('smtp')
    if not isinstance(smtp, dict) or 'password_file' not in smtp:
        return
    value = {**row.value, 'smtp': {k: v for k, v in smtp.items() if k != 'password_file'}}
    bind.execute(sa.update(_settings).where(_settings.c.key == 'notifications')
                 .values(value=value))


def downgrade() -> None:
    op.drop_table('ingest_dead_letters')
    # The path is gone; the older version reads no password until one is set again.
    pass
