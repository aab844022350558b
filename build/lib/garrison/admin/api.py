"""The admin API every component serves on its admin listener (admin/listener.py).

Built in: ``GET /live`` (the process answers), ``GET /ready`` (200 ``ready``, or 503 naming the
component's reasons) and ``GET /metrics`` (the component's Prometheus registry). A component adds
its own sub-APIs with ``register(prefix, handler)``: the handler answers every method on the prefix
and below it (the gateway's ``/blocklist`` and ``/revocations``).

Nothing here decides who may call: the listener wraps the whole API in admin/auth.py's guard, so
every state-changing method needs the admin credential and every request passes the Host and
Origin checks, whatever a sub-API forgets.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest

from garrison.web.router import RouteMiss, Router
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = [
    "JSON",
    "PROMETHEUS_TEXT",
    "AdminApi",
    "SubApi",
    "json_answer",
    "query_params",
    "readiness_response",
]

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"

SubApi = Callable[[SimpleRequest], SimpleResponse | Awaitable[SimpleResponse]]
Readiness = Callable[[], list[str] | Awaitable[list[str]]]
# A registry, or (a worker supervisor merging its workers') a coroutine producing the exposition.
Metrics = CollectorRegistry | Callable[[], Awaitable[bytes]]


def readiness_response(reasons: list[str]) -> SimpleResponse:
    """``/ready``: 200 ``ready``, or 503 naming each reason (a probe's log then says why)."""
    if not reasons:
        return SimpleResponse(200, b"ready\n")
    return SimpleResponse(503, ("not ready: " + "; ".join(reasons) + "\n").encode())


class AdminApi:
    """Routes admin requests: the built-in endpoints, then the registered sub-APIs."""

    def __init__(self, readiness: Readiness, metrics: Metrics) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self.router: Router[SubApi] = Router()
        for method in ("GET", "HEAD"):
            self.router.route(method, "/live", self._live)
            self.router.route(method, "/ready", self._ready)
            self.router.route(method, "/metrics", self._metrics)

    def register(self, prefix: str, handler: SubApi) -> None:
        """``handler`` answers every method on ``prefix`` (``/blocklist``) and below it."""
        if any(prefix == path for _, path in self.router.exact):
            raise ValueError(f"{prefix} is a built-in admin endpoint")
        self.router.mount(prefix, handler)

    def __call__(self, request: SimpleRequest) -> SimpleResponse | Awaitable[SimpleResponse]:
        path = request.target.partition(b"?")[0].decode("latin-1")
        handler = self.router.match(request.method.decode("latin-1"), path)
        if isinstance(handler, RouteMiss):
            if handler.status == 405:
                allow = b"allow: %s\r\n" % handler.allow.encode()
                return SimpleResponse(405, b"method not allowed\n", headers=allow)
            return SimpleResponse(404, b"not found\n")
        return handler(request)

    def _live(self, request: SimpleRequest) -> SimpleResponse:
        return SimpleResponse(200, b"ok\n")

    async def _ready(self, request: SimpleRequest) -> SimpleResponse:
        reasons = self.readiness()
        if inspect.isawaitable(reasons):
            reasons = await reasons
        return readiness_response(reasons)

    async def _metrics(self, request: SimpleRequest) -> SimpleResponse:
        if isinstance(self.metrics, CollectorRegistry):
            exposition = generate_latest(self.metrics)
        else:
            exposition = await self.metrics()
        return SimpleResponse(200, exposition, PROMETHEUS_TEXT)


JSON = b"application/json"


def json_answer(status: int, payload: Any) -> SimpleResponse:
    """A compact JSON body: what every component's admin sub-API answers."""
    return SimpleResponse(status, json.dumps(payload, separators=(",", ":")).encode() + b"\n", JSON)


def query_params(raw: bytes) -> dict[str, str]:
    """A sub-API's parameters from the query string (admin requests carry no body): at most 10, ASCII,
    the last of a repeated name; anything else is ``ValueError`` (a 400)."""
    try:
        parsed = parse_qs(raw.decode("ascii"), strict_parsing=bool(raw), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("malformed query string") from None
    return {key: values[-1] for key, values in parsed.items()}
