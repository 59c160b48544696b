"""deployment revisions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:43:31.111757

Deployments get ``revision`` (raised by every spec change; a stale one in an update is a
409), ``drain_timeout_s`` and ``cold_start_timeout_s`` (seconds), ``autoscaling`` (the
stored ``AutoscalingConfig``; NULL for a fixed count), ``max_surge`` / ``max_unavailable``
(bounds of a rollout) and ``pending_code`` (the stable code of ``pending_reason``);
``deployment_revisions`` keeps each accepted spec; replicas get ``stop_requested_at``
(when their drain started).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import neocloud.server.db.tables


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deployment_revisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment_id', sa.String(length=32), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_deployment_revisions_deployment_id_deployments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_revisions')),
    sa.UniqueConstraint('deployment_id', 'revision', name=op.f('uq_deployment_revisions_deployment_id'))
    )
    with op.batch_alter_table('deployment_revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_revisions_deployment_id'), ['deployment_id'], unique=False)

    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_code', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('revision', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('drain_timeout_s', sa.Float(), server_default='120', nullable=False))
        batch_op.add_column(sa.Column('cold_start_timeout_s', sa.Float(), server_default='120', nullable=False))
        batch_op.add_column(sa.Column('autoscaling', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('max_surge', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('max_unavailable', sa.Integer(), server_default='0', nullable=False))

    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stop_requested_at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.drop_column('stop_requested_at')

    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('max_unavailable')
        batch_op.drop_column('max_surge')
        batch_op.drop_column('autoscaling')
        batch_op.drop_column('cold_start_timeout_s')
        batch_op.drop_column('drain_timeout_s')
        batch_op.drop_column('revision')
        batch_op.drop_column('pending_code')

    with op.batch_alter_table('deployment_revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_revisions_deployment_id'))

    op.drop_table('deployment_revisions')
