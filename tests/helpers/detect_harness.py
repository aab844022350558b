"""A Detector driven in process: events in as logged batches, alerts out through a list appender."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from garrison.audit.detect import Detector
from garrison.audit.pipeline import AlertRaised, LoggedEvent
from garrison.config.audit_detection import DetectionConfig
from garrison.events.schema import Actor, Event

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[AlertRaised] = []

    async def respond(self, alert: AlertRaised) -> None:
        self.alerts.append(alert)


class Harness:
    def __init__(self, state: Path | None = None, clock: Clock | None = None, **config: Any) -> None:
        self.logged: list[Event] = []
        self.seq = 0
        self.clock = clock or Clock()
        self.responder = Recorder()
        self.detector = Detector(
            DetectionConfig(**config), self.append, self.responder, state, now=self.clock
        )

    async def append(self, events: list[Event]) -> list[LoggedEvent]:
        self.logged.extend(events)
        return [self._logged(e) for e in events]

    def _logged(self, event: Event) -> LoggedEvent:
        self.seq += 1
        return LoggedEvent(self.seq - 1, event, event.to_json())

    def feed(self, events: list[Event], batch: int = 500) -> list[Event]:
        """Commit ``events`` in batches; the alerts raised by them."""
        before = len(self.alerts)

        async def run() -> None:
            for i in range(0, len(events), batch):
                await self.detector.committed([self._logged(e) for e in events[i : i + batch]])
            await self.detector.settle()

        asyncio.run(run())
        return self.alerts[before:]

    @property
    def alerts(self) -> list[Event]:
        return [e for e in self.logged if e.type == "audit.alert"]


def ev(kind: str, at: float, outcome: str = "success", component: str = "identity", **fields: Any) -> Event:
    actor = Actor(**{k: fields.pop(k) for k in ("subject", "client", "service", "ip") if k in fields})
    target = fields.pop("target", None)
    return Event(
        component=component, type=kind, outcome=outcome, actor=actor, target=target, details=fields, time=at
    )  # type: ignore[arg-type]


def request(
    at: float,
    ip: str,
    path: str,
    status: int = 200,
    query: str = "",
    agent: str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    method: str = "GET",
) -> Event:
    return ev(
        "http.request",
        at,
        "success" if status < 400 else "denied",
        component="gateway",
        ip=ip,
        method=method,
        path=path,
        query=query,
        status=status,
        user_agent=agent,
        host="shop.example",
        bytes_out=512,
        duration_ms=3.1,
        route="api",
    )


BENIGN_PATHS = [
    "/api/orders",
    "/api/orders/{n}",
    "/api/products",
    "/api/products/{n}/reviews",
    "/static/app.{n}.js",
    "/health",
    "/api/users/me",
    "/api/search",
    "/favicon.ico",
    "/api/cart/items/{n}",
]
BENIGN_QUERIES = [
    "",
    "",
    "page={n}&size=20",
    "q=blue+shoes",
    "sort=price&order=asc",
    "q=select+a+gift",
    "from=2026-12-01",
]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
    "python-httpx/0.28.1",
    "Go-http-client/2.0",
]


def benign_traffic(n: int, start: float = T0, seed: int = 7) -> list[Event]:
    """A realistic mix: mostly gateway requests (some 404s and 401s from many clients), successful and
    occasional failed sign-ins, MFA, token refreshes, allowed mesh edges, secret reads."""
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(n):
        at = start + i * 0.01
        ip = f"198.51.100.{rng.randrange(1, 250)}"
        roll = rng.random()
        if roll < 0.80:
            path = rng.choice(BENIGN_PATHS).format(n=rng.randrange(1, 5000))
            status = rng.choices([200, 201, 304, 404, 401, 403], [80, 5, 10, 3, 1, 1])[0]
            query = rng.choice(BENIGN_QUERIES).format(n=rng.randrange(1, 50))
            events.append(request(at, ip, path, status, query, rng.choice(AGENTS)))
        elif roll < 0.86:
            ok = rng.random() < 0.95
            events.append(
                ev(
                    "auth.login",
                    at,
                    "success" if ok else "failure",
                    subject=f"user{rng.randrange(500)}",
                    ip=ip,
                )
            )
        elif roll < 0.88:
            events.append(ev("auth.mfa", at, "success", subject=f"user{rng.randrange(500)}", ip=ip))
        elif roll < 0.92:
            events.append(ev("token.refresh", at, subject=f"user{rng.randrange(500)}", client="web"))
        elif roll < 0.96:
            caller, callee = rng.choice(
                [("spiffe://shop/orders", "payments"), ("spiffe://shop/web", "orders")]
            )
            events.append(ev("mesh.edge", at, component="mesh", service=caller, target=callee))
        else:
            events.append(
                ev(
                    "secret.read",
                    at,
                    component="vault",
                    service="spiffe://shop/orders",
                    target="kv/orders/db",
                )
            )
    return events
