"""Anomalies people can work: titles as message codes with parameters (``title`` stays the
English rendering, the only text of older rows), folded repeats (``occurrences``,
``last_seen_ts``), and limit excursions waiting for their minimum duration
(``limit_excursions``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 22:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('title_code', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column(
            'title_params', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'),
            nullable=True))
        batch_op.add_column(sa.Column('occurrences', sa.Integer(), server_default='1',
                                      nullable=False))
        batch_op.add_column(sa.Column('last_seen_ts', sa.BigInteger(), nullable=True))

    op.create_table('limit_excursions',
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('start_ts', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('lo', sa.Float(), nullable=True),
    sa.Column('hi', sa.Float(), nullable=True),
    sa.Column('anomaly_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['anomaly_id'], ['anomalies.id'],
                            name=op.f('fk_limit_excursions_anomaly_id_anomalies')),
    sa.ForeignKeyConstraint(['gateway_id'], ['gateways.id'],
                            name=op.f('fk_limit_excursions_gateway_id_gateways')),
    sa.PrimaryKeyConstraint('gateway_id', 'seq', name=op.f('pk_limit_excursions'))
    )
    with op.batch_alter_table('limit_excursions', schema=None) as batch_op:
        batch_op.create_index('ix_limit_excursions_gateway_id_device_tag',
                              ['gateway_id', 'device', 'tag'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('limit_excursions', schema=None) as batch_op:
        batch_op.drop_index('ix_limit_excursions_gateway_id_device_tag')
    op.drop_table('limit_excursions')
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.drop_column('last_seen_ts')
        batch_op.drop_column('occurrences')
        batch_op.drop_column('title_params')
        batch_op.drop_column('title_code')
