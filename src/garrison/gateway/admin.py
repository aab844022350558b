"""The admin API's blocklist endpoint, shared by a single gateway and the worker supervisor.

``GET /blocklist`` lists the blocks in force; ``POST /blocklist?ip=A&for=15m&reason=R`` blocks an
address (the hook automated responses use); ``DELETE /blocklist?ip=A`` lifts a block. Parameters
travel in the query string because the admin listener accepts no request bodies. The listener is
on loopback by default and has no authentication of its own: whoever can reach it can block.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from garrison.config.units import parse_duration
from garrison.gateway.blocklist import Blocklist, BlocklistUnavailable
from garrison.gateway.simplehttp import SimpleResponse

JSON = b"application/json"
MAX_BLOCK_SECONDS = 365 * 24 * 3600.0


def _json(status: int, payload: Any) -> SimpleResponse:
    return SimpleResponse(status, json.dumps(payload, separators=(",", ":")).encode() + b"\n", JSON)


def _query(raw: bytes) -> dict[str, str]:
    try:
        parsed = parse_qs(raw.decode("ascii"), strict_parsing=bool(raw), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("malformed query string") from None
    return {key: values[-1] for key, values in parsed.items()}


async def blocklist_api(blocklist: Blocklist, method: bytes, query: bytes) -> SimpleResponse:
    try:
        params = _query(query)
        if method in (b"GET", b"HEAD"):
            entries = [{"ip": e.ip, "until": e.until, "reason": e.reason} for e in blocklist.entries()]
            return _json(200, {"blocked": entries})
        ip = params.get("ip")
        if not ip:
            raise ValueError("the `ip` parameter is required")
        if method == b"POST":
            seconds = parse_duration(params.get("for", "15m"))
            if not 0 < seconds <= MAX_BLOCK_SECONDS:
                raise ValueError("`for` must be between 1s and 365 days")
            entry = await blocklist.block(ip, seconds, params.get("reason", "")[:200])
            return _json(200, {"blocked": {"ip": entry.ip, "until": entry.until, "reason": entry.reason}})
        if method == b"DELETE":
            return _json(200, {"unblocked": await blocklist.unblock(ip)})
    except ValueError as exc:
        return _json(400, {"error": str(exc)})
    except BlocklistUnavailable:
        return _json(503, {"error": "the shared blocklist store is unreachable; nothing was changed"})
    return SimpleResponse(405, b"method not allowed\n", headers=b"allow: GET, POST, DELETE\r\n")
