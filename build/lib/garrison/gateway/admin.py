"""The gateway's admin API: the shared AdminApi (admin/api.py: /live, /ready, /metrics) with the
gateway's sub-APIs registered on it.

``GET /blocklist`` lists the blocks in force; ``POST /blocklist?ip=A&for=15m&reason=R`` blocks an
address (the hook automated responses use); ``DELETE /blocklist?ip=A`` lifts a block.

``GET /revocations`` lists the revoked token ids; ``POST /revocations?jti=J&until=EPOCH`` (the
token's ``exp``) or ``POST /revocations?jti=J&for=10m`` makes every token carrying that ``jti`` fail
with 401 ``invalid_token``, cached or not.

Parameters travel in the query string because the admin listener accepts no request bodies. Who may
call these is decided before they run (admin/auth.py: the admin token or a client certificate for
every change, Host and Origin checks for every request).

Both sets are bounded, since whoever holds the credential (or an automated response gone wrong) must
not be able to grow them without limit: a block lasts at most ``gateway.blocklist.max_duration``, a
revocation at most a day; a new member beyond ``max_entries`` is refused with 507 and counted in
``garrison_gateway_admin_refused_total`` (renewing a member in force is always allowed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from garrison.admin.api import AdminApi, Metrics, Readiness, json_answer, query_params
from garrison.config.units import parse_duration
from garrison.gateway.blocklist import Blocklist
from garrison.store.shared_set import SharedSetFull, SharedSetUnavailable
from garrison.tokens.revocations import Revocations
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

MAX_BLOCK_SECONDS = 365 * 24 * 3600.0  # the most `gateway.blocklist.max_duration` may be

Handler = Callable[[bytes, dict[str, str]], Awaitable[SimpleResponse | None]]

__all__ = ["blocklist_api", "gateway_admin_api", "revocations_api"]


def gateway_admin_api(
    readiness: Readiness,
    metrics: Metrics,
    blocklist: Blocklist,
    revocations: Revocations,
    max_block_seconds: Callable[[], float],
    refusals: Refusals,
) -> AdminApi:
    """A single gateway process's admin API. ``max_block_seconds`` is read per request: a reload
    may change `gateway.blocklist.max_duration`."""
    api = AdminApi(readiness, metrics)

    def blocks(request: SimpleRequest) -> Awaitable[SimpleResponse]:
        query = request.target.partition(b"?")[2]
        return blocklist_api(blocklist, request.method, query, max_block_seconds(), refusals)

    def revoked(request: SimpleRequest) -> Awaitable[SimpleResponse]:
        query = request.target.partition(b"?")[2]
        return revocations_api(revocations, request.method, query, refusals)

    api.register("/blocklist", blocks)
    api.register("/revocations", revoked)
    return api


# (set, reason) -> count of changes refused for the set's own limits; read by the metrics collector.
Refusals = dict[tuple[str, str], int]


async def _answer(
    handler: Handler, method: bytes, query: bytes, store: str, allow: bytes, refusals: Refusals
) -> SimpleResponse:
    """Run ``handler``; bad input is 400, a full set 507, an unreachable shared store 503, an unknown
    method 405."""
    try:
        response = await handler(method, query_params(query))
    except ValueError as exc:
        return json_answer(400, {"error": str(exc)})
    except SharedSetFull as exc:
        refusals[(store, "full")] = refusals.get((store, "full"), 0) + 1
        return json_answer(507, {"error": f"{exc}: lift entries or raise max_entries"})
    except SharedSetUnavailable:
        return json_answer(503, {"error": f"the shared {store} store is unreachable; nothing was changed"})
    if response is None:
        return SimpleResponse(405, b"method not allowed\n", headers=b"allow: %s\r\n" % allow)
    return response


async def blocklist_api(
    blocklist: Blocklist, method: bytes, query: bytes, max_seconds: float, refusals: Refusals
) -> SimpleResponse:
    async def handle(method: bytes, params: dict[str, str]) -> SimpleResponse | None:
        if method in (b"GET", b"HEAD"):
            entries = [{"ip": e.ip, "until": e.until, "reason": e.reason} for e in blocklist.entries()]
            return json_answer(200, {"blocked": entries})
        ip = params.get("ip")
        if not ip:
            raise ValueError("the `ip` parameter is required")
        if method == b"POST":
            seconds = parse_duration(params.get("for", "15m"))
            if not 0 < seconds <= max_seconds:
                raise ValueError(
                    f"`for` must be positive and at most {max_seconds:g}s (gateway.blocklist.max_duration)"
                )
            entry = await blocklist.block(ip, seconds, params.get("reason", "")[:200])
            blocked = {"ip": entry.ip, "until": entry.until, "reason": entry.reason}
            return json_answer(200, {"blocked": blocked})
        if method == b"DELETE":
            return json_answer(200, {"unblocked": await blocklist.unblock(ip)})
        return None

    return await _answer(handle, method, query, "blocklist", b"GET, POST, DELETE", refusals)


def _revocation_until(params: dict[str, str]) -> float:
    """Epoch seconds from ``until`` (the token's exp) or ``for`` (a duration from now), exactly one."""
    if ("until" in params) == ("for" in params):
        raise ValueError("give either `until` (epoch seconds: the token's exp) or `for` (such as 10m)")
    if "for" in params:
        seconds = parse_duration(params["for"])
        if not seconds > 0:
            raise ValueError("`for` must be positive")
        return time.time() + seconds
    try:
        until = float(params["until"])
    except ValueError:
        raise ValueError("`until` must be epoch seconds, such as the token's exp") from None
    if not math.isfinite(until):
        raise ValueError("`until` must be epoch seconds, such as the token's exp")
    return until


async def revocations_api(
    revocations: Revocations, method: bytes, query: bytes, refusals: Refusals
) -> SimpleResponse:
    async def handle(method: bytes, params: dict[str, str]) -> SimpleResponse | None:
        if method in (b"GET", b"HEAD"):
            entries = [{"jti": r.jti, "until": r.until} for r in revocations.entries()]
            return json_answer(200, {"revoked": entries})
        if method == b"POST":
            jti = params.get("jti")
            if not jti:
                raise ValueError("the `jti` parameter is required")
            revocation = await revocations.revoke(jti, _revocation_until(params))
            return json_answer(200, {"revoked": {"jti": revocation.jti, "until": revocation.until}})
        return None

    return await _answer(handle, method, query, "revocations", b"GET, POST", refusals)
