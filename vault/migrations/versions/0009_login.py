"""passwordless login: codes, rate limits, person sessions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tb_login_codes',
    sa.Column('identity', sa.LargeBinary(length=32), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('code_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('identity', name=op.f('pk_tb_login_codes'))
    )
    op.create_table('tb_rate_limits',
    sa.Column('key', sa.LargeBinary(length=32), nullable=False),
    sa.Column('window_start', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_tb_rate_limits'))
    )
    op.create_table('tb_person_sessions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('grant_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('last_seen', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tb_person_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_tb_person_sessions_token_hash'))
    )
    with op.batch_alter_table('tb_person_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_person_sessions_person_id'), ['person_id'], unique=False)


def downgrade() -> None:
    op.drop_table('tb_person_sessions')
    op.drop_table('tb_rate_limits')
    op.drop_table('tb_login_codes')
