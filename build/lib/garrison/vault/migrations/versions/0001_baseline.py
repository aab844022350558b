"""Baseline: the vault's barrier-sealed entries and its core (seal configuration, sealed keys).

Revision ID: vault_0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "vault_0001"
down_revision = None
branch_labels = None
depends_on = None


def baseline_metadata() -> sa.MetaData:
    """The tables of this revision, frozen here (later revisions change the live ones, not these)."""
    metadata = sa.MetaData()
    sa.Table(
        "vault_entries",
        metadata,
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "vault_core",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    return metadata


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)
