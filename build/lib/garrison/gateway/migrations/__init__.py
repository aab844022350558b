"""The gateway's migration history (the API-key table): revision scripts in ``versions/``, version table
``garrison_gateway_version``. Run by ``garrison.store.migrations`` at start (when a route needs API
keys), by ``garrison apikey`` and by ``garrison db upgrade``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table

from garrison.gateway.auth import apikeys
from garrison.store.migrations import Schema


def _tables() -> list[Table]:
    return [apikeys.api_keys]


SCHEMA = Schema("gateway", Path(__file__).parent / "versions", _tables)
