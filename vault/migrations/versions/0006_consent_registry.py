"""legal bases, processing activities, consent before the person exists

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:05:00

Reserved in the plan of issue 4 so that parallel work lands in one linear history; filled by the work it names
(empty is a valid migration).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
