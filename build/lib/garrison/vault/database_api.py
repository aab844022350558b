"""The database engine's HTTP paths at ``database/``, as Vault routes them, with the ACL check of each.

``config/<name>`` and ``roles/<name>``: a write needs ``create`` when the entry does not exist and
``update`` when it does (Vault's existence check), a read ``read``, a delete ``delete``, and a LIST of
``config``/``roles`` needs ``list`` on ``database/config/`` or ``database/roles/``. ``creds/<role>``
needs ``read``; ``rotate-root/<name>`` and ``reset/<name>`` need ``update``. A credential answer
carries its lease (``lease_id``, ``lease_duration``, ``renewable``) in Vault's envelope; its
``data`` (username and password) is HMAC'd in the audit file like every answer's data.
"""

from __future__ import annotations

from garrison.vault.answers import Answer, Call, VaultError, envelope, no_content, ok
from garrison.vault.core import Unsealed
from garrison.vault.database import MOUNT, DatabaseError
from garrison.vault.policy import Acl
from garrison.vault.tokens import TokenEntry

__all__ = ["database_api"]

NAMED = frozenset({"config", "roles", "creds", "rotate-root", "reset"})


async def database_api(unsealed: Unsealed, call: Call, acl: Acl, caller: TokenEntry) -> Answer:
    rest = call.path[len(MOUNT) + 1 :] if call.path != MOUNT else ""
    section, _, name = rest.partition("/")
    op = call.operation
    if section not in NAMED or "/" in name:
        return _no_route(call, acl)
    try:
        if not name:
            if section in ("config", "roles") and op == "list":
                _require(acl, f"{MOUNT}/{section}/", "list")
                return await _list(unsealed, call, section)
            return _no_route(call, acl)
        if section == "config":
            return await _config(unsealed, call, acl, name)
        if section == "roles":
            return await _role(unsealed, call, acl, name)
        if section == "creds":
            if op != "read":
                raise VaultError(405, "unsupported operation")
            _require(acl, call.path, "read")
            return await _creds(unsealed, call, name, caller)
        if op != "create-or-update":
            raise VaultError(405, "unsupported operation")
        _require(acl, call.path, "update")
        if section == "rotate-root":
            await unsealed.database.rotate_root(name)
        elif await unsealed.database.connection(name) is None:
            raise VaultError(400, f"could not find database config {name!r}")
        else:
            unsealed.database.reset_connection(name)
        return no_content()
    except DatabaseError as exc:
        raise VaultError(exc.status, str(exc)) from None


async def _list(unsealed: Unsealed, call: Call, section: str) -> Answer:
    engine = unsealed.database
    keys = await (engine.list_connections() if section == "config" else engine.list_roles())
    if not keys:
        raise VaultError(404)
    return ok(call, {"keys": keys}, mount_type=MOUNT)


async def _config(unsealed: Unsealed, call: Call, acl: Acl, name: str) -> Answer:
    engine = unsealed.database
    op = call.operation
    if op == "read":
        _require(acl, call.path, "read")
        config = await engine.connection(name)
        if config is None:
            raise VaultError(404)
        return ok(call, config.public(), mount_type=MOUNT)
    if op == "create-or-update":
        _require(acl, call.path, "update" if await engine.connection(name) is not None else "create")
        warnings = await engine.write_connection(name, call.body)
        if not warnings:
            return no_content()
        payload = envelope(call.request_id, None, warnings=warnings, mount_type=MOUNT)
        return Answer(200, payload, payload)
    if op == "delete":
        _require(acl, call.path, "delete")
        await engine.delete_connection(name)
        return no_content()
    raise VaultError(405, "unsupported operation")


async def _role(unsealed: Unsealed, call: Call, acl: Acl, name: str) -> Answer:
    engine = unsealed.database
    op = call.operation
    if op == "read":
        _require(acl, call.path, "read")
        role = await engine.role(name)
        if role is None:
            raise VaultError(404)
        return ok(call, role.public(), mount_type=MOUNT)
    if op == "create-or-update":
        _require(acl, call.path, "update" if await engine.role(name) is not None else "create")
        await engine.write_role(name, call.body)
        return no_content()
    if op == "delete":
        _require(acl, call.path, "delete")
        await engine.delete_role(name)
        return no_content()
    raise VaultError(405, "unsupported operation")


async def _creds(unsealed: Unsealed, call: Call, role: str, caller: TokenEntry) -> Answer:
    data, lease = await unsealed.database.credentials(role, caller, unsealed.leases)
    payload = envelope(call.request_id, data, mount_type=MOUNT)
    payload.update(
        lease_id=lease.lease_id,
        renewable=True,
        lease_duration=round(lease.expire_time - lease.issue_time),
    )
    return Answer(200, payload, payload)


def _no_route(call: Call, acl: Acl) -> Answer:
    if not acl.capabilities(call.path):
        raise VaultError(403, "permission denied")  # as Vault: the ACL answers before the router
    raise VaultError(404, f'no handler for route "{call.path}". route entry not found.')


def _require(acl: Acl, path: str, capability: str) -> None:
    if not acl.allows(path, capability):
        raise VaultError(403, "permission denied")
