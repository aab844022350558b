"""The identity provider's audit events (docs/audit.md, "Identity and vault events"): sign-ins, second
factors, lockouts, tokens issued, refreshed, replayed and revoked, failed client authentication, and
what the admin API did.

Each HTTP request sets a ``RequestContext`` (web.py wraps every route): the client address as resolved
after the trusted proxies, and the W3C trace id and request id when the request carries well-formed
ones (the gateway adds both). The code points deep in the grants and stores (families.py, the
throttle) run inside that request's task, or in a greenlet that SQLAlchemy gives the same context,
so they name the address and trace without having them passed down.

What never enters an event: passwords, codes, client secrets, refresh tokens, access tokens. A token
is named by ``token_hint`` of its ``jti`` (or a family by its id) under a key derived from the
provider's key-encryption key, so hints are stable across restarts and replicas and reveal nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from garrison.events.emitter import Emitter, NullEmitter
from garrison.events.schema import Actor, Event, Outcome, token_hint
from garrison.web.http import Headers, HttpRequest, HttpResponse

__all__ = ["CURRENT", "IdentityAudit", "RequestContext", "in_context", "request_context"]

MAX_SUBJECT: Final = 256  # a username as typed can be anything: bounded well under the schema's 1024
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is asking and how to join this request to the rest of its trace."""

    ip: str | None = None
    trace_id: str | None = None
    request_id: str | None = None


CURRENT: ContextVar[RequestContext | None] = ContextVar("identity_request", default=None)


def request_context(headers: Headers, client_ip: str) -> RequestContext:
    """The context of a request: ids only when well-formed (never invented here: the gateway starts
    traces; a direct caller without one has none)."""
    trace = _TRACEPARENT.fullmatch(str(headers.get("traceparent", "")).strip())
    request_id = str(headers.get("x-request-id", "")).strip()
    return RequestContext(
        ip=client_ip or None,
        trace_id=trace.group(1) if trace and trace.group(1) != "0" * 32 else None,
        request_id=request_id if _REQUEST_ID.fullmatch(request_id) else None,
    )


def in_context(
    handler: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    """``handler`` with its request's context set for the events it causes."""

    async def handle(request: HttpRequest) -> HttpResponse:
        token = CURRENT.set(request_context(request.headers, request.client_ip))
        try:
            return await handler(request)
        finally:
            CURRENT.reset(token)

    return handle


def _bounded(value: str | None) -> str | None:
    return value[:MAX_SUBJECT] if value is not None else None


class IdentityAudit:
    """Builds the provider's events and hands them to its emitter (which never blocks or raises)."""

    def __init__(self, emitter: Emitter | None = None, instance: str = "", hint_key: bytes = b"") -> None:
        self.emitter: Emitter = emitter if emitter is not None else NullEmitter()
        self.instance = instance
        self._hint_key = hint_key

    def __repr__(self) -> str:
        return f"IdentityAudit(instance={self.instance!r})"

    def hint(self, value: str) -> str:
        """``token_hint`` of a jti or family id under the provider's hint key."""
        return token_hint(self._hint_key, value)

    def emit(
        self,
        type: str,
        outcome: Outcome = "success",
        *,
        subject: str | None = None,
        client: str | None = None,
        ip: str | None = None,
        target: str | None = None,
        **details: Any,
    ) -> None:
        context = CURRENT.get() or RequestContext()
        actor = Actor(subject=_bounded(subject), client=_bounded(client), ip=ip or context.ip)
        self.emitter.emit(
            Event(
                component="identity",
                type=type,
                outcome=outcome,
                actor=actor,
                target=_bounded(target),
                trace_id=context.trace_id,
                request_id=context.request_id,
                details={
                    key: value[:MAX_SUBJECT] if isinstance(value, str) else value
                    for key, value in details.items()
                    if value is not None
                },
                instance=self.instance,
            )
        )

    # -- the throttle's locks ------------------------------------------------------------------------

    def lockout(self, key: str, until: float, source: str = "throttle", reason: str | None = None) -> None:
        """``auth.lockout`` for a throttle key that has just been locked (throttle.py calls this)."""
        kind, _, name = key.partition(":")
        fields: dict[str, Any] = {"limit": kind, "until": until, "source": source, "reason": reason}
        subject = name if kind in ("user", "otp") else None  # an account, or an account's second factor
        client = name if kind == "client" else None  # else an address (IPv6: its /64), named by the key
        self.emit("auth.lockout", "success", subject=subject, client=client, target=key, **fields)

    # -- tokens --------------------------------------------------------------------------------------

    def token_issued(
        self, type: str, jti: str, grant_type: str, client: str | None, subject: str | None, scope: Any
    ) -> None:
        """``token.issued`` (or ``token.refresh``): the new access token named by a hint of its jti."""
        self.emit(
            type,
            "success",
            subject=subject,
            client=client,
            target=self.hint(jti),
            grant_type=grant_type,
            scope=scope if isinstance(scope, str) else None,
        )
