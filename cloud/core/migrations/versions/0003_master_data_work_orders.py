"""Master data and work orders: machines, products, materials, BOMs, routings, work orders
with their operations and components (copied at release).

Material quantities are integers in micro-units (``*_u`` = value x 1,000,000); see
cloud/core/models.py.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('materials',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('lead_time_days', sa.Integer(), server_default='0', nullable=False),
    sa.Column('safety_stock_manual_u', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_materials')),
    sa.UniqueConstraint('code', name=op.f('uq_materials_code'))
    )
    op.create_table('products',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('unit', sa.String(length=16), server_default='pcs', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products')),
    sa.UniqueConstraint('code', name=op.f('uq_products_code'))
    )
    op.create_table('boms',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_boms_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_boms')),
    sa.UniqueConstraint('product_id', 'version', name=op.f('uq_boms_product_id_version'))
    )
    op.create_table('machines',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('work_center', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['gateway_id'], ['gateways.id'], name=op.f('fk_machines_gateway_id_gateways')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_machines')),
    sa.UniqueConstraint('gateway_id', 'device', name=op.f('uq_machines_gateway_id_device'))
    )
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.create_index('ix_machines_work_center', ['work_center'], unique=False)

    op.create_table('routings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_routings_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_routings')),
    sa.UniqueConstraint('product_id', 'version', name=op.f('uq_routings_product_id_version'))
    )
    op.create_table('work_orders',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('due', sa.DateTime(timezone=True), nullable=True),
    sa.Column('customer', sa.String(length=128), nullable=True),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('completion_mode', sa.String(length=8), server_default='auto', nullable=False),
    sa.Column('bom_version', sa.Integer(), nullable=True),
    sa.Column('routing_version', sa.Integer(), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_by', sa.String(length=96), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("completion_mode IN ('auto', 'confirm')", name=op.f('ck_work_orders_completion_mode')),
    sa.CheckConstraint("status IN ('draft', 'released', 'in_progress', 'completed', 'closed', 'cancelled')", name=op.f('ck_work_orders_status')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_work_orders_quantity_positive')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_work_orders_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_work_orders')),
    sa.UniqueConstraint('number', name=op.f('uq_work_orders_number'))
    )
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.create_index('ix_work_orders_customer', ['customer'], unique=False)
        batch_op.create_index('ix_work_orders_due', ['due'], unique=False)
        batch_op.create_index('ix_work_orders_product_id', ['product_id'], unique=False)
        batch_op.create_index('ix_work_orders_status_due', ['status', 'due'], unique=False)

    op.create_table('bom_lines',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('bom_id', sa.Integer(), nullable=False),
    sa.Column('material_id', sa.Integer(), nullable=False),
    sa.Column('qty_per_unit_u', sa.BigInteger(), nullable=False),
    sa.Column('scrap_factor', sa.Float(), server_default='0', nullable=False),
    sa.Column('backflush_scrap', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['bom_id'], ['boms.id'], name=op.f('fk_bom_lines_bom_id_boms')),
    sa.ForeignKeyConstraint(['material_id'], ['materials.id'], name=op.f('fk_bom_lines_material_id_materials')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bom_lines'))
    )
    with op.batch_alter_table('bom_lines', schema=None) as batch_op:
        batch_op.create_index('ix_bom_lines_bom_id', ['bom_id'], unique=False)

    op.create_table('routing_ops',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('routing_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('machine_id', sa.Integer(), nullable=True),
    sa.Column('work_center', sa.String(length=64), nullable=True),
    sa.Column('ideal_cycle_ms', sa.Integer(), nullable=True),
    sa.Column('cavities', sa.Integer(), server_default='1', nullable=False),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], name=op.f('fk_routing_ops_machine_id_machines')),
    sa.ForeignKeyConstraint(['routing_id'], ['routings.id'], name=op.f('fk_routing_ops_routing_id_routings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_routing_ops')),
    sa.UniqueConstraint('routing_id', 'step', name=op.f('uq_routing_ops_routing_id_step'))
    )
    op.create_table('wo_components',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('work_order_id', sa.Integer(), nullable=False),
    sa.Column('material_id', sa.Integer(), nullable=False),
    sa.Column('qty_per_unit_u', sa.BigInteger(), nullable=False),
    sa.Column('scrap_factor', sa.Float(), server_default='0', nullable=False),
    sa.Column('backflush_scrap', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['material_id'], ['materials.id'], name=op.f('fk_wo_components_material_id_materials')),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_wo_components_work_order_id_work_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wo_components'))
    )
    with op.batch_alter_table('wo_components', schema=None) as batch_op:
        batch_op.create_index('ix_wo_components_material_id', ['material_id'], unique=False)
        batch_op.create_index('ix_wo_components_work_order_id', ['work_order_id'], unique=False)

    op.create_table('wo_operations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('work_order_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('machine_id', sa.Integer(), nullable=True),
    sa.Column('work_center', sa.String(length=64), nullable=True),
    sa.Column('ideal_cycle_ms', sa.Integer(), nullable=True),
    sa.Column('cavities', sa.Integer(), server_default='1', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('good', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('scrap', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_by', sa.String(length=96), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'in_progress', 'completed', 'on_hold')", name=op.f('ck_wo_operations_status')),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], name=op.f('fk_wo_operations_machine_id_machines')),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_wo_operations_work_order_id_work_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wo_operations')),
    sa.UniqueConstraint('work_order_id', 'step', name=op.f('uq_wo_operations_work_order_id_step'))
    )
    with op.batch_alter_table('wo_operations', schema=None) as batch_op:
        batch_op.create_index('ix_wo_operations_machine_id_status', ['machine_id', 'status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('wo_operations', schema=None) as batch_op:
        batch_op.drop_index('ix_wo_operations_machine_id_status')

    op.drop_table('wo_operations')
    with op.batch_alter_table('wo_components', schema=None) as batch_op:
        batch_op.drop_index('ix_wo_components_work_order_id')
        batch_op.drop_index('ix_wo_components_material_id')

    op.drop_table('wo_components')
    op.drop_table('routing_ops')
    with op.batch_alter_table('bom_lines', schema=None) as batch_op:
        batch_op.drop_index('ix_bom_lines_bom_id')

    op.drop_table('bom_lines')
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.drop_index('ix_work_orders_status_due')
        batch_op.drop_index('ix_work_orders_product_id')
        batch_op.drop_index('ix_work_orders_due')
        batch_op.drop_index('ix_work_orders_customer')

    op.drop_table('work_orders')
    op.drop_table('routings')
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_index('ix_machines_work_center')

    op.drop_table('machines')
    op.drop_table('boms')
    op.drop_table('products')
    op.drop_table('materials')
