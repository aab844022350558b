"""The identity provider's migration history: revision scripts in ``versions/``, version table
``garrison_identity_version``. Run by ``garrison.store.migrations`` (see its docstring for why each
component has a history of its own) at start and by ``garrison db upgrade``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table

from garrison.identity import tables
from garrison.store.migrations import Schema


def _tables() -> list[Table]:
    return [value for value in vars(tables).values() if isinstance(value, Table)]


SCHEMA = Schema("identity", Path(__file__).parent / "versions", _tables)
