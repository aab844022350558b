"""Roles: named sets of scopes given to clients and users.

- The same ``identity_roles`` table backs both: a client or user only receives the scopes its roles
  allow (``RoleStore.scopes_for``); a role that does not exist grants nothing.
- A client's own role, ``client:<name>`` (a name no user-made role can take), is written by clients.py.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.tables import roles as roles_table
from garrison.store.db import dialect_insert

_ROLE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # as role names in clients.py, within the column
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 §3.3 scope-token


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    scopes: tuple[str, ...]
    description: str
    created_at: datetime
    updated_at: datetime


def check_roles(roles: Iterable[str]) -> list[str]:
    if isinstance(roles, str):
        raise ValueError("roles must be a list of role names")
    names = list(dict.fromkeys(roles))
    for name in names:
        if not isinstance(name, str) or not _ROLE.fullmatch(name):
            raise ValueError(f"invalid role name {name!r}: 1-64 of a-z 0-9 . _ - (first a letter or digit)")
    return names


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RoleStore:
    """Roles in ``identity_roles``: a name, the scopes it allows, a description."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, name: str, scopes: Iterable[str], description: str = "") -> Role:
        """Create the role or replace its scopes and description."""
        (name,) = check_roles([name])
        clean_scopes = _check_scopes(scopes)
        if len(description) > 200:
            raise ValueError("a role description has at most 200 characters")
        now = _utcnow()
        async with self.engine.begin() as connection:
            insert = dialect_insert(connection.dialect.name)(roles_table).values(
                name=name, scopes=clean_scopes, description=description, created_at=now, updated_at=now
            )
            await connection.execute(
                insert.on_conflict_do_update(
                    index_elements=[roles_table.c.name],
                    set_={"scopes": clean_scopes, "description": description, "updated_at": now},
                )
            )
            row = (await connection.execute(select(roles_table).where(roles_table.c.name == name))).one()
        return _role(row)

    async def delete(self, name: str) -> bool:
        """Remove the role; users and clients that still name it receive nothing from it."""
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(roles_table).where(roles_table.c.name == name))
        return bool(result.rowcount)

    async def list(self) -> builtins.list[Role]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(roles_table).order_by(roles_table.c.name))
            return [_role(row) for row in rows]

    async def scopes_for(self, roles: Iterable[str]) -> frozenset[str]:
        """Every scope any of ``roles`` allows; unknown roles allow none."""
        names = [name for name in dict.fromkeys(roles) if isinstance(name, str)]
        if not names:
            return frozenset()
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(roles_table.c.scopes).where(roles_table.c.name.in_(names)))
            return frozenset(scope for (scopes,) in rows for scope in scopes)


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    if isinstance(scopes, str):
        raise ValueError("scopes must be a list of strings")
    names = list(dict.fromkeys(scopes))
    for scope in names:
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise ValueError(
                f"invalid scope {scope!r}: printable ASCII without spaces, quotes or backslashes"
            )
    return names


def _role(row: Row[Any]) -> Role:
    return Role(
        name=row.name,
        scopes=tuple(row.scopes),
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
