"""What the shipping tests run against: an in-memory audit log, and HTTP receivers on real sockets.

``MemoryLog`` is a ``LogReader`` over a list (the collector's real log is tested once, in
tests/audit/test_ship_eventlog.py). ``Receiver`` is an ASGI app served by uvicorn on a socket bound
to port 0 (plain or TLS): it records every request and answers through a handler each test writes,
so a receiver can check the wire format strictly, fail for a while, or fail one bulk item once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from garrison.audit.pipeline import LoggedEvent
from garrison.events.schema import Actor, Event

T = TypeVar("T")
Handler = Callable[["Seen"], tuple[int, dict[str, str], bytes]]


class MemoryLog:
    """The log as a list; ``append`` wakes the shippers as the collector's commit does."""

    def __init__(self) -> None:
        self.entries: list[LoggedEvent] = []
        self.wake = asyncio.Event()

    def append(self, *events: Event) -> None:
        for event in events:
            self.entries.append(LoggedEvent(len(self.entries), event, event.to_json()))
        self.wake.set()

    def size(self) -> int:
        return len(self.entries)

    async def read(self, start: int, limit: int) -> list[LoggedEvent]:
        return self.entries[start : start + limit]


def sample_events(count: int, start: float = 1_796_000_000.0, **overrides: Any) -> list[Event]:
    """``count`` varied events: gateway requests, failed logins, a denied mesh call."""
    kinds = [
        ("gateway", "http.request", "success", {"method": "GET", "path": "/api/orders", "status": 200}),
        ("identity", "auth.login", "failure", {"reason": "bad_password"}),
        ("mesh", "mesh.call", "denied", {"method": "POST", "path": "/charges", "reason": "policy"}),
    ]
    events = []
    for index in range(count):
        component, kind, outcome, details = kinds[index % len(kinds)]
        fields: dict[str, Any] = {
            "component": component,
            "type": kind,
            "outcome": outcome,
            "actor": Actor(subject=f"user{index}", ip=f"203.0.113.{index % 250}"),
            "details": details,
            "time": start + index * 0.001,
            "trace_id": os.urandom(16).hex(),
            "instance": "test-1",
        }
        fields.update(overrides)
        events.append(Event(**fields))
    return events


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An ASGI app that records requests and answers with ``handler`` (default 200, empty JSON)."""

    handler: Handler = field(default=lambda seen: (200, {}, b"{}"))
    requests: list[Seen] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers, bytes(body))
        try:
            status, extra, answer = self.handler(seen)
        except AssertionError as exc:  # a wire-format check failed: answer 400 and keep the evidence
            status, extra, answer = 418, {}, f"wire format: {exc}".encode()
        self.requests.append(seen)
        extra = {"content-type": "application/json", **extra}
        sent = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": sent})
        await send({"type": "http.response.body", "body": answer})
        async with self.changed:
            self.changed.notify_all()


async def until(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll ``predicate`` on the loop until truthy; fail on timeout (a ceiling, not an expectation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate.__qualname__} (last: {value!r})")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(app: Receiver, tls: tuple[Path, Path] | None = None) -> AsyncIterator[str]:
    """``app`` on uvicorn at 127.0.0.1 on a port-0 socket; yields its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    options: dict[str, Any] = {"lifespan": "off", "log_level": "warning", "access_log": False}
    if tls is not None:
        options.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]), ssl_cert_reqs=ssl.CERT_NONE)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        listener.close()


async def no_sleep(delay: float) -> None:
    """A back-off that does not wait (the delays themselves are checked in the Backoff tests)."""
    del delay
    await asyncio.sleep(0)


def secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)
