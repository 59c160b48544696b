"""fleet indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 16:50:00.000000

Indexes on two filters that run all the time on a large fleet: ``replicas.status`` (the
"who is preempting" query before every placement, the settled-fleet pass, node loss) and
``events.object_id`` (the event deduplication of every pending reason, a deployment's
events). Without them each of these reads every row of its table.
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replicas_status'), ['status'], unique=False)
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_object_id'), ['object_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_object_id'))
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replicas_status'))
