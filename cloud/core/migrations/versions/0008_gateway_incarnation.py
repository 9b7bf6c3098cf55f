"""The gateway's buffer incarnation: which numbering of its seqs the cloud accepts (a
gateway that lost its buffer must not have its new records acked as duplicates).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 22:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.add_column(sa.Column('incarnation', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.drop_column('incarnation')
