"""AppRole (Vault's ``auth/approle``): a role names the policies and token lifetimes a machine gets; the
machine proves itself with the role's ``role_id`` (an identifier, not a secret) and a ``secret_id``.

Storage (all in the barrier, as Vault keeps its auth state):

- ``auth/approle/role/<name>``: the role (JSON), its ``role_id`` inside;
- ``auth/approle/role-id/<digest>``: role_id -> role name (login finds the role by role_id);
- ``auth/approle/secret-id/<role>/<digest>``: one secret_id, keyed by its HMAC under the token
  store's key (purpose ``secret_id``), so no secret_id is stored, even inside the barrier;
- ``auth/approle/accessor/<role>/<digest>``: accessor -> secret_id digest (lookup and destroy
  without the secret).

A secret_id with ``num_uses`` is spent atomically with the login that uses it: the last use deletes it
in the same storage write, and a lock per role orders concurrent logins so two racing uses of a
single-use secret_id cannot both succeed. Login errors do not say whether the role or the secret_id
was wrong (Vault: 400 ``invalid role or secret ID``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from garrison.vault.durations import parse_vault_duration
from garrison.vault.storage import BarrierStorage
from garrison.vault.tokens import TokenEntry, TokenStore

__all__ = ["AppRoleError", "AppRoleStore", "Role", "SecretId"]

ROLE_PREFIX = "auth/approle/role/"
ROLE_ID_PREFIX = "auth/approle/role-id/"
SECRET_PREFIX = "auth/approle/secret-id/"  # noqa: S105 - a storage path, not a secret
ACCESSOR_PREFIX = "auth/approle/accessor/"
ROLE_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
INVALID_LOGIN = "invalid role or secret ID"
MAX_METADATA = 64


class AppRoleError(Exception):
    """A request AppRole refuses; ``status`` is Vault's (400 mostly)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Role:
    name: str
    role_id: str
    token_policies: list[str] = field(default_factory=list)
    token_ttl: float = 0.0
    token_max_ttl: float = 0.0
    secret_id_ttl: float = 0.0
    secret_id_num_uses: int = 0
    bind_secret_id: bool = True

    def data(self) -> dict[str, Any]:
        """``GET auth/approle/role/<name>``'s ``data``, with Vault's fields."""
        return {
            "bind_secret_id": self.bind_secret_id,
            "local_secret_ids": False,
            "secret_id_bound_cidrs": None,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_ttl": int(self.secret_id_ttl),
            "token_bound_cidrs": [],
            "token_explicit_max_ttl": 0,
            "token_max_ttl": int(self.token_max_ttl),
            "token_no_default_policy": False,
            "token_num_uses": 0,
            "token_period": 0,
            "token_policies": self.token_policies,
            "token_strictly_bind_ip": False,
            "token_ttl": int(self.token_ttl),
            "token_type": "default",
        }


@dataclass
class SecretId:
    digest: str
    accessor: str
    creation_time: float
    expiration_time: float | None
    num_uses: int  # uses left; 0: unlimited
    metadata: dict[str, str]
    ttl: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def __repr__(self) -> str:
        return f"SecretId(accessor={self.accessor!r})"


ROLE_FIELDS = frozenset(
    {
        "token_policies",
        "policies",
        "token_ttl",
        "token_max_ttl",
        "secret_id_ttl",
        "secret_id_num_uses",
        "bind_secret_id",
        "role_name",
    }
)


