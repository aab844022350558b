"""The token store (Vault's ``auth/token``): service tokens with policies, TTLs, accessors and parents.

A token is never stored: entries sit under ``sys/token/id/<digest>`` where the digest is HMAC-SHA256
of the token under a random 256-bit key kept in the barrier (``sys/token/salt``), so a copy of the
database, even decrypted, holds no usable token. Accessors (which name a token for lookup and revoke
without giving its power) are indexed the same way. A child token is revoked with its parent unless
it was created as an orphan; expired tokens are refused and dropped when next seen.

Lifetimes: a token lives ``ttl`` seconds and may be renewed (``renew-self``) up to ``explicit_max_ttl``
and the configured ``max_ttl`` from its creation. The root token made by ``sys/init`` has none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from garrison.vault.durations import parse_vault_duration
from garrison.vault.storage import BarrierStorage

__all__ = ["TokenEntry", "TokenError", "TokenStore"]

SALT_PATH = "sys/token/salt"
ID_PREFIX = "sys/token/id/"
ACCESSOR_PREFIX = "sys/token/accessor/"
PARENT_PREFIX = "sys/token/parent/"


class TokenError(Exception):
    """A request the token store refuses (400), e.g. a policy the parent does not hold."""


@dataclass
class TokenEntry:
    digest: str  # HMAC of the token: its storage key, never the token
    accessor: str
    policies: list[str]
    creation_time: float
    ttl: float  # seconds granted at creation or last renewal; 0: never expires (root)
    expire_time: float | None
    explicit_max_ttl: float = 0.0
    renewable: bool = True
    display_name: str = "token"
    meta: dict[str, str] | None = None
    parent: str = ""  # parent's digest; "" for an orphan
    path: str = "auth/token/create"
    num_uses: int = 0
    children: list[str] = field(default_factory=list)

    @property
    def orphan(self) -> bool:
        return not self.parent

    @property
    def is_root(self) -> bool:
        return "root" in self.policies

    def remaining(self, now: float) -> int:
        return 0 if self.expire_time is None else max(0, int(self.expire_time - now))

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenEntry:
        return cls(**json.loads(data))

    def __repr__(self) -> str:
        return f"TokenEntry(accessor={self.accessor!r}, policies={self.policies!r})"


class TokenStore:
    def __init__(
        self, storage: BarrierStorage, clock: Callable[[], float], default_ttl: float, max_ttl: float
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._salt: bytes | None = None
        # Called with the digest of every token revoked (explicitly, with its parent, or found expired):
        # the lease manager revokes the secrets the token obtained, as Vault does.
        self.on_revoke: list[Callable[[str], Awaitable[None]]] = []

    async def _key(self) -> bytes:
        if self._salt is None:
            salt = await self.storage.get(SALT_PATH)
            if salt is None:
                salt = os.urandom(32)
                await self.storage.put(SALT_PATH, salt)
            self._salt = salt
        return self._salt

    async def digest(self, value: str, purpose: str = "token") -> str:
        message = purpose.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
        return hmac.new(await self._key(), message, hashlib.sha256).hexdigest()

    async def create_root(self) -> tuple[str, TokenEntry]:
        return await self._create(["root"], 0.0, 0.0, False, "root", None, "", "auth/token/root")

    async def create(self, parent: TokenEntry, request: dict[str, Any]) -> tuple[str, TokenEntry]:
        """A child of ``parent`` (an orphan with ``no_parent``) from a ``auth/token/create`` body."""
        # Refused rather than ignored: a client asking for a limited token must not get an unlimited one.
        if request.get("num_uses") not in (None, 0, "0"):
            raise TokenError("num_uses is not supported: use a short ttl")
        if request.get("type") not in (None, "", "service", "default"):
            raise TokenError("batch tokens are not supported: only service tokens")
        if request.get("role_name") or request.get("entity_alias"):
            raise TokenError("token roles and entity aliases are not supported")
        policies = _strings(request.get("policies"), "policies")
        if not policies:
            policies = [p for p in parent.policies if p != "root" or parent.is_root]
        if not parent.is_root:
            extra = sorted(set(policies) - set(parent.policies) - {"default"})
            if extra:
                raise TokenError(f"child policies must be a subset of the parent's: {', '.join(extra)}")
        if not request.get("no_default_policy") and "root" not in policies and "default" not in policies:
            policies.append("default")
        if request.get("no_parent") and not parent.is_root:
            raise TokenError("root or sudo privileges required to create an orphan token")
        explicit_max = _seconds(request.get("explicit_max_ttl"), "explicit_max_ttl")
        ttl = _seconds(request.get("ttl"), "ttl") or self.default_ttl
        ttl = min(ttl, self.max_ttl, explicit_max or self.max_ttl)
        name = str(request.get("display_name") or "")
        display = "token" if not name else f"token-{name}"
        meta = request.get("meta")
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise TokenError("meta is a map of strings")
        renewable = request.get("renewable", True)
        if not isinstance(renewable, bool):
            raise TokenError("renewable is a boolean")
        parent_digest = "" if request.get("no_parent") else parent.digest
        return await self._create(
            sorted(set(policies)), ttl, explicit_max, renewable, display, meta, parent_digest
        )

    async def create_login(
        self,
        policies: list[str],
        ttl: float,
        explicit_max: float,
        display: str,
        meta: dict[str, str] | None,
        path: str,
    ) -> tuple[str, TokenEntry]:
        """The token of an auth method's login: no parent (as Vault's login tokens), renewable."""
        return await self._create(policies, ttl, explicit_max, True, display, meta, "", path)

    async def _create(
        self,
        policies: list[str],
        ttl: float,
        explicit_max: float,
        renewable: bool,
        display: str,
        meta: dict[str, str] | None,
        parent: str,
        path: str = "auth/token/create",
    ) -> tuple[str, TokenEntry]:
        token = "hvs." + secrets.token_urlsafe(32)
        accessor = secrets.token_urlsafe(18)
        now = self.clock()
        entry = TokenEntry(
            digest=await self.digest(token),
            accessor=accessor,
            policies=policies,
            creation_time=now,
            ttl=ttl,
            expire_time=now + ttl if ttl else None,
            explicit_max_ttl=explicit_max,
            renewable=renewable and bool(ttl),
            display_name=display,
            meta=meta,
            parent=parent,
            path=path,
        )
        puts = {
            ID_PREFIX + entry.digest: entry.to_bytes(),
            ACCESSOR_PREFIX + await self.digest(accessor, "accessor"): entry.digest.encode(),
        }
        if parent:
            puts[f"{PARENT_PREFIX}{parent}/{entry.digest}"] = b""
        await self.storage.write(puts)
        return token, entry

    async def lookup(self, token: str) -> TokenEntry | None:
        """The live entry of ``token``, or None (unknown, revoked or expired)."""
        if not token or len(token) > 512:
            return None
        return await self._by_digest(await self.digest(token))

    async def lookup_accessor(self, accessor: str) -> TokenEntry | None:
        if not accessor or len(accessor) > 512:
            return None
        digest = await self.storage.get(ACCESSOR_PREFIX + await self.digest(accessor, "accessor"))
        return await self._by_digest(digest.decode()) if digest is not None else None

    async def by_digest(self, digest: str) -> TokenEntry | None:
        """The live entry stored under ``digest`` (an expired one is revoked here and not returned)."""
        return await self._by_digest(digest)

    async def _by_digest(self, digest: str) -> TokenEntry | None:
        raw = await self.storage.get(ID_PREFIX + digest)
        if raw is None:
            return None
        entry = TokenEntry.from_bytes(raw)
        if entry.expire_time is not None and entry.expire_time <= self.clock():
            await self.revoke(entry)
            return None
        return entry

    async def renew(self, entry: TokenEntry, increment: float) -> TokenEntry:
        if not entry.renewable:
            raise TokenError("lease is not renewable")
        now = self.clock()
        limit = entry.creation_time + min(self.max_ttl, entry.explicit_max_ttl or self.max_ttl)
        ttl = increment or entry.ttl
        entry.expire_time = min(now + ttl, limit)
        entry.ttl = max(0.0, entry.expire_time - now)
        await self.storage.put(ID_PREFIX + entry.digest, entry.to_bytes())
        return entry

    async def revoke(self, entry: TokenEntry) -> None:
        """Revoke ``entry`` and, depth first, every non-orphan token created under it."""
        children = await self.storage.list(f"{PARENT_PREFIX}{entry.digest}/")
        for child_path in children:
            child = await self.storage.get(ID_PREFIX + child_path.rsplit("/", 1)[1])
            if child is not None:
                await self.revoke(TokenEntry.from_bytes(child))
        deletes = [ID_PREFIX + entry.digest, ACCESSOR_PREFIX + await self.digest(entry.accessor, "accessor")]
        if entry.parent:
            deletes.append(f"{PARENT_PREFIX}{entry.parent}/{entry.digest}")
        await self.storage.write({}, [*deletes, *children])
        for hook in self.on_revoke:
            await hook(entry.digest)

    def auth_block(self, token: str, entry: TokenEntry) -> dict[str, Any]:
        """The ``auth`` object of a create or renew answer."""
        return {
            "client_token": token,
            "accessor": entry.accessor,
            "policies": entry.policies,
            "token_policies": entry.policies,
            "metadata": entry.meta,
            "lease_duration": round(entry.ttl),
            "renewable": entry.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": entry.orphan,
            "mfa_requirement": None,
            "num_uses": entry.num_uses,
        }


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise TokenError(f"{name} is a list of strings")


def _seconds(value: Any, name: str) -> float:
    """A Vault duration: seconds as a number, or a string such as "90s", "15m", "1h", "2h30m"."""
    try:
        return parse_vault_duration(value)
    except ValueError as exc:
        raise TokenError(f"{name}: {exc}") from None
