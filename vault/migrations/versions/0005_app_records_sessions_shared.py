"""app records, sessions and shared records

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:05:00

Reserved in the plan of issue 4 so that parallel work lands in one linear history; filled by the work it names
(empty is a valid migration).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
