"""The auth methods as mounts: ``sys/auth`` (list), ``sys/auth/<path>`` (enable, disable), and the
routing of ``auth/approle/`` and ``auth/cert/``.

``token/``, ``approle/`` and ``cert/`` are always mounted (built in, as ``token/`` is in Vault), so
enabling one again answers as Vault answers a second mount on a path in use (400 ``path is already
in use at approle/``), which setup scripts already handle; other types are not in the catalogue, and
the built-in mounts cannot be disabled. Listing needs ``read`` on ``sys/auth``; enabling and
disabling need ``sudo`` too, as in Vault.

Logins (``auth/approle/login``, ``auth/cert/login``) take no token: ``login`` is called before the
token check, and any other path of the mounts after it.
"""

from __future__ import annotations

from typing import Any

from garrison.vault.answers import Answer, Call, VaultError, ok
from garrison.vault.approle_api import approle_api, approle_login
from garrison.vault.cert_auth import CertLogin
from garrison.vault.core import Unsealed
from garrison.vault.policy import Acl

__all__ = ["LOGIN_PATHS", "auth_mounts", "login"]

LOGIN_PATHS = frozenset({"auth/approle/login", "auth/cert/login"})
BUILT_IN = {"token/": "token", "approle/": "approle", "cert/": "cert"}
DESCRIPTIONS = {
    "token": "token based credentials",
    "approle": "role_id and secret_id (machines outside the mesh)",
    "cert": "Garrison workload certificates (SPIFFE IDs of services in garrison.yaml)",
}


async def login(unsealed: Unsealed, cert: CertLogin, call: Call) -> Answer:
    if call.path == "auth/approle/login":
        return await approle_login(unsealed.approle, call)
    return await cert.login(unsealed.tokens, call)


def _mount(path: str, kind: str) -> dict[str, Any]:
    return {
        "accessor": f"auth_{kind}_garrison",
        "config": {
            "default_lease_ttl": 0,
            "max_lease_ttl": 0,
            "force_no_cache": False,
            "token_type": "default-service",
        },
        "description": DESCRIPTIONS[kind],
        "external_entropy_access": False,
        "local": False,
        "options": None,
        "plugin_version": "",
        "running_plugin_version": f"v1.15.0+builtin.{kind}",
        "running_sha256": "",
        "seal_wrap": False,
        "type": kind,
        "uuid": "",
    }


async def auth_mounts(unsealed: Unsealed, call: Call, acl: Acl) -> Answer:
    """``sys/auth`` and ``sys/auth/<path>``; anything below ``auth/approle/`` and ``auth/cert/``."""
    path, op = call.path, call.operation
    if path.startswith("auth/approle/"):
        return await approle_api(unsealed.approle, call, acl)
    if path.startswith("auth/cert/"):
        if not acl.capabilities(path):
            raise VaultError(403, "permission denied")
        # Certificates are the mesh CA's and bindings are garrison.yaml's: nothing to configure here.
        raise VaultError(404, f'no handler for route "{path}". route entry not found.')
    if path == "sys/auth":
        if op != "read":
            raise VaultError(405, "unsupported operation")
        _require(acl, path, "read")
        mounts = {mount: _mount(mount, kind) for mount, kind in BUILT_IN.items()}
        answer = ok(call, mounts)
        assert answer.payload is not None
        answer.payload.update(mounts)  # Vault answers the mounts at the top level too (hvac reads both)
        return answer
    mount = path[len("sys/auth/") :].strip("/") + "/"
    if op == "create-or-update":
        _require(acl, path, "update", "sudo")
        kind = call.body.get("type")
        if mount in BUILT_IN:
            raise VaultError(400, f"path is already in use at {mount}")
        if kind in BUILT_IN.values():
            raise VaultError(400, f"{kind} is built in and mounted once, at auth/{kind}/")
        raise VaultError(400, f"plugin not found in the catalog: {kind}")
    if op == "delete":
        _require(acl, path, "delete", "sudo")
        if mount in BUILT_IN:
            raise VaultError(400, f"cannot disable auth/{mount}: it is built in")
        raise VaultError(400, f"no matching mount at auth/{mount}")
    raise VaultError(405, "unsupported operation")


def _require(acl: Acl, path: str, *capabilities: str) -> None:
    for capability in capabilities:
        if not acl.allows(path, capability):
            raise VaultError(403, "permission denied")
