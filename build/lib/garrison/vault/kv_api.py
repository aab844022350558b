"""The KV v2 engine's HTTP paths at ``secret/``, as Vault routes them, with the ACL check of each.

A write to ``data/`` or ``metadata/`` needs ``create`` when the secret does not exist yet and
``update`` when it does (Vault's existence check); ``delete/``, ``undelete/`` and ``destroy/`` need
``update``; a LIST of ``metadata/`` needs ``list``; a PATCH of ``data/`` needs ``patch``, and its body
must be ``application/merge-patch+json`` (RFC 7396), as Vault requires.
"""

from __future__ import annotations

from garrison.vault.answers import Answer, Call, VaultError, envelope, no_content, ok
from garrison.vault.kv import KvError, KvV2
from garrison.vault.policy import Acl

__all__ = ["kv_api"]

MOUNT_TYPE = "kv"
OPERATION_CAPABILITY = {"read": "read", "list": "list", "delete": "delete", "patch": "patch"}


async def kv_api(kv: KvV2, call: Call, acl: Acl) -> Answer:
    rest = call.path[len(kv.mount) + 1 :]
    section, _, path = rest.partition("/")
    op = call.operation
    try:
        if section == "config" and not path:
            return await _config(kv, call, acl)
        if section not in ("data", "metadata", "delete", "undelete", "destroy") or (
            not path and op != "list"
        ):
            raise VaultError(404, f'no handler for route "{call.path}". route entry not found.')
        if op == "create-or-update":
            exists = section not in ("data", "metadata") or await kv.meta(path) is not None
            _require(acl, call.path, "update" if exists else "create")
        else:  # a LIST names a folder: `secret/metadata/orders/`, which `secret/metadata/orders/*` covers
            _require(acl, call.path + ("/" if op == "list" else ""), OPERATION_CAPABILITY[op])
        if section == "data":
            return await _data(kv, call, path)
        if section == "metadata":
            return await _metadata(kv, call, path)
        if op != "create-or-update":
            raise VaultError(405, "unsupported operation")
        await kv.change_versions(path, call.body, section)
        return no_content()
    except KvError as exc:
        if exc.body is not None:
            payload = envelope(call.request_id, exc.body, mount_type=MOUNT_TYPE)
            return Answer(exc.status, payload, payload)
        raise VaultError(exc.status, *exc.errors) from None


async def _data(kv: KvV2, call: Call, path: str) -> Answer:
    op = call.operation
    if op == "read":
        version = call.query.get("version", "0")
        if not version.isdigit():
            raise VaultError(400, "version must be an integer")
        return ok(call, await kv.read(path, int(version) or None), mount_type=MOUNT_TYPE)
    if op == "create-or-update":
        return ok(call, await kv.write(path, call.body), mount_type=MOUNT_TYPE)
    if op == "patch":
        if call.content_type.split(";")[0].strip().lower() != "application/merge-patch+json":
            raise VaultError(415, "PATCH requires Content-Type application/merge-patch+json")
        return ok(call, await kv.write(path, call.body, patch=True), mount_type=MOUNT_TYPE)
    if op == "delete":
        await kv.delete_latest(path)
        return no_content()
    raise VaultError(405, "unsupported operation")


async def _metadata(kv: KvV2, call: Call, path: str) -> Answer:
    op = call.operation
    if op == "read":
        return ok(call, await kv.read_metadata(path), mount_type=MOUNT_TYPE)
    if op == "list":
        return ok(call, {"keys": await kv.list(path)}, mount_type=MOUNT_TYPE)
    if op in ("create-or-update", "patch"):
        await kv.write_metadata(path, call.body, patch=op == "patch")
        return no_content()
    if op == "delete":
        await kv.delete_metadata(path)
        return no_content()
    raise VaultError(405, "unsupported operation")


async def _config(kv: KvV2, call: Call, acl: Acl) -> Answer:
    if call.operation == "read":
        _require(acl, call.path, "read")
        return ok(call, await kv.read_config(), mount_type=MOUNT_TYPE)
    if call.operation == "create-or-update":
        _require(acl, call.path, "update")
        await kv.write_config(call.body)
        return no_content()
    raise VaultError(405, "unsupported operation")


def _require(acl: Acl, path: str, capability: str) -> None:
    if not acl.allows(path, capability):
        raise VaultError(403, "permission denied")
