"""``sys/``: init, unseal, seal, seal-status, health, rotate, key-status, and ACL policies.

``sys/health``, ``sys/seal-status``, ``sys/init`` and ``sys/unseal`` answer without a token (a sealed
vault has no tokens to check); the rest need one whose policies grant the path (``sys/seal`` and
``sys/rotate`` need ``sudo``, as in Vault).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from garrison import __version__
from garrison.vault.answers import Answer, Call, VaultError, no_content, ok
from garrison.vault.core import KV_MOUNT, VaultCore
from garrison.vault.durations import rfc3339
from garrison.vault.policy import Acl, PolicyError
from garrison.vault.seal import SealConfig, UnsealError

__all__ = ["UNAUTHENTICATED", "authenticated_sys", "unauthenticated_sys"]

UNAUTHENTICATED = frozenset({"sys/health", "sys/seal-status", "sys/init", "sys/unseal", "sys/leader"})
MOUNTS_PREFIX = "sys/internal/ui/mounts/"
VERSION = f"1.15.0+garrison.{__version__}"  # what `version` says: the Vault API level followed, and ours


def _seal_status(core: VaultCore) -> dict[str, Any]:
    config = core.seal.config
    return {
        "type": "shamir",
        "initialized": core.seal.initialized,
        "sealed": core.seal.sealed,
        "t": config.threshold if config else 0,
        "n": config.shares if config else 0,
        "progress": core.seal.progress,
        "nonce": core.seal.nonce,
        "version": VERSION,
        "build_date": "",
        "migration": False,
        "recovery_seal": False,
        "storage_type": "sql",
    }


def _health(core: VaultCore, call: Call) -> Answer:
    if not core.seal.initialized:
        status = _code(call, "uninitcode", 501)
    elif core.seal.sealed:
        status = _code(call, "sealedcode", 503)
    else:
        status = _code(call, "activecode", 200)
    body = {
        "initialized": core.seal.initialized,
        "sealed": core.seal.sealed,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": VERSION,
        "enterprise": False,
        "cluster_name": "garrison",
        "cluster_id": "",
    }
    return Answer(status, None if call.method == "HEAD" else body, None)


def _code(call: Call, name: str, default: int) -> int:
    raw = call.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 100 <= int(raw) <= 599:
        raise VaultError(400, f"{name} must be an HTTP status code")
    return int(raw)


def _decode_share(key: Any) -> bytes:
    if not isinstance(key, str) or not key:
        raise VaultError(400, "'key' must be specified in request body as JSON, or 'reset' set to true")
    try:
        return bytes.fromhex(key)
    except ValueError:
        pass
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(400, "'key' must be a valid hex or base64 string") from None


async def unauthenticated_sys(core: VaultCore, call: Call) -> Answer:
    if call.path == "sys/health":
        if call.operation not in ("read", "head"):
            raise VaultError(405, "unsupported operation")
        return _health(core, call)
    if call.path == "sys/seal-status":
        return Answer(200, _seal_status(core), None)
    if call.path == "sys/leader":  # `vault status` asks; there is no HA: one active vault, no leader
        leader = {
            "ha_enabled": False,
            "is_self": False,
            "active_time": "0001-01-01T00:00:00Z",
            "leader_address": "",
            "leader_cluster_address": "",
            "performance_standby": False,
            "performance_standby_last_remote_wal": 0,
        }
        return Answer(200, leader, None)
    if call.path == "sys/init":
        if call.operation == "read":
            return Answer(200, {"initialized": core.seal.initialized}, None)
        return await _init(core, call)
    # sys/unseal
    if call.operation not in ("create-or-update",):
        raise VaultError(405, "unsupported operation")
    if not core.seal.initialized:
        raise VaultError(400, "Vault is not initialized")
    if call.body.get("reset") is True:
        core.seal.reset()
        return Answer(200, _seal_status(core), None)
    share = _decode_share(call.body.get("key"))
    try:
        await core.submit_share(share)
    except UnsealError as exc:
        raise VaultError(400, str(exc)) from None
    return Answer(200, _seal_status(core), None)


async def _init(core: VaultCore, call: Call) -> Answer:
    if call.operation != "create-or-update":
        raise VaultError(405, "unsupported operation")
    if core.seal.initialized:
        raise VaultError(400, "Vault is already initialized")
    shares, threshold = call.body.get("secret_shares"), call.body.get("secret_threshold")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (shares, threshold)):
        raise VaultError(400, "secret_shares and secret_threshold are required integers")
    if call.body.get("pgp_keys") or call.body.get("stored_shares"):
        raise VaultError(400, "pgp_keys and stored_shares are not supported")
    config = SealConfig(int(shares), int(threshold))  # type: ignore[arg-type]
    try:
        config.check()
    except ValueError as exc:
        raise VaultError(400, str(exc)) from None
    keys, root_token = await core.initialize(config)
    body = {
        "keys": [key.hex() for key in keys],
        "keys_base64": [base64.b64encode(key).decode() for key in keys],
        "root_token": root_token,
    }
    return Answer(200, body, {"data": body})


async def authenticated_sys(core: VaultCore, call: Call, acl: Acl) -> Answer:
    """``sys/`` paths that need a token (the vault is unsealed here)."""
    path, op = call.path, call.operation
    if path == "sys/seal" and op == "create-or-update":
        _require(acl, path, "update", "sudo")
        core.seal_now()
        return no_content()
    if path == "sys/rotate" and op == "create-or-update":
        _require(acl, path, "update", "sudo")
        await core.rotate()
        return no_content()
    if path == "sys/key-status" and op == "read":
        _require(acl, path, "read")
        keyring = core.seal.keyring
        assert keyring is not None
        installed = keyring.installed.get(keyring.active, 0.0)
        return ok(call, {"term": keyring.active, "install_time": rfc3339(installed), "encryptions": None})
    if path in ("sys/policy", "sys/policies/acl") and op in ("read", "list"):
        _require(acl, path, "list" if op == "list" else "read")
        assert core.unsealed is not None
        names = await core.unsealed.policy_names()
        return ok(call, {"keys": names, "policies": names} if path == "sys/policy" else {"keys": names})
    if path.startswith(MOUNTS_PREFIX) and op == "read":
        return _mount(call, acl, path[len(MOUNTS_PREFIX) :])
    for prefix in ("sys/policy/", "sys/policies/acl/"):
        if path.startswith(prefix) and len(path) > len(prefix):
            return await _policy(core, call, acl, path[len(prefix) :], prefix == "sys/policy/")
    if not acl.capabilities(path):
        raise VaultError(403, "permission denied")  # as Vault: the ACL answers before the router
    raise VaultError(404, f'no handler for route "{path}". route entry not found.')


def _mount(call: Call, acl: Acl, path: str) -> Answer:
    """Which mount serves ``path`` (what the `vault`/`bao` CLIs ask before any `kv` command): only the
    KV v2 mount at ``secret/``, shown to a token that has some capability under it, as Vault does."""
    if path != KV_MOUNT and not path.startswith(KV_MOUNT + "/"):
        denied = (
            "preflight capability check returned 403, please ensure client's policies grant access to path"
        )
        raise VaultError(400, f'{denied} "{path}/"')
    if not acl.has_any_under(KV_MOUNT + "/"):
        raise VaultError(403, "permission denied")
    mount = {
        "path": KV_MOUNT + "/",
        "type": "kv",
        "description": "key/value secret storage",
        "options": {"version": "2"},
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
        "accessor": "kv_garrison",
        "local": False,
        "seal_wrap": False,
        "external_entropy_access": False,
        "uuid": "",
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
    }
    return ok(call, mount)


async def _policy(core: VaultCore, call: Call, acl: Acl, name: str, legacy: bool) -> Answer:
    assert core.unsealed is not None
    op = call.operation
    name = name.lower()
    if op == "read":
        _require(acl, call.path, "read")
        policy = await core.unsealed.policy(name)
        if policy is None:
            raise VaultError(404)
        key = "rules" if legacy else "policy"
        return ok(call, {"name": name, key: policy.text})
    if op == "create-or-update":
        exists = await core.unsealed.policy(name) is not None
        _require(acl, call.path, "update" if exists else "create")
        text = call.body.get("policy", call.body.get("rules"))
        if not isinstance(text, str):
            raise VaultError(400, "'policy' parameter not supplied or empty")
        try:
            await core.unsealed.put_policy(name, text)
        except PolicyError as exc:
            raise VaultError(400, str(exc)) from None
        return no_content()
    if op == "delete":
        _require(acl, call.path, "delete")
        try:
            await core.unsealed.delete_policy(name)
        except PolicyError as exc:
            raise VaultError(400, str(exc)) from None
        return no_content()
    raise VaultError(405, "unsupported operation")


def _require(acl: Acl, path: str, *capabilities: str) -> None:
    for capability in capabilities:
        if not acl.allows(path, capability):
            raise VaultError(403, "permission denied")
