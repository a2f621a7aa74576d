"""legal bases, processing activities, consent before the person exists

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tb_legal_bases',
    sa.Column('brief', sa.String(length=65), nullable=False),
    sa.Column('module', sa.String(length=64), nullable=False),
    sa.Column('shortdesc', sa.String(length=256), nullable=False),
    sa.Column('fulldesc', sa.Text(), nullable=False),
    sa.Column('basistype', sa.String(length=32), nullable=False),
    sa.Column('requiredmsg', sa.Text(), nullable=False),
    sa.Column('usercontrol', sa.Boolean(), nullable=False),
    sa.Column('requiredflag', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('brief', name=op.f('pk_tb_legal_bases'))
    )
    op.create_table('tb_processing_activities',
    sa.Column('activity', sa.String(length=65), nullable=False),
    sa.Column('title', sa.String(length=256), nullable=False),
    sa.Column('script', sa.Text(), nullable=False),
    sa.Column('fulldesc', sa.Text(), nullable=False),
    sa.Column('applicableto', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('activity', name=op.f('pk_tb_processing_activities'))
    )
    op.create_table('tb_activity_bases',
    sa.Column('activity', sa.String(length=65), nullable=False),
    sa.Column('brief', sa.String(length=65), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['activity'], ['tb_processing_activities.activity'],
                            name=op.f('fk_tb_activity_bases_activity_tb_processing_activities')),
    sa.ForeignKeyConstraint(['brief'], ['tb_legal_bases.brief'],
                            name=op.f('fk_tb_activity_bases_brief_tb_legal_bases')),
    sa.PrimaryKeyConstraint('activity', 'brief', name=op.f('pk_tb_activity_bases'))
    )
    op.create_table('tb_pending_agreements',
    sa.Column('index_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('brief', sa.String(length=65), nullable=False),
    sa.Column('index_mode', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('given_at', sa.BigInteger(), nullable=True),
    sa.Column('expires_at', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=True),
    sa.Column('reference', sa.String(length=128), nullable=True),
    sa.Column('modified_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('index_hash', 'brief', name=op.f('pk_tb_pending_agreements'))
    )
    # A brief may be 65 characters (^[a-z][a-z0-9-]{1,64}$); lastmodifiedby is new.
    with op.batch_alter_table('tb_agreements', schema=None) as batch_op:
        batch_op.add_column(sa.Column('modified_by', sa.String(length=64), nullable=True))
        batch_op.alter_column('brief', existing_type=sa.String(length=64), type_=sa.String(length=65),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('tb_agreements', schema=None) as batch_op:
        batch_op.alter_column('brief', existing_type=sa.String(length=65), type_=sa.String(length=64),
                              existing_nullable=False)
        batch_op.drop_column('modified_by')
    op.drop_table('tb_pending_agreements')
    op.drop_table('tb_activity_bases')
    op.drop_table('tb_processing_activities')
    op.drop_table('tb_legal_bases')
