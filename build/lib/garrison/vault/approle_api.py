"""``auth/approle/``: roles, role-id, secret-id (generate, list, lookup, destroy, by accessor too), login.

Login needs no token (it is how a machine gets one) and is dispatched before the token check; every
other path needs a token whose policies grant it, as in Vault (a role's secret-id endpoint is usually
granted to a deployment tool, the role-id to whoever configures the machine). Unknown roles answer as
Vault does: reads 404 with an empty error list, paths below a role 404 ``role "x" does not exist``.
"""

from __future__ import annotations

from typing import Any

from garrison.vault.answers import Answer, Call, VaultError, envelope, no_content, ok
from garrison.vault.approle import AppRoleError, AppRoleStore, SecretId
from garrison.vault.durations import rfc3339
from garrison.vault.policy import Acl

__all__ = ["MOUNT", "approle_api", "approle_login"]

MOUNT = "auth/approle/"


async def approle_login(store: AppRoleStore, call: Call) -> Answer:
    if call.operation != "create-or-update":
        raise VaultError(405, "unsupported operation")
    try:
        token, entry, role = await store.login(call.body)
    except AppRoleError as exc:
        raise VaultError(exc.status, str(exc)) from None
    auth = store.tokens.auth_block(token, entry)
    auth["metadata"] = {"role_name": role.name}
    payload = envelope(call.request_id, None, auth)
    return Answer(200, payload, payload)


async def approle_api(store: AppRoleStore, call: Call, acl: Acl) -> Answer:
    try:
        return await _route(store, call, acl)
    except AppRoleError as exc:
        raise VaultError(exc.status, str(exc)) from None


async def _route(store: AppRoleStore, call: Call, acl: Acl) -> Answer:
    rest = call.path[len(MOUNT) :]
    op = call.operation
    if rest == "role" and op == "list":
        _require(acl, call.path, "list")
        names = await store.role_names()
        if not names:
            raise VaultError(404, body={"errors": []})
        return ok(call, {"keys": names})
    parts = rest.split("/")
    if len(parts) < 2 or parts[0] != "role":
        return _missing(call, acl)
    name, action = parts[1], "/".join(parts[2:])
    if action == "":
        return await _role(store, call, acl, name)
    if action == "role-id":
        return await _role_id(store, call, acl, name)
    if action == "secret-id" and op == "create-or-update":
        _require(acl, call.path, "update")
        value, entry = await store.generate_secret_id(name, call.body)
        data = {
            "secret_id": value,
            "secret_id_accessor": entry.accessor,
            "secret_id_ttl": int(entry.ttl),
            "secret_id_num_uses": entry.num_uses,
        }
        return ok(call, data)
    if action == "secret-id" and op == "list":
        _require(acl, call.path, "list")
        keys = await store.accessors(name)
        if not keys:
            raise VaultError(404, body={"errors": []})
        return ok(call, {"keys": keys})
    if action in ("secret-id/lookup", "secret-id-accessor/lookup") and op == "create-or-update":
        _require(acl, call.path, "update")
        if action == "secret-id/lookup":
            found = await store.lookup_secret_id(name, call.body.get("secret_id"))
        else:
            found = await store.lookup_accessor(name, call.body.get("secret_id_accessor"))
        if found is None:
            if action == "secret-id-accessor/lookup":  # as Vault: 404 with the reason in `data`
                error = "failed to find accessor entry for secret_id_accessor"
                payload = envelope(call.request_id, {"error": error})
                return Answer(404, payload, payload)
            return no_content()  # as Vault: an unknown secret_id looks up to nothing
        return ok(call, _secret_data(found))
    if action in ("secret-id/destroy", "secret-id-accessor/destroy") and op in ("create-or-update", "delete"):
        _require(acl, call.path, "update" if op == "create-or-update" else "delete")
        if action == "secret-id/destroy":
            found = await store.lookup_secret_id(name, call.body.get("secret_id"))
        else:
            found = await store.lookup_accessor(name, call.body.get("secret_id_accessor"))
        await store.destroy(name, found)
        return no_content()
    return _missing(call, acl)


async def _role(store: AppRoleStore, call: Call, acl: Acl, name: str) -> Answer:
    op = call.operation
    if op == "read":
        _require(acl, call.path, "read")
        role = await store.role(name)
        if role is None:
            raise VaultError(404, body={"errors": []})
        return ok(call, role.data())
    if op == "create-or-update":
        exists = await store.role(name) is not None
        _require(acl, call.path, "update" if exists else "create")
        await store.write_role(name, call.body)
        return no_content()
    if op == "delete":
        _require(acl, call.path, "delete")
        await store.delete_role(name)
        return no_content()
    raise VaultError(405, "unsupported operation")


async def _role_id(store: AppRoleStore, call: Call, acl: Acl, name: str) -> Answer:
    if call.operation == "read":
        _require(acl, call.path, "read")
        role = await store.role(name)
        if role is None:
            raise VaultError(404, body={"errors": []})
        return ok(call, {"role_id": role.role_id})
    if call.operation == "create-or-update":
        _require(acl, call.path, "update")
        await store.set_role_id(name, call.body.get("role_id"))
        return no_content()
    raise VaultError(405, "unsupported operation")


def _secret_data(entry: SecretId) -> dict[str, Any]:
    expiration = (
        rfc3339(entry.expiration_time) if entry.expiration_time is not None else "0001-01-01T00:00:00Z"
    )
    return {
        "cidr_list": [],
        "creation_time": rfc3339(entry.creation_time),
        "expiration_time": expiration,
        "last_updated_time": rfc3339(entry.creation_time),
        "metadata": entry.metadata,
        "secret_id_accessor": entry.accessor,
        "secret_id_num_uses": entry.num_uses,
        "secret_id_ttl": int(entry.ttl),
        "token_bound_cidrs": [],
    }


def _missing(call: Call, acl: Acl) -> Answer:
    if not acl.capabilities(call.path):
        raise VaultError(403, "permission denied")  # as Vault: the ACL answers before the router
    raise VaultError(404, f'no handler for route "{call.path}". route entry not found.')


def _require(acl: Acl, path: str, capability: str) -> None:
    if not acl.allows(path, capability):
        raise VaultError(403, "permission denied")
