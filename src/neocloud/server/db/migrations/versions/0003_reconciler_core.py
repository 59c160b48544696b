"""reconciler core: allocations owned by their workload, status events, preemption field

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:30:00.000000

Allocations get one foreign key per owner kind (``replica_id``, ``job_worker_id``,
``pod_id``; deleted with their owner) and a check that exactly the one of their ``kind``
is set. Allocations whose owner no longer exists are removed first (they held capacity
that nothing used). Events get ``status`` (the status a status event entered); replicas,
jobs and pods get ``preempting_at`` in place of the ``preempting ...`` message prefix.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import neocloud.server.db.tables

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OWNERS = (("replica", "replica_id", "replicas"), ("job", "job_worker_id", "job_workers"),
          ("pod", "pod_id", "pods"))
ONE_OWNER = (
    "(kind = 'replica' AND replica_id IS NOT NULL AND replica_id = owner_id"
    " AND job_worker_id IS NULL AND pod_id IS NULL)"
    " OR (kind = 'job' AND job_worker_id IS NOT NULL AND job_worker_id = owner_id"
    " AND replica_id IS NULL AND pod_id IS NULL)"
    " OR (kind = 'pod' AND pod_id IS NOT NULL AND pod_id = owner_id"
    " AND replica_id IS NULL AND job_worker_id IS NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table('allocations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replica_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('job_worker_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('pod_id', sa.String(length=32), nullable=True))
    kinds = ", ".join(f"'{k}'" for k, _, _ in OWNERS)
    op.execute(f"DELETE FROM allocations WHERE kind NOT IN ({kinds})")
    for kind, column, table in OWNERS:
        op.execute(f"DELETE FROM allocations WHERE kind = '{kind}' "
                   f"AND owner_id NOT IN (SELECT id FROM {table})")
        op.execute(f"UPDATE allocations SET {column} = owner_id WHERE kind = '{kind}'")
    with op.batch_alter_table('allocations', schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f('fk_allocations_pod_id_pods'), 'pods', ['pod_id'], ['id'], ondelete='CASCADE')
        batch_op.create_foreign_key(batch_op.f('fk_allocations_replica_id_replicas'), 'replicas', ['replica_id'], ['id'], ondelete='CASCADE')
        batch_op.create_foreign_key(batch_op.f('fk_allocations_job_worker_id_job_workers'), 'job_workers', ['job_worker_id'], ['id'], ondelete='CASCADE')
        batch_op.create_check_constraint('one_owner', ONE_OWNER)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preempting_at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('pods', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preempting_at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preempting_at', neocloud.server.db.tables.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.drop_column('preempting_at')

    with op.batch_alter_table('pods', schema=None) as batch_op:
        batch_op.drop_column('preempting_at')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('preempting_at')

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('status')

    with op.batch_alter_table('allocations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_allocations_one_owner'), type_='check')
        batch_op.drop_constraint(batch_op.f('fk_allocations_job_worker_id_job_workers'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_allocations_replica_id_replicas'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_allocations_pod_id_pods'), type_='foreignkey')
        batch_op.drop_column('pod_id')
        batch_op.drop_column('job_worker_id')
        batch_op.drop_column('replica_id')
