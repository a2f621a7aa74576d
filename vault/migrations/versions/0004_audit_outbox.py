"""audit trail and callback outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 19:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('tb_audit',
    sa.Column('seq', _SEQ, autoincrement=True, nullable=False),
    sa.Column('atoken', sa.String(length=36), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=True),
    sa.Column('route', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('data_key_id', sa.String(length=36), nullable=True),
    sa.Column('detail', sa.LargeBinary(), nullable=True),
    sa.Column('prev_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('row_hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_tb_audit')),
    sa.UniqueConstraint('atoken', name=op.f('uq_tb_audit_atoken'))
    )
    with op.batch_alter_table('tb_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_audit_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tb_audit_person_id'), ['person_id'], unique=False)

    op.create_table('tb_outbox',
    sa.Column('seq', _SEQ, autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('delivered_at', sa.BigInteger(), nullable=True),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_tb_outbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_tb_outbox_event_id'))
    )
    with op.batch_alter_table('tb_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_outbox_next_attempt_at'), ['next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_table('tb_outbox')
    op.drop_table('tb_audit')
