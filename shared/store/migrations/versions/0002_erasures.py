"""Erasures: users erased by DeleteUser, so that replayed old events stay erased.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("erased_at_us", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasures")
