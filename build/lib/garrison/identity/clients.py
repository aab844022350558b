"""OAuth clients: registration (CLI), storage, and the in-memory directory the token endpoint reads.

Client secrets are generated here (256 bits, ``gcs_`` prefix), shown once, and stored as a keyed
digest (``KeyEncryption.digest``): checking one is an HMAC, not a slow password hash, which is what
keeps client_credentials fast. Every client gets its scopes from roles (least privilege); ``--scope``
on ``client create`` makes a role of the client's own, ``client:<name>``.

The token endpoint never waits for the database to find a client: ``ClientDirectory`` holds every
client and role in memory and reloads them every ``refresh_interval`` seconds, so a client created or
deleted through the CLI takes effect within about a second on every identity process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.roles import RoleStore
from garrison.identity.tables import clients, roles
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
SECRET_PURPOSE = "client-secret"  # noqa: S105 - the digest label, not a secret
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,55}")  # leaves room for the "client:" role prefix
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 scope-token


class ClientError(ValueError):
    """A client registration request that cannot be honoured; the message says why."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    roles: tuple[str, ...]
    require_mfa: bool
    jwks: dict[str, Any] | None = field(default=None, repr=False)
    secret_digest: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NewClient:
    record: ClientRecord
    secret: str | None = field(repr=False)  # shown once, never stored


def _now() -> datetime:
    return datetime.now(UTC)


def validate_redirect_uri(uri: str) -> str:
    """An absolute https URI (http only for loopback), no fragment: matched exactly, so keep it exact."""
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not loopback):
        raise ClientError(f"redirect URIs must be https (http only on loopback): {uri!r}")
    if not parts.hostname or parts.fragment or "#" in uri or parts.username or parts.password:
        raise ClientError(f"redirect URIs need a host and no fragment or user info: {uri!r}")
    return uri


def _check_registration(
    name: str, grant_types: Sequence[str], auth_method: str, redirect_uris: Sequence[str], jwks: Any
) -> None:
    if not _NAME.fullmatch(name):
        raise ClientError("client names are 1-56 characters: lower-case letters, digits, '.', '_', '-'")
    unknown = sorted(set(grant_types) - set(GRANT_TYPES))
    if not grant_types or unknown:
        raise ClientError(f"grant types must be some of {', '.join(GRANT_TYPES)}; got {unknown or 'none'}")
    if auth_method not in AUTH_METHODS:
        raise ClientError(f"auth method must be one of {', '.join(AUTH_METHODS)}")
    if auth_method == "none" and "client_credentials" in grant_types:
        raise ClientError("client_credentials needs a confidential client (a secret or private_key_jwt)")
    if auth_method == "private_key_jwt":
        _check_public_jwks(jwks)
    if "authorization_code" in grant_types and not redirect_uris:
        raise ClientError("authorization_code needs at least one redirect URI")
    for uri in redirect_uris:
        validate_redirect_uri(uri)


