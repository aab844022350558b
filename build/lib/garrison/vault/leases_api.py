"""``sys/leases/``: lookup, renew, revoke, revoke-prefix, revoke-force, as Vault routes them.

``lookup``, ``renew`` and ``revoke`` take the lease id in the body (or, for renew and revoke, as the rest
of the path) and need ``update`` on their path; listing ``lookup/<prefix>`` needs ``list`` and
``sudo``; ``revoke-prefix/<prefix>`` and ``revoke-force/<prefix>`` need ``update`` and ``sudo``, as in
Vault: they end many secrets at once. Unknown leases: 400 ``invalid lease`` on lookup, a no-op on revoke.
"""

from __future__ import annotations

from garrison.vault.answers import Answer, Call, VaultError, envelope, no_content, ok
from garrison.vault.core import Unsealed
from garrison.vault.durations import parse_vault_duration, rfc3339
from garrison.vault.leases import EngineFailed, LeaseError
from garrison.vault.policy import Acl

__all__ = ["PREFIX", "leases_api"]

PREFIX = "sys/leases/"


async def leases_api(unsealed: Unsealed, call: Call, acl: Acl) -> Answer:
    action, _, rest = call.path[len(PREFIX) :].partition("/")
    op = call.operation
    leases = unsealed.leases
    if action == "lookup" and op == "list":
        _require(acl, call.path + "/", "list", "sudo")
        keys = await leases.list_keys(rest + "/" if rest else "")
        if not keys:
            raise VaultError(404)
        return ok(call, {"keys": keys})
    if action not in ("lookup", "renew", "revoke", "revoke-prefix", "revoke-force"):
        if not acl.capabilities(call.path):
            raise VaultError(403, "permission denied")
        raise VaultError(404, f'no handler for route "{call.path}". route entry not found.')
    if op != "create-or-update":
        raise VaultError(405, "unsupported operation")
    if action in ("revoke-prefix", "revoke-force"):
        _require(acl, call.path, "update", "sudo")
        if not rest:
            raise VaultError(400, "missing prefix")
        await _revoke_prefix(unsealed, rest, action == "revoke-force")
        return no_content()
    _require(acl, call.path, "update")
    lease_id = call.body.get("lease_id", call.body.get("url_lease_id")) or rest
    if not isinstance(lease_id, str) or not lease_id:
        raise VaultError(400, "lease_id must be specified")
    if action == "lookup":
        lease = await leases.lookup(lease_id)
        if lease is None:
            raise VaultError(400, "invalid lease")
        now = leases.clock()
        data = {
            "id": lease.lease_id,
            "path": lease.lease_id.rsplit("/", 1)[0],
            "issue_time": rfc3339(lease.issue_time),
            "expire_time": rfc3339(lease.expire_time),
            "last_renewal": rfc3339(lease.last_renewal_time) if lease.last_renewal_time else None,
            "renewable": lease.retry_time is None,
            "ttl": max(0, int(lease.expire_time - now)),
        }
        return ok(call, data)
    if action == "renew":
        try:
            increment = parse_vault_duration(call.body.get("increment"))
            lease, warnings = await leases.renew(lease_id, increment)
        except (LeaseError, ValueError) as exc:
            raise VaultError(400, str(exc)) from None
        payload = envelope(call.request_id, None, warnings=warnings or None)
        payload.update(
            lease_id=lease.lease_id,
            renewable=True,
            lease_duration=max(0, round(lease.expire_time - leases.clock())),
        )
        return Answer(200, payload, payload)
    try:
        await leases.revoke(lease_id)
    except EngineFailed as exc:
        raise VaultError(400, f"failed to revoke lease (it is kept and retried): {exc}") from None
    return no_content()


async def _revoke_prefix(unsealed: Unsealed, prefix: str, force: bool) -> None:
    try:
        await unsealed.leases.revoke_prefix(prefix.rstrip("/") + "/", force=force)
    except EngineFailed as exc:
        raise VaultError(400, f"failed to revoke prefix (the leases are kept and retried): {exc}") from None


def _require(acl: Acl, path: str, *capabilities: str) -> None:
    for capability in capabilities:
        if not acl.allows(path, capability):
            raise VaultError(403, "permission denied")
