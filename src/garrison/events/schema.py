"""The audit event schema, version 1: one shape for every component (docs/audit.md lists the types).

An event is what happened (``type``, ``outcome``), who did it (``actor``: a subject, an OAuth
client, a service, an IP address; any of them may be unknown), to what (``target``), where
(``component``, ``instance``), when (``time``), and how to join it to the rest of the request
(``trace_id``, ``request_id``). ``details`` holds the type's own fields, flat and JSON-typed.

Secrets never enter an event: a component passes tokens, passwords and secret values through
``token_hint`` (a short keyed fingerprint, never the token) or drops them before ``Event`` is built.
``id`` is drawn by the emitter and is unique per event: the collector keeps the first copy of an id,
so an event that is sent again after a lost acknowledgement is logged once.

The wire form is one JSON object per line (``to_json``/``from_json``); ``from_json`` is the
collector's only way in, so it checks every field's type and bounds every size an emitter controls.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

__all__ = [
    "OUTCOMES",
    "SCHEMA_VERSION",
    "Actor",
    "Event",
    "EventError",
    "new_event_id",
    "rfc3339",
    "token_hint",
]

SCHEMA_VERSION: Final = 1
Outcome = Literal["success", "failure", "denied", "error", "unknown"]
OUTCOMES: Final = frozenset({"success", "failure", "denied", "error", "unknown"})
COMPONENTS: Final = frozenset({"gateway", "identity", "mesh", "ca", "vault", "audit"})

MAX_TEXT = 1024  # any one text field
MAX_DETAILS = 32  # keys in details
MAX_LINE = 16 * 1024  # one event on the wire
_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._")


class EventError(ValueError):
    """An event that does not follow the schema (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted. ``subject`` is a user (or the username tried); ``client`` an OAuth client id;
    ``service`` a workload (SPIFFE ID or service name); ``ip`` the client address as the component
    resolved it (after trusted proxies)."""

    subject: str | None = None
    client: str | None = None
    service: str | None = None
    ip: str | None = None

    def to_dict(self) -> dict[str, str]:
        body = {}
        if self.subject is not None:
            body["subject"] = self.subject
        if self.client is not None:
            body["client"] = self.client
        if self.service is not None:
            body["service"] = self.service
        if self.ip is not None:
            body["ip"] = self.ip
        return body


@dataclass(frozen=True, slots=True)
class Event:
    component: str
    type: str  # dotted, lower case: "auth.login", "http.request", "mesh.call" (docs/audit.md)
    outcome: Outcome = "success"
    actor: Actor = field(default_factory=Actor)
    target: str | None = None
    trace_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    instance: str = ""
    time: float = field(default_factory=time.time)  # epoch seconds
    id: str = field(default_factory=lambda: new_event_id())
    # Who delivered it, as the collector authenticated the channel (a SPIFFE ID, or "token:<name>"):
    # set by the collector only; whatever an emitter puts here is replaced.
    origin: str | None = None
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": self.version,
            "id": self.id,
            "time": rfc3339(self.time),
            "component": self.component,
            "instance": self.instance,
            "type": self.type,
            "outcome": self.outcome,
            "actor": self.actor.to_dict(),
        }
        if self.target is not None:
            body["target"] = self.target
        if self.trace_id is not None:
            body["trace_id"] = self.trace_id
        if self.request_id is not None:
            body["request_id"] = self.request_id
        if self.origin is not None:
            body["origin"] = self.origin
        if self.details:
            body["details"] = self.details
        return body

    def to_json(self) -> bytes:
        """One line, without its newline; keys in a fixed order, no spaces, UTF-8 (orjson: this runs
        once per event in every component and again in the collector, and json.dumps was most of it)."""
        try:
            return orjson.dumps(self.to_dict())
        except TypeError as exc:  # a detail that is not JSON (or an integer beyond 64 bits)
            raise EventError(f"details must be JSON values: {exc}") from None

    @classmethod
    def from_json(cls, line: bytes, origin: str | None = None) -> Event:
        """``origin``, when given (the collector's authenticated channel), replaces the line's."""
        if len(line) > MAX_LINE:
            raise EventError(f"an event is at most {MAX_LINE} bytes")
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise EventError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise EventError("an event is a JSON object")
        if origin is not None:
            body["origin"] = origin
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Event:
        """The event ``body`` describes; EventError naming the first field that breaks the schema.
        (Written for speed: the collector runs it on every event it receives.)"""
        get = body.get
        if get("v") != SCHEMA_VERSION:
            raise EventError(f"unknown schema version {get('v')!r} (this collector reads {SCHEMA_VERSION})")
        actor = get("actor", _NO_ACTOR)
        if type(actor) is not dict or not _ACTOR_KEYS.issuperset(actor):
            raise EventError("actor is an object of subject, client, service, ip")
        for name, value in actor.items():
            _check_text(name, value)
        details = get("details", _NO_DETAILS)
        if type(details) is not dict or len(details) > MAX_DETAILS:
            raise EventError(f"details is an object of at most {MAX_DETAILS} keys")
        outcome = get("outcome")
        if outcome not in OUTCOMES:
            raise EventError(f"outcome is one of {sorted(OUTCOMES)}")
        component, kind, event_id = get("component"), get("type"), get("id")
        if component not in COMPONENTS:
            raise EventError(f"component is one of {sorted(COMPONENTS)}")
        if type(event_id) is not str or len(event_id) > MAX_TEXT:
            raise EventError(f"id is text of at most {MAX_TEXT} characters")
        if type(kind) is not str or not kind or len(kind) > MAX_TEXT or not _TYPE_CHARS.issuperset(kind):
            raise EventError("type is dotted lower-case words, such as auth.login")
        target, trace_id, request_id, instance, origin = optional = [get(n) for n in _OPTIONAL_TEXT]
        for name, value in zip(_OPTIONAL_TEXT, optional, strict=True):
            if value is not None:
                _check_text(name, value)
        return cls(
            component=component,
            type=kind,
            outcome=outcome,
            actor=Actor(**actor) if actor else _ANONYMOUS,
            target=target,
            trace_id=trace_id,
            request_id=request_id,
            details=details,
            instance=instance or "",
            time=_time(get("time")),
            id=event_id,
            origin=origin,
        )


_ACTOR_KEYS: Final = frozenset({"subject", "client", "service", "ip"})
_OPTIONAL_TEXT: Final = ("target", "trace_id", "request_id", "instance", "origin")
_NO_ACTOR: Final[dict[str, str]] = {}
_NO_DETAILS: Final[dict[str, Any]] = {}
_ANONYMOUS: Final = Actor()


def _check_text(name: str, value: Any) -> None:
    if type(value) is not str or len(value) > MAX_TEXT:
        raise EventError(f"{name} is text of at most {MAX_TEXT} characters")


_TIME_FORM = "time is an RFC 3339 UTC time such as 2026-12-07T10:00:00.000000Z"
# Seconds already parsed or formatted: events of one batch share their second, and strptime/strftime
# were a third of an event's cost. Bounded: cleared when full.
_EPOCH_OF: dict[str, int] = {}
_PREFIX_OF: dict[int, str] = {}
_CACHE_MAX = 4096


def _time(value: Any) -> float:
    if not isinstance(value, str) or len(value) != 27 or value[19] != "." or value[26] != "Z":
        raise EventError(_TIME_FORM)
    prefix, micros = value[:19], value[20:26]
    if not micros.isdigit() or not micros.isascii():
        raise EventError(_TIME_FORM)
    second = _EPOCH_OF.get(prefix)
    if second is None:
        try:
            parsed = datetime.strptime(prefix, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            raise EventError(_TIME_FORM) from None
        if len(_EPOCH_OF) >= _CACHE_MAX:
            _EPOCH_OF.clear()
        second = _EPOCH_OF[prefix] = int(parsed.timestamp())
    return second + int(micros) / 1_000_000


def rfc3339(epoch: float) -> str:
    """``2026-12-07T10:00:00.123456Z``: microseconds, UTC, the only form ``from_json`` reads."""
    micros = round(epoch * 1_000_000)
    second, fraction = divmod(micros, 1_000_000)
    prefix = _PREFIX_OF.get(second)
    if prefix is None:
        if len(_PREFIX_OF) >= _CACHE_MAX:
            _PREFIX_OF.clear()
        prefix = _PREFIX_OF[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{prefix}.{fraction:06d}Z"


def new_event_id() -> str:
    """128 random bits as 32 hex digits."""
    return os.urandom(16).hex()


def token_hint(key: bytes, token: str | bytes) -> str:
    """A fingerprint that joins events about one token without carrying it: the first 16 hex digits
    of HMAC-SHA256 under the component's key. Equal tokens give equal hints under one key."""
    data = token.encode() if isinstance(token, str) else token
    return "hmac:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:16]
