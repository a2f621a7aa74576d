"""app records, sessions and shared records

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tb_app_records',
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('app', sa.String(length=32), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['tb_people.id'], name=op.f('fk_tb_app_records_person_id_tb_people')),
    sa.PrimaryKeyConstraint('person_id', 'app', name=op.f('pk_tb_app_records'))
    )
    with op.batch_alter_table('tb_app_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_app_records_app'), ['app'], unique=False)

    op.create_table('tb_sessions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=True),
    sa.Column('data_key_id', sa.String(length=36), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['data_key_id'], ['tb_data_keys.id'],
                            name=op.f('fk_tb_sessions_data_key_id_tb_data_keys')),
    sa.ForeignKeyConstraint(['person_id'], ['tb_people.id'], name=op.f('fk_tb_sessions_person_id_tb_people')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tb_sessions'))
    )
    with op.batch_alter_table('tb_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tb_sessions_person_id'), ['person_id'], unique=False)

    op.create_table('tb_shared_records',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('person_id', sa.String(length=36), nullable=False),
    sa.Column('fields', sa.Text(), nullable=False),
    sa.Column('app', sa.String(length=32), nullable=True),
    sa.Column('session_id', sa.String(length=36), nullable=True),
    sa.Column('partner', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['tb_people.id'],
                            name=op.f('fk_tb_shared_records_person_id_tb_people')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tb_shared_records'))
    )
    with op.batch_alter_table('tb_shared_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tb_shared_records_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tb_shared_records_person_id'), ['person_id'], unique=False)


def downgrade() -> None:
    op.drop_table('tb_shared_records')
    op.drop_table('tb_sessions')
    op.drop_table('tb_app_records')
