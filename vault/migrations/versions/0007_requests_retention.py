"""DPO requests and retention

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tb_requests',
    sa.Column('rtoken', sa.String(length=36), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('app', sa.String(length=64), nullable=True),
    sa.Column('brief', sa.String(length=64), nullable=True),
    sa.Column('data_key_id', sa.String(length=36), nullable=False),
    sa.Column('change', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.Column('decided_at', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('rtoken', name=op.f('pk_tb_requests'))
    )
    with op.batch_alter_table('tb_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_requests_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tb_requests_person_id'), ['person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tb_requests_status'), ['status'], unique=False)

    op.create_table('tb_expirations',
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('exptoken', sa.String(length=36), nullable=False),
    sa.Column('exptime', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('person_id', name=op.f('pk_tb_expirations')),
    sa.UniqueConstraint('exptoken', name=op.f('uq_tb_expirations_exptoken'))
    )
    with op.batch_alter_table('tb_expirations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_expirations_exptime'), ['exptime'], unique=False)


def downgrade() -> None:
    op.drop_table('tb_expirations')
    op.drop_table('tb_requests')
