"""The gateway's audit events without sockets: the hand-built ``http.request`` line is the event the
schema reads (held to ``request_event``, the dataclass form), whatever the client put in its headers;
``gateway_requests`` modes; ``token.rejected`` carries a hint, never the credential; a blocked client's
knocking is folded into one event per interval, in a bounded dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from garrison.events.schema import Event
from garrison.gateway import audit as gateway_audit
from garrison.gateway.audit import GatewayAudit, request_event, request_line
from garrison.tokens.jwt import AuthError, TokenRejected


class Recorder:
    """An emitter that keeps what it is given, built at once."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def defer(self, build: Callable[[Any], Event | bytes], arg: Any) -> None:
        built = build(arg)
        self.events.append(Event.from_json(built) if isinstance(built, bytes) else built)

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def exchange(status: int = 200, **fields: Any) -> Any:
    base = dict(
        status=status, method=b"GET", path=b"/api/orders/1", query=b"", host=b"shop.test", bytes_out=42,
        route=SimpleNamespace(name="orders", log_name=b'"orders"'), client_ip="203.0.113.9",
        log_subject=b"null", client="", request_id=b"a" * 32, trace_id=b"b" * 32,
        client_headers=SimpleNamespace(user_agent=None, referer=None), authorization=[], api_key=[],
    )  # fmt: skip
    base.update(fields)
    return SimpleNamespace(**base)


def fields_of(ex: Any) -> tuple[Any, ...]:
    headers = ex.client_headers
    return (1796600000.123456, ex.method, ex.path, ex.query, ex.status, headers.user_agent, headers.referer,
            ex.host, ex.bytes_out, 0.0123, ex.route.name, ex.client_ip, ex.log_subject, ex.client,
            ex.request_id, ex.trace_id, ex.route.log_name)  # fmt: skip


@pytest.mark.parametrize(
    "agent",
    [
        b"curl/8.5",
        b'sqlmap"; DROP TABLE x; --',
        b"back\\slash \x01\x1f ctrl",
        "ünïcödé ☃".encode(),
        b"\xff\xfe",
    ],
)
def test_the_hand_built_line_is_the_event_the_schema_reads(agent: bytes) -> None:
    ex = exchange(
        404, query=b'q="../../etc/passwd"', log_subject=b'"alice"', client='web "app"',
        client_headers=SimpleNamespace(user_agent=agent, referer=b"https://evil.test/?a=\\"),
    )  # fmt: skip
    fields = fields_of(ex)
    read = Event.from_json(request_line(fields, b'"gw-1"'))
    expected = dataclasses.replace(request_event(fields), instance="gw-1")
    assert abs(read.time - expected.time) < 1e-5
    assert dataclasses.replace(read, id="", time=0) == dataclasses.replace(expected, id="", time=0)
    assert read.outcome == "failure" and read.actor.subject == "alice" and read.actor.client == 'web "app"'
    assert read.details["query"] == 'q="../../etc/passwd"'


def test_outcomes_by_status() -> None:
    recorder = Recorder()
    audit = GatewayAudit(recorder, "all", b"k" * 32)
    for status in (200, 301, 401, 403, 404, 429, 502):
        audit.request(exchange(status), 0.001)
    outcomes = [event.outcome for event in recorder.events]
    assert outcomes == ["success", "success", "denied", "denied", "failure", "failure", "error"]


@pytest.mark.parametrize(("mode", "expected"), [("all", [200, 404]), ("refused", [404]), ("none", [])])
def test_gateway_requests_mode(mode: str, expected: list[int]) -> None:
    recorder = Recorder()
    audit = GatewayAudit(recorder, mode, b"k" * 32)
    audit.request(exchange(200), 0.001)
    audit.request(exchange(404), 0.001)
    audit.refusal("198.51.100.1", 400, "bad_request")
    statuses = [event.details["status"] for event in recorder.events]
    assert statuses == ([*expected, 400] if expected else [])


def test_token_rejected_carries_a_hint_never_the_token() -> None:
    recorder = Recorder()
    audit = GatewayAudit(recorder, "none", b"k" * 32)
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    bearer = exchange(401, authorization=[f"Bearer {token}".encode()])
    audit.token_rejected(bearer, TokenRejected("revoked"))
    audit.token_rejected(bearer, TokenRejected("expired"))
    audit.token_rejected(bearer, TokenRejected("bad_signature"))
    audit.token_rejected(exchange(401, api_key=[b"gk_secret"]), AuthError("invalid_token", "no", 401))
    audit.token_rejected(exchange(401), AuthError("unauthorized", "no token", 401))  # nothing presented
    audit.token_rejected(bearer, AuthError("insufficient_scope", "scope", 403))  # not a bad token
    reasons = [(event.details["reason"], event.details["detail"]) for event in recorder.events]
    assert reasons == [("revoked", "revoked"), ("expired", "expired"), ("invalid", "bad_signature"),
                       ("invalid", "api_key")]  # fmt: skip
    hints = {event.target for event in recorder.events[:3]}
    assert len(hints) == 1 and next(iter(hints)).startswith("hmac:")  # one token, one hint
    text = repr([event.to_dict() for event in recorder.events])
    assert token not in text and "gk_secret" not in text and "c2lnbmF0dXJl" not in text


def test_a_blocked_client_is_reported_once_per_interval_in_a_bounded_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(gateway_audit.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(gateway_audit, "BLOCKED_CAP", 3)
    recorder = Recorder()
    audit = GatewayAudit(recorder, "none", b"k" * 32)
    for _ in range(5):
        audit.blocked("203.0.113.9", "blocklist")
    now[0] += gateway_audit.BLOCKED_REPEAT
    audit.blocked("203.0.113.9", "blocklist")
    assert [event.details["repeats"] for event in recorder.events] == [0, 4]
    for i in range(10):
        audit.blocked(f"198.51.100.{i}", "ip_rules")
    assert len(audit._blocked) == 3  # bounded
    assert len(recorder.events) == 12