def _check_public_jwks(jwks: Any) -> None:
    """Only public asymmetric keys: a shared (``oct``) or private key here would let an assertion be
    verified with something other than a key only the client holds."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError("private_key_jwt needs the client's public keys (a JWKS with at least one key)")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("EC", "RSA", "OKP"):
            raise ClientError("the JWKS may hold EC, RSA or OKP public keys only")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi")):
            raise ClientError("the JWKS holds a PRIVATE key: register the public key only")


class ClientStore:
    """Clients and roles in the database (the CLI's view); see ``ClientDirectory`` for the hot path."""

    def __init__(self, engine: AsyncEngine, kek: KeyEncryption) -> None:
        self.engine = engine
        self.kek = kek

    async def create(
        self,
        name: str,
        *,
        grant_types: Sequence[str] = ("client_credentials",),
        auth_method: str = "client_secret_basic",
        scopes: Sequence[str] = (),
        roles_: Sequence[str] = (),
        redirect_uris: Sequence[str] = (),
        post_logout_redirect_uris: Sequence[str] = (),
        jwks: dict[str, Any] | None = None,
        require_mfa: bool = False,
    ) -> NewClient:
        _check_registration(name, grant_types, auth_method, redirect_uris, jwks)
        for uri in post_logout_redirect_uris:
            validate_redirect_uri(uri)
        bad = [scope for scope in scopes if not _SCOPE.fullmatch(scope)]
        if bad:
            raise ClientError(f"not a scope token: {bad[0]!r}")
        now = _now()
        client_id = "gc_" + secrets.token_urlsafe(12)
        secret = None
        if auth_method in ("client_secret_basic", "client_secret_post"):
            secret = "gcs_" + secrets.token_urlsafe(32)
        own_role = f"client:{name}"
        all_roles = tuple(dict.fromkeys([*roles_, *([own_role] if scopes else [])]))
        async with self.engine.begin() as conn:
            existing = await conn.execute(select(clients.c.client_id).where(clients.c.name == name))
            if existing.first() is not None:
                raise ClientError(f"a client named {name!r} exists; delete it first or pick another name")
            known = set((await conn.execute(select(roles.c.name))).scalars())
            missing = [role for role in roles_ if role not in known]
            if missing:
                raise ClientError(f"no role {missing[0]!r}; create it with `garrison identity role create`")
            if scopes:
                await conn.execute(delete(roles).where(roles.c.name == own_role))
                await conn.execute(
                    insert(roles).values(
                        name=own_role,
                        scopes=sorted(set(scopes)),
                        description=f"scopes of client {name}",
                        created_at=now,
                        updated_at=now,
                    )
                )
            await conn.execute(
                insert(clients).values(
                    client_id=client_id,
                    name=name,
                    secret_digest=self.kek.digest(secret, SECRET_PURPOSE) if secret else None,
                    auth_method=auth_method,
                    jwks=jwks,
                    grant_types=list(grant_types),
                    redirect_uris=list(redirect_uris),
                    post_logout_redirect_uris=list(post_logout_redirect_uris),
                    roles=list(all_roles),
                    require_mfa=require_mfa,
                    created_at=now,
                    updated_at=now,
                )
            )
        record = ClientRecord(
            client_id,
            name,
            auth_method,
            tuple(grant_types),
            tuple(redirect_uris),
            tuple(post_logout_redirect_uris),
            all_roles,
            require_mfa,
            jwks,
        )
        log.log("identity.client.created", client_id=client_id, name=name, auth_method=auth_method)
        return NewClient(record, secret)

    async def delete(self, name_or_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(clients).where((clients.c.name == name_or_id) | (clients.c.client_id == name_or_id))
            )
            await conn.execute(delete(roles).where(roles.c.name == f"client:{name_or_id}"))
        if result.rowcount:
            log.log("identity.client.deleted", client=name_or_id)
        return bool(result.rowcount)

    async def load(self) -> tuple[dict[str, ClientRecord], dict[str, frozenset[str]]]:
        """Every client (by client_id) and every role's scopes."""
        async with self.engine.connect() as conn:
            client_rows = (await conn.execute(select(clients))).mappings().all()
            role_rows = (await conn.execute(select(roles.c.name, roles.c.scopes))).all()
        records = {row["client_id"]: _record(row) for row in client_rows}
        return records, {name: frozenset(scopes) for name, scopes in role_rows}

    async def put_role(self, name: str, scopes: Iterable[str], description: str = "") -> None:
        """Roles are roles.RoleStore's; a client's own scopes role (``client:<name>``, a name no
        user-made role can take) is the only one written here directly."""
        try:
            await RoleStore(self.engine).put(name, scopes, description)
        except ValueError as exc:
            raise ClientError(str(exc)) from None

    async def delete_role(self, name: str) -> bool:
        return await RoleStore(self.engine).delete(name)


def _record(row: Any) -> ClientRecord:
    return ClientRecord(
        client_id=row["client_id"],
        name=row["name"],
        auth_method=row["auth_method"],
        grant_types=tuple(row["grant_types"]),
        redirect_uris=tuple(row["redirect_uris"]),
        post_logout_redirect_uris=tuple(row["post_logout_redirect_uris"]),
        roles=tuple(row["roles"]),
        require_mfa=bool(row["require_mfa"]),
        jwks=row["jwks"],
        secret_digest=row["secret_digest"],
    )


class ClientDirectory:
    """Clients and role scopes in memory, reloaded every ``refresh_interval`` s (sync lookups)."""

    def __init__(self, store: ClientStore, refresh_interval: float = 1.0) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self._clients: dict[str, ClientRecord] = {}
        self._role_scopes: dict[str, frozenset[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._reloaded_at = 0.0
        self._reload_lock = asyncio.Lock()
        self.min_reload = 0.25

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._follow(), name="identity-clients")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reload(self) -> None:
        self._reloaded_at = time.monotonic()
        self._clients, self._role_scopes = await self.store.load()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.reload()
            except Exception as exc:  # keep serving the last snapshot; say so
                log.warn("identity.clients.reload_failed", error=type(exc).__name__)

    def get(self, client_id: str) -> ClientRecord | None:
        return self._clients.get(client_id)

    def is_confidential(self, client_id: str) -> bool:
        """Registered (as of the last reload) with a credential to guess: a secret or a key set."""
        record = self._clients.get(client_id)
        return record is not None and record.auth_method != "none"

    async def get_fresh(self, client_id: str) -> ClientRecord | None:
        """Like ``get``, but a miss reloads the directory, so a client registered a moment ago works at
        once. Misses share reloads: one reload answers every miss that came before it started, and
        reloads are at least ``min_reload`` seconds apart, so a flood of unknown ids costs little."""
        record = self._clients.get(client_id)
        if record is not None:
            return record
        missed_at = time.monotonic()
        async with self._reload_lock:
            if self._reloaded_at < missed_at:
                wait = self._reloaded_at + self.min_reload - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.reload()
        return self._clients.get(client_id)

    def allowed_scopes(self, role_names: Iterable[str]) -> frozenset[str]:
        allowed: set[str] = set()
        for role in role_names:
            allowed |= self._role_scopes.get(role, frozenset())
        return frozenset(allowed)

    def check_secret(self, record: ClientRecord, secret: str) -> bool:
        if record.secret_digest is None:
            return False
        presented = self.store.kek.digest(secret, SECRET_PURPOSE)
        return hmac.compare_digest(presented, record.secret_digest)
