"""backup, callbacks and audit extras

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 19:05:00

tb_outbox.failed_at: when the callback worker gave up on an event (callbacks.max_attempts), so a failed event is
told apart from a pending one whatever the config says later.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tb_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_at', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tb_outbox', schema=None) as batch_op:
        batch_op.drop_column('failed_at')
