"""audit log

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import neocloud.server.db.tables


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=True),
    sa.Column('target_workspace_id', sa.String(length=32), nullable=True),
    sa.Column('token_name', sa.String(length=63), nullable=True),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('action', sa.String(length=63), nullable=False),
    sa.Column('target', sa.String(length=1024), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=63), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_target_workspace_id'), ['target_workspace_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_workspace_id'), ['workspace_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_audit_log_target_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))

    op.drop_table('audit_log')