class AppRoleStore:
    def __init__(self, storage: BarrierStorage, tokens: TokenStore, clock: Callable[[], float]) -> None:
        self.storage, self.tokens, self.clock = storage, tokens, clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def role(self, name: str) -> Role | None:
        raw = await self.storage.get(ROLE_PREFIX + name.lower())
        return Role(**json.loads(raw)) if raw is not None else None

    async def role_names(self) -> list[str]:
        return sorted(path[len(ROLE_PREFIX) :] for path in await self.storage.list(ROLE_PREFIX))

    async def write_role(self, name: str, body: dict[str, Any]) -> None:
        """Create or update (fields not given keep their value, as Vault's role update does)."""
        if not ROLE_NAME.fullmatch(name):
            raise AppRoleError("a role name is 1 to 128 letters, digits, '.', '_', '-' or '@'")
        # Refused rather than ignored: a restriction the caller asked for must not silently not apply.
        unknown = sorted(set(body) - ROLE_FIELDS)
        if unknown:
            raise AppRoleError(f"unsupported role parameters: {', '.join(unknown)}")
        name = name.lower()
        role = await self.role(name) or Role(name=name, role_id=str(uuid.uuid4()))
        if "token_policies" in body or "policies" in body:
            role.token_policies = _policies(body.get("token_policies", body.get("policies")))
        for key in ("token_ttl", "token_max_ttl", "secret_id_ttl"):
            if key in body:
                setattr(role, key, _seconds(body[key], key))
        if "secret_id_num_uses" in body:
            role.secret_id_num_uses = _count(body["secret_id_num_uses"], "secret_id_num_uses")
        if "bind_secret_id" in body:
            role.bind_secret_id = _boolean(body["bind_secret_id"], "bind_secret_id")
        if not role.bind_secret_id:
            raise AppRoleError("bind_secret_id must be true: a role_id alone is not a credential here")
        if role.token_max_ttl and role.token_ttl > role.token_max_ttl:
            raise AppRoleError("token_ttl should not be greater than token_max_ttl")
        await self._save(role, new_role_id=None)

    async def set_role_id(self, name: str, role_id: Any) -> None:
        role = await self._existing(name)
        if not isinstance(role_id, str) or not role_id or len(role_id) > 512:
            raise AppRoleError("missing role_id")
        if await self.storage.get(ROLE_ID_PREFIX + await self.tokens.digest(role_id, "role_id")):
            raise AppRoleError("role_id already in use")
        await self._save(role, new_role_id=role_id)

    async def _save(self, role: Role, new_role_id: str | None) -> None:
        deletes: list[str] = []
        if new_role_id is not None:
            deletes.append(ROLE_ID_PREFIX + await self.tokens.digest(role.role_id, "role_id"))
            role.role_id = new_role_id
        puts = {
            ROLE_PREFIX + role.name: json.dumps(asdict(role)).encode(),
            ROLE_ID_PREFIX + await self.tokens.digest(role.role_id, "role_id"): role.name.encode(),
        }
        await self.storage.write(puts, deletes)

    async def delete_role(self, name: str) -> None:
        role = await self.role(name)
        if role is None:
            return
        owned = await self.storage.list(f"{SECRET_PREFIX}{role.name}/")
        owned += await self.storage.list(f"{ACCESSOR_PREFIX}{role.name}/")
        index = ROLE_ID_PREFIX + await self.tokens.digest(role.role_id, "role_id")
        await self.storage.write({}, [ROLE_PREFIX + role.name, index, *owned])

    async def _existing(self, name: str) -> Role:
        role = await self.role(name)
        if role is None:
            raise AppRoleError(f'role "{name}" does not exist', 404)
        return role

    async def generate_secret_id(self, name: str, body: dict[str, Any]) -> tuple[str, SecretId]:
        role = await self._existing(name)
        if body.get("cidr_list") or body.get("token_bound_cidrs"):
            raise AppRoleError("CIDR bindings are not supported")
        metadata = _metadata(body.get("metadata"))
        ttl = _seconds(body.get("ttl"), "ttl") if body.get("ttl") not in (None, "") else role.secret_id_ttl
        if role.secret_id_ttl and (not ttl or ttl > role.secret_id_ttl):
            ttl = role.secret_id_ttl  # a secret_id never outlives what the role allows
        uses = _count(body["num_uses"], "num_uses") if "num_uses" in body else role.secret_id_num_uses
        if role.secret_id_num_uses and (not uses or uses > role.secret_id_num_uses):
            uses = role.secret_id_num_uses
        value = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
        now = self.clock()
        entry = SecretId(
            digest=await self.tokens.digest(value, "secret_id"),
            accessor=str(uuid.uuid4()),
            creation_time=now,
            expiration_time=now + ttl if ttl else None,
            num_uses=uses,
            metadata=metadata,
            ttl=ttl,
        )
        accessor_path = f"{ACCESSOR_PREFIX}{role.name}/{await self._accessor_digest(entry.accessor)}"
        await self.storage.write(
            {
                f"{SECRET_PREFIX}{role.name}/{entry.digest}": entry.to_bytes(),
                accessor_path: entry.digest.encode(),
            }
        )
        return value, entry

    async def _accessor_digest(self, accessor: str) -> str:
        return await self.tokens.digest(accessor, "secret_id_accessor")

    async def _secret(self, role: Role, digest: str) -> SecretId | None:
        raw = await self.storage.get(f"{SECRET_PREFIX}{role.name}/{digest}")
        if raw is None:
            return None
        entry = SecretId(**json.loads(raw))
        if entry.expiration_time is not None and entry.expiration_time <= self.clock():
            await self._destroy(role, entry)
            return None
        return entry

    async def lookup_secret_id(self, name: str, value: Any) -> SecretId | None:
        role = await self._existing(name)
        if not isinstance(value, str) or not value:
            raise AppRoleError("missing secret_id")
        return await self._secret(role, await self.tokens.digest(value, "secret_id"))

    async def lookup_accessor(self, name: str, accessor: Any) -> SecretId | None:
        role = await self._existing(name)
        if not isinstance(accessor, str) or not accessor:
            raise AppRoleError("missing secret_id_accessor")
        digest = await self.storage.get(
            f"{ACCESSOR_PREFIX}{role.name}/{await self._accessor_digest(accessor)}"
        )
        return await self._secret(role, digest.decode()) if digest is not None else None

    async def accessors(self, name: str) -> list[str]:
        role = await self._existing(name)
        found = []
        for path in await self.storage.list(f"{SECRET_PREFIX}{role.name}/"):
            entry = await self._secret(role, path.rsplit("/", 1)[1])
            if entry is not None:
                found.append(entry.accessor)
        return sorted(found)

    async def destroy(self, name: str, entry: SecretId | None) -> None:
        role = await self._existing(name)
        if entry is not None:
            await self._destroy(role, entry)

    async def _destroy(self, role: Role, entry: SecretId) -> None:
        accessor = f"{ACCESSOR_PREFIX}{role.name}/{await self._accessor_digest(entry.accessor)}"
        await self.storage.write({}, [f"{SECRET_PREFIX}{role.name}/{entry.digest}", accessor])

    async def login(self, body: dict[str, Any]) -> tuple[str, TokenEntry, Role]:
        """A token for ``role_id`` + ``secret_id``, spending one use of the secret_id."""
        role_id, secret_id = body.get("role_id"), body.get("secret_id")
        if not isinstance(role_id, str) or not role_id:
            raise AppRoleError("missing role_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise AppRoleError("missing secret_id")
        if len(secret_id) > 512 or len(role_id) > 512:
            raise AppRoleError(INVALID_LOGIN)
        name = await self.storage.get(ROLE_ID_PREFIX + await self.tokens.digest(role_id, "role_id"))
        role = await self.role(name.decode()) if name is not None else None
        if role is None:
            raise AppRoleError(INVALID_LOGIN)
        lock = self._locks.setdefault(role.name, asyncio.Lock())
        async with lock:  # orders uses of one role's secret_ids: a single use is spent once
            entry = await self._secret(role, await self.tokens.digest(secret_id, "secret_id"))
            if entry is None:
                raise AppRoleError(INVALID_LOGIN)
            if entry.num_uses == 1:
                await self._destroy(role, entry)
            elif entry.num_uses > 1:
                entry.num_uses -= 1
                await self.storage.put(f"{SECRET_PREFIX}{role.name}/{entry.digest}", entry.to_bytes())
        ttl = role.token_ttl or self.tokens.default_ttl
        ttl = min(ttl, role.token_max_ttl or self.tokens.max_ttl, self.tokens.max_ttl)
        policies = sorted(set(role.token_policies) | {"default"})
        token, token_entry = await self.tokens.create_login(
            policies,
            ttl,
            role.token_max_ttl,
            f"approle-{role.name}",
            {"role_name": role.name},
            "auth/approle/login",
        )
        return token, token_entry, role


def _policies(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AppRoleError("token_policies is a list of strings")
    return sorted({item.strip().lower() for item in value if item.strip()})


def _seconds(value: Any, name: str) -> float:
    try:
        return parse_vault_duration(value)
    except ValueError as exc:
        raise AppRoleError(f"{name}: {exc}") from None


def _count(value: Any, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AppRoleError(f"{name} is an integer")
    if value < 0:
        raise AppRoleError(f"{name} cannot be negative")
    return value


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise AppRoleError(f"{name} is a boolean")


def _metadata(value: Any) -> dict[str, str]:
    """Vault takes ``metadata`` as a JSON string of a string map (hvac sends it so)."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise AppRoleError("failed to parse metadata: not a JSON object") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AppRoleError("metadata is a map of strings")
    if len(value) > MAX_METADATA:
        raise AppRoleError("too many metadata keys")
    return {str(k): v for k, v in value.items()}
