"""Erasures keep a digest of the user id, not the id: the table that makes an erasure stick must
not itself keep the erased shopper's identifier. Existing rows are converted in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from shared.store.models import user_digest

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures_by_digest",
        sa.Column("user_digest", sa.String(64), primary_key=True),
        sa.Column("erased_at_us", sa.BigInteger(), nullable=False),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT user_id, erased_at_us FROM erasures")).all()
    if rows:
        conn.execute(sa.text("INSERT INTO erasures_by_digest (user_digest, erased_at_us) VALUES (:d, :t)"),
                     [{"d": user_digest(row.user_id), "t": row.erased_at_us} for row in rows])
    op.drop_table("erasures")
    op.rename_table("erasures_by_digest", "erasures")


def downgrade() -> None:
    raise NotImplementedError("erased user ids are not kept, so they cannot be restored")
