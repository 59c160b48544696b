"""deployment engines

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:54:12.336096

Deployments get ``engine`` (``builtin`` or ``vllm``, ``models.deployments.Engine``);
``service`` may be NULL (a ``vllm`` deployment runs a model, not a service class). A
downgrade turns ``vllm`` deployments into the built-in ``chat`` service of the same model,
the nearest thing the older schema can hold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('engine', sa.String(length=16),
                                      server_default='builtin', nullable=False))
        batch_op.alter_column('service', existing_type=sa.VARCHAR(length=512), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE deployments SET service = 'chat' WHERE service IS NULL")
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.alter_column('service', existing_type=sa.VARCHAR(length=512), nullable=False)
        batch_op.drop_column('engine')
