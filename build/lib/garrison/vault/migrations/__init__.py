"""The vault's migration history: revision scripts in ``versions/``, version table
``garrison_vault_version``. Run by ``garrison.store.migrations`` when the vault starts and by
``garrison db upgrade``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table

from garrison.store.migrations import Schema
from garrison.vault import tables


def _tables() -> list[Table]:
    return [tables.entries, tables.core]


SCHEMA = Schema("vault", Path(__file__).parent / "versions", _tables)
