"""The identity provider's admin sub-APIs, the hooks automated responses (and operators) use:

- ``POST /token-families?subject=U&reason=R`` or ``?client_id=C&reason=R``: revoke every live refresh
  token family of a user (``subject``: the user id, the tokens' ``sub``, or a username) or of a
  client, and the access tokens issued from them, through the revocation path the gateways follow
  (``Provider.revoke``: the table introspection reads, Redis or the gateways' admin APIs) ->
  ``{"revoked_families": n, "revoked_tokens": m}``. Tokens of the client_credentials grant are not
  recorded in families and live at most ``access_token_ttl``.
- ``GET /lockouts``; ``POST /lockouts?username=U&for=15m&reason=R`` locks an account (sign-in is
  refused as for a throttle lockout) for at most 24 hours -> ``{"locked": {...}}``;
  ``DELETE /lockouts?username=U`` lifts it -> ``{"unlocked": true|false}``. A bounded set: one
  lock more than ``account_locks.MAX_LOCKS`` is 507.

Parameters travel in the query string (the admin listener takes no bodies); the guard in front
(admin/auth.py) has already required the admin token for every change. Each change is an audit event
(``token.revoked`` with ``by: admin``, ``auth.lockout`` / ``auth.unlock`` with ``source: admin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garrison.admin.api import json_answer, query_params
from garrison.config.units import parse_duration
from garrison.identity.account_locks import AccountLocks, LocksFull
from garrison.identity.auditing import IdentityAudit
from garrison.identity.families import TokenFamilies
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

if TYPE_CHECKING:
    from garrison.identity.users import UserStore

__all__ = ["lockouts_api", "token_families_api"]

REASON_LENGTH = 200


def _not_allowed(allow: bytes) -> SimpleResponse:
    return SimpleResponse(405, b"method not allowed\n", headers=b"allow: %s\r\n" % allow)


async def token_families_api(
    request: SimpleRequest, families: TokenFamilies, users: UserStore, audit: IdentityAudit
) -> SimpleResponse:
    if request.method != b"POST":
        return _not_allowed(b"POST")
    try:
        params = query_params(request.target.partition(b"?")[2])
    except ValueError as exc:
        return json_answer(400, {"error": str(exc)})
    subject, client_id = params.get("subject"), params.get("client_id")
    if bool(subject) == bool(client_id):
        return json_answer(400, {"error": "give exactly one of `subject` (a user) or `client_id`"})
    reason = params.get("reason", "")[:REASON_LENGTH]
    stored_reason = "admin:" + reason[:58]  # the family row keeps 64 characters
    if subject:
        families_n, tokens_n = await families.revoke_all(stored_reason, user_id=subject)
        known = await users.get_by_username(subject)  # a username names the same user
        if known is not None and known.user_id != subject:
            more = await families.revoke_all(stored_reason, user_id=known.user_id)
            families_n, tokens_n = families_n + more[0], tokens_n + more[1]
    else:
        families_n, tokens_n = await families.revoke_all(stored_reason, client_id=client_id)
    audit.emit(
        "token.revoked",
        subject=subject or None,
        client=client_id or None,
        kind="refresh_token_families",
        by="admin",
        reason=reason,
        revoked_families=families_n,
        access_tokens_revoked=tokens_n,
    )
    return json_answer(200, {"revoked_families": families_n, "revoked_tokens": tokens_n})


async def lockouts_api(request: SimpleRequest, locks: AccountLocks, audit: IdentityAudit) -> SimpleResponse:
    method = request.method
    if method in (b"GET", b"HEAD"):
        return json_answer(200, {"locked": [entry.to_json() for entry in await locks.entries()]})
    if method not in (b"POST", b"DELETE"):
        return _not_allowed(b"GET, POST, DELETE")
    try:
        params = query_params(request.target.partition(b"?")[2])
        username = params.get("username", "")
        if not username.strip():
            raise ValueError("the `username` parameter is required")
        if method == b"DELETE":
            lifted = await locks.unlock(username)
            audit.emit("auth.unlock", subject=username, source="admin", lifted=lifted)
            return json_answer(200, {"unlocked": lifted})
        reason = params.get("reason", "")[:REASON_LENGTH]
        entry = await locks.lock(username, parse_duration(params.get("for", "15m")), reason)
    except ValueError as exc:
        return json_answer(400, {"error": str(exc)})
    except LocksFull as exc:
        return json_answer(507, {"error": f"{exc}: lift locks or wait for them to end"})
    audit.lockout("user:" + entry.username, entry.until.timestamp(), source="admin", reason=reason)
    return json_answer(200, {"locked": entry.to_json()})
