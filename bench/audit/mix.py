"""The event mix both the collector and rsyslog receive: what a shop's components send in a busy minute.

Mostly gateway ``http.request`` (88 %: 5,000 client addresses, ten routes with ids drawn from
100,000, a few user agents, a few percent 4xx), then sign-ins (successes and a few failures from
scattered addresses: below every threshold), token issues and refreshes, mesh edges, the odd denied
mesh call, secret reads. Seeded: the same run sends the same events to every column.
"""

from __future__ import annotations

import random

from garrison.events.schema import Actor, Event

ROUTES = (
    "/api/orders/{n}",
    "/api/products/{n}",
    "/api/products/{n}/reviews",
    "/api/cart/items/{n}",
    "/api/users/me",
    "/api/search",
    "/static/app.{n}.js",
    "/health",
    "/api/orders",
    "/favicon.ico",
)
QUERIES = ("", "", "", "page={n}&size=20", "q=blue+shoes", "sort=price&order=asc")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
    "python-httpx/0.28.1",
    "Go-http-client/2.0",
)
SERVICES = ("orders", "payments", "catalog", "cart", "users")


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(20)}.{rng.randrange(250)}.{rng.randrange(1, 250)}"


def _request(rng: random.Random, instance: str) -> Event:
    status = rng.choices((200, 304, 404, 401), (90, 6, 3, 1))[0]
    details = {
        "method": rng.choices(("GET", "POST"), (85, 15))[0],
        "path": rng.choice(ROUTES).format(n=rng.randrange(100_000)),
        "query": rng.choice(QUERIES).format(n=rng.randrange(50)),
        "status": status,
        "user_agent": rng.choice(AGENTS),
        "referer": "https://shop.example/",
        "host": "shop.example",
        "bytes_out": rng.randrange(200, 20_000),
        "duration_ms": round(rng.uniform(0.5, 30.0), 2),
        "route": "api",
    }
    actor = Actor(ip=_ip(rng), subject=f"user{rng.randrange(5000)}" if rng.random() < 0.5 else None)
    outcome = "success" if status < 400 else "failure"
    return Event("gateway", "http.request", outcome, actor, details=details, instance=instance)


def _other(rng: random.Random, instance: str) -> Event:
    kind = rng.choices(
        ("auth.login", "token.issued", "token.refresh", "mesh.edge", "mesh.call", "secret.read"),
        (30, 25, 25, 10, 2, 8),
    )[0]
    ip, user = _ip(rng), f"user{rng.randrange(5000)}"
    if kind == "auth.login":
        failed = rng.random() < 0.1
        details = {"reason": "bad_password"} if failed else {"method": "password"}
        actor = Actor(subject=user, ip=ip)
        return Event(
            "identity", kind, "failure" if failed else "success", actor, details=details, instance=instance
        )
    if kind in ("token.issued", "token.refresh"):
        return Event(
            "identity", kind, "success", Actor(subject=user, client="shop-web", ip=ip), instance=instance
        )
    caller, callee = rng.sample(SERVICES, 2)
    service = Actor(service=f"spiffe://shop.test/{caller}")
    if kind == "mesh.edge":
        return Event("mesh", kind, "success", service, target=callee, instance=instance)
    if kind == "mesh.call":
        details = {"method": "POST", "path": "/internal/refund", "reason": "not in policy"}
        return Event("mesh", kind, "denied", service, target=callee, details=details, instance=instance)
    return Event("vault", kind, "success", service, target=f"secret/data/{caller}/db", instance=instance)


def events(count: int, seed: int, instance: str) -> list[Event]:
    """``count`` events of the mix, the same ones for the same seed."""
    rng = random.Random(seed)
    return [_request(rng, instance) if rng.random() < 0.88 else _other(rng, instance) for _ in range(count)]
