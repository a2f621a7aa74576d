"""backup, callbacks and audit extras

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 19:05:00

Reserved in the plan of issue 4 so that parallel work lands in one linear history; filled by the work it names
(empty is a valid migration).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
