"""request usage ledger

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 18:30:00.000000

``request_usage``: one row per gateway request from before it is forwarded until its
tokens are billed, so a control plane killed mid-request or right after answering loses
no usage (``server.metering.ledger``). ``usage_records.failed_requests``: requests that
failed, counted apart from the ones served.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'request_usage',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=32), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('token_id', sa.String(length=32), nullable=False),
        sa.Column('deployment_id', sa.String(length=32), nullable=False),
        sa.Column('replica_id', sa.String(length=32), nullable=True),
        sa.Column('path', sa.String(length=512), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('latency_s', sa.Float(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('seen_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_request_usage')),
    )
    with op.batch_alter_table('request_usage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_usage_state'), ['state'], unique=False)
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_requests', sa.Integer(), server_default='0',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_column('failed_requests')
    with op.batch_alter_table('request_usage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_request_usage_state'))
    op.drop_table('request_usage')
