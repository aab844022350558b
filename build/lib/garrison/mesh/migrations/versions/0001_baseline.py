"""Baseline: the mesh CA's join tokens, issued certificates and revoked identities.

Revision ID: mesh_0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mesh_0001"
down_revision = None
branch_labels = None
depends_on = None


def baseline_metadata() -> sa.MetaData:
    """The tables of this revision, frozen here (later revisions change the live ones, not these)."""
    metadata = sa.MetaData()
    sa.Table(
        "mesh_join_tokens",
        metadata,
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("spiffe_id", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    sa.Table(
        "mesh_certificates",
        metadata,
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("spiffe_id", sa.String(255), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("obtained_by", sa.String(16), nullable=False),
        sa.Index("mesh_certificates_by_identity", "spiffe_id", "not_after"),
    )
    sa.Table(
        "mesh_revocations",
        metadata,
        sa.Column("spiffe_id", sa.String(255), primary_key=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
    )
    return metadata


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)
