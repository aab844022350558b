"""Administrative account locks (the identity admin API's ``/lockouts``).

Revision ID: identity_0002
Revises: identity_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database that `create_all` made (tests; the adoption of a pre-migration database) may have it.
    if "identity_account_locks" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table(
        "identity_account_locks",
        sa.Column("username", sa.String(200), primary_key=True),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
    )
    op.create_index("ix_identity_account_locks_until", "identity_account_locks", ["until"])


def downgrade() -> None:
    op.drop_index("ix_identity_account_locks_until", "identity_account_locks")
    op.drop_table("identity_account_locks")
