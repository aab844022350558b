"""``auth/token/``: create, lookup(-self, -accessor), renew(-self), revoke(-self, -accessor).

Every path is checked against the caller's policies like any other (the ``default`` policy grants
``lookup-self``, ``renew-self`` and ``revoke-self``). Looking a token up by value or by accessor
answers 403 for an unknown one: "bad token" and "no such token" look the same from outside.
"""

from __future__ import annotations

from typing import Any

from garrison.vault.answers import Answer, Call, VaultError, no_content, ok
from garrison.vault.core import Unsealed
from garrison.vault.durations import parse_vault_duration, rfc3339
from garrison.vault.policy import Acl
from garrison.vault.tokens import TokenEntry, TokenError

__all__ = ["token_api"]


def _lookup_data(unsealed: Unsealed, entry: TokenEntry, token: str | None) -> dict[str, Any]:
    now = unsealed.tokens.clock()
    data: dict[str, Any] = {
        "accessor": entry.accessor,
        "creation_time": int(entry.creation_time),
        "creation_ttl": int(entry.ttl),
        "display_name": entry.display_name,
        "entity_id": "",
        "expire_time": rfc3339(entry.expire_time) if entry.expire_time is not None else None,
        "explicit_max_ttl": int(entry.explicit_max_ttl),
        "id": token if token is not None else "",
        "issue_time": rfc3339(entry.creation_time),
        "meta": entry.meta,
        "num_uses": entry.num_uses,
        "orphan": entry.orphan,
        "path": entry.path,
        "policies": entry.policies,
        "renewable": entry.renewable,
        "ttl": entry.remaining(now),
        "type": "service",
    }
    return data


def _require(acl: Acl, path: str, capability: str) -> None:
    if not acl.allows(path, capability):
        raise VaultError(403, "permission denied")


async def token_api(unsealed: Unsealed, call: Call, acl: Acl, caller: TokenEntry) -> Answer:
    tokens = unsealed.tokens
    action = call.path[len("auth/token/") :]
    op = call.operation
    if action in ("create", "create-orphan") and op == "create-or-update":
        _require(acl, call.path, "update")
        body = dict(call.body)
        if action == "create-orphan":
            body["no_parent"] = True
        try:
            token, entry = await tokens.create(caller, body)
        except TokenError as exc:
            raise VaultError(400, str(exc)) from None
        auth = tokens.auth_block(token, entry)
        return ok(call, None, auth)
    if action == "lookup-self" and op in ("read", "create-or-update"):
        _require(acl, call.path, "read" if op == "read" else "update")
        return ok(call, _lookup_data(unsealed, caller, call.token))
    if action in ("lookup", "lookup-accessor") and op == "create-or-update":
        _require(acl, call.path, "update")
        entry = await _target(unsealed, call, action == "lookup-accessor")
        looked_up = str(call.body["token"]) if action == "lookup" else None
        return ok(call, _lookup_data(unsealed, entry, looked_up))
    if action in ("renew-self", "renew") and op == "create-or-update":
        _require(acl, call.path, "update")
        entry = caller if action == "renew-self" else await _target(unsealed, call, False)
        try:
            increment = parse_vault_duration(call.body.get("increment"))
            entry = await tokens.renew(entry, increment)
        except (TokenError, ValueError) as exc:
            raise VaultError(400, str(exc)) from None
        token = call.token if action == "renew-self" else str(call.body.get("token"))
        return ok(call, None, tokens.auth_block(token, entry))
    if action in ("revoke-self", "revoke", "revoke-accessor") and op == "create-or-update":
        _require(acl, call.path, "update")
        if action == "revoke-self":
            await tokens.revoke(caller)
        else:
            await tokens.revoke(await _target(unsealed, call, action == "revoke-accessor"))
        return no_content()
    raise VaultError(
        405 if action in _ACTIONS else 404,
        "unsupported operation" if action in _ACTIONS else f'no handler for route "{call.path}"',
    )


_ACTIONS = frozenset(
    {
        "create",
        "create-orphan",
        "lookup-self",
        "lookup",
        "lookup-accessor",
        "renew-self",
        "renew",
        "revoke-self",
        "revoke",
        "revoke-accessor",
    }
)


async def _target(unsealed: Unsealed, call: Call, by_accessor: bool) -> TokenEntry:
    key = "accessor" if by_accessor else "token"
    value = call.body.get(key)
    if not isinstance(value, str) or not value:
        raise VaultError(400, f"missing {key}")
    entry = await (unsealed.tokens.lookup_accessor(value) if by_accessor else unsealed.tokens.lookup(value))
    if entry is None:
        raise VaultError(403, "bad token" if not by_accessor else "invalid accessor")
    return entry
