"""The mesh CA's migration history: revision scripts in ``versions/``, version table
``garrison_mesh_version``. Run by ``garrison.store.migrations`` when the CA starts and by
``garrison db upgrade``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table

from garrison.mesh.ca import tables
from garrison.store.migrations import Schema


def _tables() -> list[Table]:
    return [tables.join_tokens, tables.certificates, tables.revocations, tables.quarantine, tables.state]


SCHEMA = Schema("mesh", Path(__file__).parent / "versions", _tables)
