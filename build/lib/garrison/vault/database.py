"""The database secrets engine at ``database/``: connections, roles, and short-lived credentials.

A connection (``database/config/<name>``) says how to reach one PostgreSQL database as a user allowed
to create roles; a role (``database/roles/<name>``) says which connection and which statements make a
credential. ``database/creds/<role>`` makes a new login role with a random password and ``VALID UNTIL``
its lease's expiry, and hands it out with a lease (leases.py): when the lease ends, by expiry or by
revocation, the role is dropped. Giving each service a role template that grants only its own database
or schema is what isolates services from each other's tables.

Both kinds of entry live in the barrier storage (encrypted, as Vault keeps them); the connection's
password is kept there and never answered on a read, as in Vault. A lease keeps the role's name and
statements at issue time, not its password, so revocation works even if the role is changed meanwhile.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from garrison.telemetry import logging as log
from garrison.vault.database_pg import (
    DEFAULT_RENEW,
    PLUGIN,
    ROTATE_ROOT,
    DatabaseFailure,
    PostgresTarget,
    expiration,
    generate_password,
    generate_username,
    render,
    split_statements,
)
from garrison.vault.durations import parse_vault_duration
from garrison.vault.leases import EngineFailed, Lease, LeaseManager
from garrison.vault.storage import BarrierStorage
from garrison.vault.tokens import TokenEntry

__all__ = ["ConnectionConfig", "DatabaseEngine", "DatabaseError", "RoleConfig"]

MOUNT = "database"
CONFIG_PREFIX = "database/config/"
ROLE_PREFIX = "database/role/"
DEFAULT_MAX_OPEN = 4  # Vault's default max_open_connections


class DatabaseError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ConnectionConfig:
    connection_url: str
    username: str = ""
    password: str = ""
    allowed_roles: list[str] = field(default_factory=list)
    max_open_connections: int = DEFAULT_MAX_OPEN
    verify_connection: bool = True
    root_rotation_statements: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"ConnectionConfig(username={self.username!r}, allowed_roles={self.allowed_roles!r})"

    def public(self) -> dict[str, Any]:
        """What a read answers: everything but the password, as Vault."""
        return {
            "allowed_roles": self.allowed_roles,
            "connection_details": {
                "connection_url": _without_password(self.connection_url, self.password),
                "username": self.username,
                "max_open_connections": self.max_open_connections,
            },
            "password_policy": "",
            "plugin_name": PLUGIN,
            "plugin_version": "",
            "root_credentials_rotate_statements": self.root_rotation_statements,
        }


@dataclass
class RoleConfig:
    db_name: str
    creation_statements: list[str]
    revocation_statements: list[str] = field(default_factory=list)
    renew_statements: list[str] = field(default_factory=list)
    rollback_statements: list[str] = field(default_factory=list)
    default_ttl: float = 0.0
    max_ttl: float = 0.0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(default_ttl=int(self.default_ttl), max_ttl=int(self.max_ttl), credential_type="password")
        return data


def _strings(value: Any, name: str) -> list[str]:
    """A list of strings from a list or a comma-separated string (as Vault's TypeCommaStringSlice)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise DatabaseError(400, f"{name} must be a list of strings")


def _statements(value: Any, name: str) -> list[str]:
    """Statements: a string is one template (its commas are SQL), a list is several."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    return _strings(value, name)


class DatabaseEngine:
    def __init__(self, storage: BarrierStorage, default_ttl: float, max_ttl: float) -> None:
        self.storage = storage
        self.system_default_ttl, self.system_max_ttl = default_ttl, max_ttl
        self._targets: dict[str, PostgresTarget] = {}  # connection name -> its pool

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        self._targets.clear()

    # connections

    async def connection(self, name: str) -> ConnectionConfig | None:
        raw = await self.storage.get(CONFIG_PREFIX + name)
        return ConnectionConfig(**json.loads(raw)) if raw is not None else None

    async def list_connections(self) -> list[str]:
        return [path[len(CONFIG_PREFIX) :] for path in await self.storage.list(CONFIG_PREFIX)]

    async def write_connection(self, name: str, body: dict[str, Any]) -> list[str]:
        old = await self.connection(name)
        plugin = body.get("plugin_name", PLUGIN if old else None)
        if plugin != PLUGIN:
            raise DatabaseError(400, f"unsupported plugin_name {plugin!r}: only {PLUGIN!r}")
        url = body.get("connection_url", old.connection_url if old else None)
        if not isinstance(url, str) or not url:
            raise DatabaseError(400, "connection_url cannot be empty")
        config = ConnectionConfig(
            connection_url=url,
            username=str(body.get("username", old.username if old else "")),
            password=str(body.get("password", old.password if old else "")),
            allowed_roles=_strings(
                body.get("allowed_roles", old.allowed_roles if old else []), "allowed_roles"
            ),
            max_open_connections=_int(
                body.get("max_open_connections", old.max_open_connections if old else DEFAULT_MAX_OPEN)
            ),
            verify_connection=bool(body.get("verify_connection", True)),
            root_rotation_statements=_statements(
                body.get("root_rotation_statements", old.root_rotation_statements if old else []),
                "root_rotation_statements",
            ),
        )
        target = PostgresTarget(url, config.username, config.password, config.max_open_connections)
        if config.verify_connection:
            try:
                await target.verify()
            except DatabaseFailure as exc:
                target.close()
                raise DatabaseError(
                    400, f"error creating database object: error verifying connection: {exc}"
                ) from None
        await self.storage.put(CONFIG_PREFIX + name, json.dumps(asdict(config)).encode())
        self._replace_target(name, target)
        warnings = []
        if config.password and config.password in url:
            warnings.append(
                "Password found in connection_url, use a templated url to enable root rotation and "
                "prevent read access to password information."
            )
        return warnings

    async def delete_connection(self, name: str) -> None:
        await self.storage.delete(CONFIG_PREFIX + name)
        self._replace_target(name, None)

    def reset_connection(self, name: str) -> None:
        self._replace_target(name, None)

    def _replace_target(self, name: str, target: PostgresTarget | None) -> None:
        old = self._targets.pop(name, None)
        if old is not None:
            old.close()
        if target is not None:
            self._targets[name] = target

    async def _target(self, name: str) -> PostgresTarget:
        target = self._targets.get(name)
        if target is None:
            config = await self.connection(name)
            if config is None:
                raise DatabaseError(400, f"could not find database config {name!r}")
            target = PostgresTarget(
                config.connection_url, config.username, config.password, config.max_open_connections
            )
            self._targets[name] = target
        return target

    async def rotate_root(self, name: str) -> None:
        config = await self.connection(name)
        if config is None:
            raise DatabaseError(400, f"could not find database config {name!r}")
        if not config.username:
            raise DatabaseError(400, "unable to rotate root credentials: no username in configuration")
        password = generate_password()
        templates = config.root_rotation_statements or ROTATE_ROOT
        statements = split_statements(
            render(s, {"name": config.username, "username": config.username, "password": password})
            for s in templates
        )
        target = await self._target(name)
        try:
            await target.run(statements, [password])
        except DatabaseFailure as exc:
            raise DatabaseError(500, f"failed to rotate root credentials: {exc}") from None
        config.password = password
        await self.storage.put(CONFIG_PREFIX + name, json.dumps(asdict(config)).encode())
        self._replace_target(name, None)
        log.log("vault.database.root_rotated", connection=name)

    # roles

    async def role(self, name: str) -> RoleConfig | None:
        raw = await self.storage.get(ROLE_PREFIX + name)
        return RoleConfig(**json.loads(raw)) if raw is not None else None

    async def list_roles(self) -> list[str]:
        return [path[len(ROLE_PREFIX) :] for path in await self.storage.list(ROLE_PREFIX)]

    async def write_role(self, name: str, body: dict[str, Any]) -> None:
        old = await self.role(name)
        db_name = body.get("db_name", old.db_name if old else "")
        if not isinstance(db_name, str) or not db_name:
            raise DatabaseError(400, "empty database name attribute")
        try:
            default_ttl = parse_vault_duration(body.get("default_ttl", old.default_ttl if old else 0))
            max_ttl = parse_vault_duration(body.get("max_ttl", old.max_ttl if old else 0))
        except ValueError as exc:
            raise DatabaseError(400, str(exc)) from None
        if max_ttl and default_ttl > max_ttl:
            raise DatabaseError(400, "ttl cannot be greater than max_ttl")
        role = RoleConfig(
            db_name=db_name,
            creation_statements=_statements(
                body.get("creation_statements", old.creation_statements if old else []), "creation_statements"
            ),
            revocation_statements=_statements(
                body.get("revocation_statements", old.revocation_statements if old else []),
                "revocation_statements",
            ),
            renew_statements=_statements(
                body.get("renew_statements", old.renew_statements if old else []), "renew_statements"
            ),
            rollback_statements=_statements(
                body.get("rollback_statements", old.rollback_statements if old else []), "rollback_statements"
            ),
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )
        if not role.creation_statements:
            raise DatabaseError(400, "creation_statements are required")
        await self.storage.put(ROLE_PREFIX + name, json.dumps(asdict(role)).encode())

    async def delete_role(self, name: str) -> None:
        await self.storage.delete(ROLE_PREFIX + name)

    # credentials and their leases

    async def credentials(
        self, role_name: str, caller: TokenEntry, leases: LeaseManager
    ) -> tuple[dict[str, str], Lease]:
        """A new credential for ``role_name``, leased to ``caller``'s token (revoked with it)."""
        role = await self.role(role_name)
        if role is None:
            raise DatabaseError(400, f"unknown role: {role_name}")
        config = await self.connection(role.db_name)
        if config is None:
            raise DatabaseError(400, f"could not find database config {role.db_name!r}")
        if not any(fnmatch.fnmatchcase(role_name, allowed) for allowed in config.allowed_roles):
            raise DatabaseError(400, f"{role_name!r} is not an allowed role")
        default_ttl = role.default_ttl or self.system_default_ttl
        max_ttl = min(role.max_ttl or self.system_max_ttl, self.system_max_ttl)
        ttl = min(default_ttl, max_ttl)
        now = leases.clock()
        username, password = generate_username(caller.display_name, role_name, now), generate_password()
        values = {
            "name": username,
            "username": username,
            "password": password,
            "expiration": expiration(now + ttl),
        }
        target = await self._target(role.db_name)
        try:
            await target.run(
                split_statements(render(s, values) for s in role.creation_statements), [password]
            )
        except DatabaseFailure as exc:
            raise DatabaseError(500, f"failed to create the credential: {exc}") from None
        internal = {
            "db_name": role.db_name,
            "role": role_name,
            "username": username,
            "revocation_statements": role.revocation_statements,
            "renew_statements": role.renew_statements,
        }
        try:
            lease = await leases.create(
                f"{MOUNT}/creds/{role_name}",
                ttl,
                max_ttl,
                default_ttl,
                internal,
                token=caller.digest,
                token_expire=caller.expire_time,
            )
        except BaseException:
            # No lease, no credential: a role nobody would ever revoke must not be left behind.
            await target.drop_role(username, role.revocation_statements)
            raise
        log.log(
            "vault.database.credential_created",
            role=role_name,
            username=username,
            lease_id=lease.lease_id,
            ttl=int(ttl),
        )
        return {"username": username, "password": password}, lease

    async def revoke_lease(self, lease: Lease) -> None:
        internal = lease.internal
        try:
            target = await self._target(internal["db_name"])
            await target.drop_role(internal["username"], internal.get("revocation_statements") or [])
        except (DatabaseFailure, DatabaseError) as exc:
            raise EngineFailed(str(exc)) from None

    async def renew_lease(self, lease: Lease, expire_time: float) -> None:
        internal = lease.internal
        values = {
            "name": internal["username"],
            "username": internal["username"],
            "expiration": expiration(expire_time),
        }
        templates = internal.get("renew_statements") or DEFAULT_RENEW
        try:
            target = await self._target(internal["db_name"])
            await target.run(split_statements(render(s, values) for s in templates), [])
        except (DatabaseFailure, DatabaseError) as exc:
            raise EngineFailed(str(exc)) from None


def _int(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | str)
        or not str(value).isdigit()
        or int(value) < 1
    ):
        raise DatabaseError(400, "max_open_connections must be a positive integer")
    return int(value)


def _without_password(url: str, password: str) -> str:
    """A URL that holds the password itself (not ``{{password}}``) is answered with it masked."""
    return url.replace(password, "*****") if password else url
