"""An HTTP application: a router, the body limit, JSON errors and the security headers, as one ASGI
app (served by uvicorn: httptools + uvloop).

What it checks itself, before any handler runs: bodies are bounded (``max_body``), a header whose
duplicate would let two readers disagree (Authorization, Content-Type, Content-Length, Cookie) is
refused, query parameters must not repeat, and with ``form_posts`` a POST body must be
``application/x-www-form-urlencoded`` (parsed into ``request.form``, repeats refused too). Every
answer gets ``cache-control: no-store`` and the API Content-Security-Policy unless the handler set
its own, then the common security headers (web/headers.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from garrison.tokens.forwarded import TrustedProxies
from garrison.web.headers import API_CSP, DEFAULT_HSTS, security_headers
from garrison.web.http import (
    MAX_BODY,
    Handler,
    Headers,
    HttpError,
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    parse_params,
)
from garrison.web.router import RouteMiss, Router

__all__ = ["WebApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
UNIQUE_HEADERS = ("authorization", "content-type", "content-length", "cookie")


class WebApp:
    """ASGI application: routes by exact path and method (and mounted prefixes), nothing else.

    ``trusted``: proxies whose X-Forwarded-For names the client (walked from the right, like the
    gateway does); without them the TCP peer is the client."""

    def __init__(
        self,
        hsts: bool,
        trusted: TrustedProxies | None = None,
        *,
        max_body: int = MAX_BODY,
        form_posts: bool = True,
    ) -> None:
        self.trusted = trusted if trusted is not None else TrustedProxies([])
        self.router: Router[Handler] = Router()
        self.max_body = max_body
        self.form_posts = form_posts
        self.common_headers = security_headers(hsts=DEFAULT_HSTS if hsts else None)

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.router.route(method, path, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await self._read(scope, receive)
            handler = self.router.match(request.method, request.path)
            if isinstance(handler, RouteMiss):
                response = _miss(handler)
            else:
                response = await handler(request)
        except HttpError as exc:
            response = error_response(exc)
        await self._write(send, response)

    async def _read(self, scope: Scope, receive: Receive) -> HttpRequest:
        headers = Headers()
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            if key == "x-forwarded-for":
                forwarded_for.append(value)
            if key in headers and key in UNIQUE_HEADERS:
                raise HttpError(400, "invalid_request", f"Header {key!r} is repeated.")
            headers[key] = value.decode("latin-1")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body:
                raise HttpError(413, "invalid_request", "The request body is too large.")
            if not message.get("more_body"):
                break
        client = scope.get("client") or ("", 0)
        request = HttpRequest(
            method=scope["method"],
            path=scope["path"],
            query=parse_params(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
            body=bytes(body),
            client_ip=self.trusted.resolve_client(str(client[0]), forwarded_for),
        )
        if self.form_posts and request.method == "POST" and body:
            request.form = _form(request)
        return request

    async def _write(self, send: Send, response: HttpResponse) -> None:
        names = {name.lower() for name, _ in response.headers}
        headers = [(k.encode(), v.encode()) for k, v in response.headers]
        if "content-type" not in names:
            headers.append((b"content-type", response.content_type.encode()))
        if "cache-control" not in names:
            headers.append((b"cache-control", b"no-store"))
        if "content-security-policy" not in names:  # HTML pages set a policy of their own
            headers.append((b"content-security-policy", API_CSP.encode()))
        headers += [(k.encode(), v.encode()) for k, v in self.common_headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


def _miss(miss: RouteMiss) -> HttpResponse:
    if miss.status == 405:
        return json_response(405, {"error": "method_not_allowed"}, [("allow", miss.allow)])
    return json_response(404, {"error": "not_found"})


def _form(request: HttpRequest) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HttpError(415, "invalid_request", "Send application/x-www-form-urlencoded.")
    try:
        return parse_params(request.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_request", "The body must be UTF-8.") from None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
