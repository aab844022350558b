"""The search index's one table: a row per logged event, the columns ``garrison audit search`` filters on.

The log (audit/log.py) is the record; this table is a derived copy for search, rebuilt from the log
(the index catches up from its highest ``seq`` at every start), so it needs no fsync of its own and
can be dropped and rebuilt. ``seq`` is the event's position in the log; ``event`` the exact logged
line. Each filter has an index that ends in ``time`` so a filtered search reads its newest rows first.
"""

from __future__ import annotations

import sqlalchemy as sa

from garrison.store.db import metadata

__all__ = ["events"]

TEXT = 1024  # the schema's MAX_TEXT

events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(TEXT), nullable=False),
    sa.Column("time", sa.Double, nullable=False),  # epoch seconds
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
