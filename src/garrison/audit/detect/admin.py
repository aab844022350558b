"""The collector's ``/suppressions`` admin sub-API (registered on the collector's AdminApi).

``GET /suppressions`` lists the suppressions in force; ``POST /suppressions?rule=R&actor=ip:1.2.3.4
&for=1h&reason=...`` suppresses alerts of rule R (or any rule) for that actor (or any actor) until
then; ``DELETE /suppressions?rule=R&actor=A`` lifts one. Parameters travel in the query string (the
admin listener takes no bodies); admin/auth.py's guard has already required the admin token for
POST and DELETE and checked Host and Origin. Each change is recorded as an ``audit.suppression``
event in the log, so silencing an alert leaves a trail. The set is bounded: 507 when full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from garrison.admin.api import json_answer, query_params
from garrison.audit.detect.suppressions import ANY, Suppression, Suppressions, SuppressionsFull
from garrison.audit.pipeline import Appender
from garrison.config.units import parse_duration
from garrison.events.schema import Event
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = ["suppressions_api"]


def _entry(s: Suppression) -> dict[str, object]:
    return {"rule": s.rule, "actor": s.actor, "until": s.until, "reason": s.reason, "created": s.created}


def suppressions_api(
    store: Suppressions, appender: Appender | None = None
) -> Callable[[SimpleRequest], Awaitable[SimpleResponse]]:
    """The handler for ``api.register("/suppressions", ...)``; ``appender`` records each change."""

    async def record(action: str, params: dict[str, str], until: float | None) -> None:
        if appender is None:
            return
        details: dict[str, object] = {"action": action, "rule": params.get("rule") or ANY}
        details["actor"] = params.get("actor") or ANY
        if until is not None:
            details["until"] = until
            details["reason"] = params.get("reason", "")[:200]
        await appender(
            [Event(component="audit", type="audit.suppression", target=str(details["rule"]), details=details)]
        )

    async def handle(request: SimpleRequest) -> SimpleResponse:
        method = request.method
        try:
            params = query_params(request.target.partition(b"?")[2])
            if method in (b"GET", b"HEAD"):
                return json_answer(200, {"suppressions": [_entry(s) for s in store.entries()]})
            if method == b"POST":
                seconds = parse_duration(params.get("for", "1h"))
                entry = store.add(params.get("rule"), params.get("actor"), seconds, params.get("reason", ""))
                await record("suppress", params, entry.until)
                return json_answer(200, {"suppressed": _entry(entry)})
            if method == b"DELETE":
                removed = store.remove(params.get("rule"), params.get("actor"))
                if removed:
                    await record("lift", params, None)
                return json_answer(200, {"lifted": removed})
        except ValueError as exc:
            return json_answer(400, {"error": str(exc)})
        except SuppressionsFull as exc:
            return json_answer(507, {"error": f"{exc}: lift some or raise audit.detection.max_suppressions"})
        return SimpleResponse(405, b"method not allowed\n", headers=b"allow: GET, POST, DELETE\r\n")

    return handle
