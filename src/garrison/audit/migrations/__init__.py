"""The audit index's migration history: revision scripts in ``versions/``, version table
``garrison_audit_version``. Run by ``garrison.store.migrations`` when the collector starts and by
``garrison db upgrade``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table

from garrison.audit import tables
from garrison.store.migrations import Schema


def _tables() -> list[Table]:
    return [tables.events]


SCHEMA = Schema("audit", Path(__file__).parent / "versions", _tables)
