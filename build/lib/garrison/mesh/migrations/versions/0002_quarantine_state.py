"""Quarantined services, and the version of the state the CA publishes on ``/v1/state``.

Revision ID: mesh_0002
Revises: mesh_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mesh_0002"
down_revision = "mesh_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database that `create_all` made (tests; the adoption of a pre-migration database) may have them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "mesh_quarantine" not in existing:
        _quarantine()
    if "mesh_state" not in existing:
        _state()


def _quarantine() -> None:
    op.create_table(
        "mesh_quarantine",
        sa.Column("service", sa.String(63), primary_key=True),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
    )


def _state() -> None:
    op.create_table(
        "mesh_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("bundle_digest", sa.String(64), nullable=False),
    )
