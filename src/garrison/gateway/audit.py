"""The gateway's audit events: ``http.request``, ``token.rejected`` and ``gateway.blocked``.

Cheap on the request path: a request hands the emitter a tuple of what it already holds
(``Emitter.defer``); its line is built later in the emitter's pump, off the request's latency, and by
hand (``request_line``), as the access log builds its lines: the ``Event`` dataclass, its dict and
``json.dumps`` cost several times more per request, on the same core (``request_event`` is the
reference the tests hold the hand-built line to). Every %s field is either already JSON
(``log_subject``, the route's ``log_name``), text the gateway restricted to a JSON-safe alphabet
(method, normalised path, validated host, request and trace ids, an IP address), or escaped with
the json module's C string encoder (query, User-Agent, Referer, client id).
``audit.emitter.gateway_requests`` chooses which requests become events: all
(the Sigma web rules see every request), refused (status >= 400), none.

``token.rejected`` carries ``token_hint`` (an HMAC of the presented credential under a key kept in
``state_dir/audit/hint.key``, shared by the workers of a host), never the token, and the reason:
revoked, expired, or invalid (with the verifier's own reason in details). ``gateway.blocked``
reports a client refused by the blocklist or the IP rules; a blocked client keeps knocking, so a
client's refusals are folded into one event per ``BLOCKED_REPEAT`` seconds (``details.repeats``),
remembered in a bounded dict.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring
from pathlib import Path
from random import getrandbits as _bits  # event ids need uniqueness, not secrecy: 1/3 of urandom's cost
from typing import TYPE_CHECKING, Any, ClassVar

from garrison.admin.auth import load_or_create_admin_token
from garrison.events.emitter import Emitter
from garrison.events.schema import Actor, Event, token_hint

if TYPE_CHECKING:
    from garrison.gateway.exchange import Exchange
    from garrison.tokens.jwt import AuthError

__all__ = ["GatewayAudit", "hint_key"]

BLOCKED_REPEAT = 10.0  # seconds between two gateway.blocked events about one client
BLOCKED_CAP = 4096  # clients whose last gateway.blocked event is remembered
MODES = {"none": 0, "refused": 1, "all": 2}
TOKEN_REASONS = {"revoked": "revoked", "expired": "expired"}  # any other reason: "invalid"

RequestFields = tuple[Any, ...]


def hint_key(state_dir: Path) -> bytes:
    """The key of token hints, created once per state directory (0600, O_EXCL: workers agree)."""
    return load_or_create_admin_token(state_dir / "audit" / "hint.key").encode()


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    return "failure" if status < 500 else "error"


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace")[:1024] if value else None


def request_event(fields: RequestFields) -> Event:
    """``http.request`` from what ``GatewayAudit.request`` captured (run in the emitter's pump)."""
    (when, method, path, query, status, agent, referer, host, bytes_out, seconds, route, ip, subject,
     client, request_id, trace_id, _) = fields  # fmt: skip
    details: dict[str, Any] = {
        "method": method.decode("latin-1"),
        "path": path.decode("latin-1"),
        "status": status,
        "host": host.decode("latin-1"),
        "bytes_out": bytes_out,
        "duration_ms": round(seconds * 1000, 3),
        "route": route,
    }
    if query:
        details["query"] = query.decode("latin-1")[:1024]
    if agent:
        details["user_agent"] = _text(agent)
    if referer:
        details["referer"] = _text(referer)
    return Event(
        component="gateway",
        type="http.request",
        outcome=_outcome(status),  # type: ignore[arg-type]
        actor=Actor(
            subject=json.loads(subject) if subject != b"null" else None, client=client or None, ip=ip
        ),
        target=route,
        trace_id=trace_id.decode("latin-1"),
        request_id=request_id.decode("latin-1"),
        details=details,
        time=when,
    )


LINE = (
    b'{"v":1,"id":"%s","time":"%s.%06dZ","component":"gateway","instance":%s,"type":"http.request",'
    b'"outcome":"%s","actor":{%s"ip":"%s"},"target":%s,"trace_id":"%s","request_id":"%s",'
    b'"details":{"method":"%s","path":"%s","status":%d,"host":"%s","bytes_out":%d,"duration_ms":%.3f,'
    b'"route":%s%s}}'
)


def _quoted(value: str) -> bytes:
    quoted: str = encode_basestring(value)
    return quoted.encode()


class _Seconds:
    """``YYYY-mm-ddTHH:MM:SS`` of a second, formatted once per second."""

    second: ClassVar[int] = -1
    text: ClassVar[bytes] = b""

    @classmethod
    def of(cls, when: float) -> tuple[bytes, int]:
        second = int(when)
        if second != cls.second:
            cls.second, cls.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return cls.text, int((when - second) * 1e6)


def request_line(fields: RequestFields, instance: bytes) -> bytes:
    """The wire form of ``request_event(fields)`` (with ``instance``, JSON-quoted), built by hand."""
    (when, method, path, query, status, agent, referer, host, bytes_out, seconds, _, ip, subject,
     client, request_id, trace_id, route_json) = fields  # fmt: skip
    actor = b"" if subject == b"null" else b'"subject":%s,' % subject
    if client:
        actor += b'"client":%s,' % _quoted(client)
    extra = b""
    if query:
        extra += b',"query":%s' % _quoted(query.decode("latin-1")[:1024])
    if agent:
        extra += b',"user_agent":%s' % _quoted(agent.decode("utf-8", "replace")[:1024])
    if referer:
        extra += b',"referer":%s' % _quoted(referer.decode("utf-8", "replace")[:1024])
    prefix, micros = _Seconds.of(when)
    return LINE % (
        b"%032x" % _bits(128), prefix, micros, instance, _outcome(status).encode(), actor,
        ip.encode(), route_json, trace_id, request_id, method, path, status, host, bytes_out,
        seconds * 1000, route_json, extra,
    )  # fmt: skip


def refusal_event(fields: RequestFields) -> Event:
    """``http.request`` of a request refused before it was parsed whole (nothing of it echoed)."""
    when, ip, status, code = fields
    return Event(
        component="gateway",
        type="http.request",
        outcome=_outcome(status),  # type: ignore[arg-type]
        actor=Actor(ip=ip),
        details={"status": status, "error": code},
        time=when,
    )


class GatewayAudit:
    """One gateway process's events (its emitter: component ``gateway``, instance the worker)."""

    def __init__(self, emitter: Emitter, mode: str, key: bytes, instance: str = "") -> None:
        self.emitter = emitter
        self._instance = _quoted(instance)
        self.mode = MODES[mode]
        self._key = key
        self._blocked: dict[str, tuple[float, int]] = {}  # ip -> (last event, refusals since)

    def request(self, exchange: Exchange, seconds: float) -> None:
        """Per request, from ``GatewayServer.record``: a tuple of references, no formatting."""
        status = exchange.status
        if self.mode == 2 or (self.mode == 1 and status >= 400):
            headers = exchange.client_headers
            self.emitter.defer(
                self._line,
                (time.time(), exchange.method, exchange.path, exchange.query, status,
                 headers.user_agent if headers is not None else None,
                 headers.referer if headers is not None else None,
                 exchange.host, exchange.bytes_out, seconds, exchange.route.name, exchange.client_ip,
                 exchange.log_subject, exchange.client, exchange.request_id, exchange.trace_id,
                 exchange.route.log_name),
            )  # fmt: skip

    def _line(self, fields: RequestFields) -> bytes:
        return request_line(fields, self._instance)

    def refusal(self, ip: str, status: int, code: str) -> None:
        if self.mode:
            self.emitter.defer(refusal_event, (time.time(), ip, status, code))

    def token_rejected(self, exchange: Exchange, refusal: AuthError) -> None:
        """A presented token or API key refused (401 invalid_token); the hint, never the credential."""
        presented = exchange.api_key[0] if exchange.api_key else None
        if exchange.authorization:
            presented = exchange.authorization[0].partition(b" ")[2] or exchange.authorization[0]
        if presented is None or refusal.error != "invalid_token":
            return
        detail = getattr(refusal, "reason", "api_key")
        self.emitter.emit(
            Event(
                component="gateway",
                type="token.rejected",
                outcome="denied",
                actor=Actor(ip=exchange.client_ip),
                target=token_hint(self._key, presented),
                trace_id=exchange.trace_id.decode("latin-1"),
                request_id=exchange.request_id.decode("latin-1"),
                details={"reason": TOKEN_REASONS.get(detail, "invalid"), "detail": detail,
                         "route": exchange.route.name},
            )
        )  # fmt: skip

    def blocked(self, ip: str, reason: str) -> None:
        """A client refused by the blocklist or the IP rules: one event per client per BLOCKED_REPEAT."""
        now = time.monotonic()
        seen = self._blocked
        last = seen.get(ip)
        if last is not None and now - last[0] < BLOCKED_REPEAT:
            seen[ip] = (last[0], last[1] + 1)
            return
        if last is None and len(seen) >= BLOCKED_CAP:
            del seen[next(iter(seen))]
        seen.pop(ip, None)
        seen[ip] = (now, 0)
        self.emitter.emit(
            Event(
                component="gateway",
                type="gateway.blocked",
                outcome="denied",
                actor=Actor(ip=ip),
                details={"reason": reason, "repeats": last[1] if last is not None else 0},
            )
        )
