"""Baseline: the search index of the audit log (one row per logged event).

Revision ID: audit_0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None

TEXT = 1024


def baseline_metadata() -> sa.MetaData:
    """The tables of this revision, frozen here (later revisions change the live ones, not these)."""
    metadata = sa.MetaData()
    sa.Table(
        "audit_events",
        metadata,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(TEXT), nullable=False),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("component", sa.String(32), nullable=False),
        sa.Column("type", sa.String(TEXT), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("actor_subject", sa.String(TEXT)),
        sa.Column("actor_client", sa.String(TEXT)),
        sa.Column("actor_service", sa.String(TEXT)),
        sa.Column("actor_ip", sa.String(TEXT)),
        sa.Column("target", sa.String(TEXT)),
        sa.Column("trace_id", sa.String(TEXT)),
        sa.Column("request_id", sa.String(TEXT)),
        sa.Column("event", sa.Text, nullable=False),
        sa.Index("audit_events_time", "time"),
        sa.Index("audit_events_type_time", "type", "time"),
        sa.Index("audit_events_component_time", "component", "time"),
        sa.Index("audit_events_outcome_time", "outcome", "time"),
        sa.Index("audit_events_subject_time", "actor_subject", "time"),
        sa.Index("audit_events_client_time", "actor_client", "time"),
        sa.Index("audit_events_service_time", "actor_service", "time"),
        sa.Index("audit_events_ip_time", "actor_ip", "time"),
        sa.Index("audit_events_trace_time", "trace_id", "time"),
        sa.Index("audit_events_request", "request_id"),
    )
    return metadata


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)
