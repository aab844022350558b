"""The identity provider's HTTP face: a small ASGI application served by uvicorn (httptools + uvloop).

Thin on purpose: it turns an HTTP request into an ``IdentityRequest``, hands it to Authlib (inside
``greenlet_spawn``, see authserver.py), and writes what comes back with the security headers every
Garrison response carries. What it checks itself: bodies are bounded (64 KiB) and must be
``application/x-www-form-urlencoded`` on the OAuth endpoints, and a parameter sent twice is refused
(RFC 6749 §3.1, §3.2), so no component can read a different copy of it than another. The HTML pages
(pages.py) bring their own, stricter, Content-Security-Policy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.util import greenlet_spawn

from garrison.identity.adapter import EndpointResponse, Headers, IdentityRequest
from garrison.identity.authserver import IdentityServer
from garrison.tokens.forwarded import TrustedProxies

MAX_BODY = 64 * 1024
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
T = TypeVar("T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BadRequest(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    client_ip: str
    form: dict[str, str] = field(default_factory=dict)

    def cookie(self, name: str) -> str | None:
        """The first cookie called ``name`` (RFC 6265 §5.4 sends the most specific first)."""
        header: str = self.headers.get("cookie", "")
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
        return None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers or [])


async def call_authlib(function: Callable[..., T], *args: Any) -> T:
    """Run a (synchronous) Authlib call in a greenlet, so its callbacks can ``await_only`` the database.

    Authlib raises ValueError while building an error whose description quotes a request parameter
    with characters RFC 6749 §5.2 forbids there (quotes, backslashes, non-ASCII): a malformed request,
    answered as one (400), never a redirect and never a 500. Other ValueErrors are bugs and propagate.
    """
    try:
        return await greenlet_spawn(function, *args)
    except ValueError as exc:
        if "forbidden characters" not in str(exc):
            raise
        raise BadRequest(400, "invalid_request", "A parameter holds characters OAuth 2.0 forbids.") from None


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """A 302 to ``location``: only ever a URI Authlib validated (an exact registered redirect URI)."""
    return HttpResponse(302, b"", "text/plain; charset=utf-8", [("location", location), *(headers or [])])


def parse_params(raw: str) -> dict[str, str]:
    """Query or form parameters; a repeated parameter is an error, never a silent first-or-last pick."""
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(400, "invalid_request", "Parameters must be UTF-8.") from None
    for name, value in pairs:
        if name in params:
            raise BadRequest(400, "invalid_request", f"Parameter {name!r} is repeated.")
        params[name] = value
    return params


class IdentityApp:
    """ASGI application: routes by exact path and method, nothing else."""

    def __init__(
        self, server: IdentityServer, base_url: str, hsts: bool, trusted: TrustedProxies | None = None
    ) -> None:
        self.server = server
        # Who the client is, for the per-address throttle and the audit log: the TCP peer, or the
        # X-Forwarded-For entry a trusted proxy (identity.trusted_proxies) vouches for, walked from
        # the right like the gateway does.
        self.trusted = trusted if trusted is not None else TrustedProxies([])
        self.base_url = base_url.rstrip("/")
        self.routes: dict[tuple[str, str], Handler] = {}
        self.common_headers = [
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
        ]
        if hsts:
            self.common_headers.append(("strict-transport-security", "max-age=31536000; includeSubDomains"))

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await self._read(scope, receive)
            handler = self.routes.get((request.method, request.path))
            if handler is None:
                allowed = sorted(m for (m, p) in self.routes if p == request.path)
                if allowed:
                    response = json_response(
                        405, {"error": "method_not_allowed"}, [("allow", ", ".join(allowed))]
                    )
                else:
                    response = json_response(404, {"error": "not_found"})
            else:
                response = await handler(request)
        except BadRequest as exc:
            response = json_response(exc.status, {"error": exc.error, "error_description": exc.description})
        await self._write(send, response)

    async def _read(self, scope: Scope, receive: Receive) -> HttpRequest:
        headers = Headers()
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            if key == "x-forwarded-for":
                forwarded_for.append(value)
            if key in headers and key in ("authorization", "content-type", "content-length", "cookie"):
                raise BadRequest(400, "invalid_request", f"Header {key!r} is repeated.")
            headers[key] = value.decode("latin-1")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                raise BadRequest(413, "invalid_request", "The request body is too large.")
            if not message.get("more_body"):
                break
        client = scope.get("client") or ("", 0)
        client_ip = self.trusted.resolve_client(str(client[0]), forwarded_for)
        request = HttpRequest(
            method=scope["method"],
            path=scope["path"],
            query=parse_params(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
            body=bytes(body),
            client_ip=client_ip,
        )
        if request.method == "POST" and body:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise BadRequest(415, "invalid_request", "Send application/x-www-form-urlencoded.")
            try:
                request.form = parse_params(request.body.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(400, "invalid_request", "The body must be UTF-8.") from None
        return request

    async def _write(self, send: Send, response: HttpResponse) -> None:
        names = {name.lower() for name, _ in response.headers}
        headers = [(k.encode(), v.encode()) for k, v in response.headers]
        if "content-type" not in names:
            headers.append((b"content-type", response.content_type.encode()))
        if "cache-control" not in names:
            headers.append((b"cache-control", b"no-store"))
        if "content-security-policy" not in names:  # HTML pages set a policy of their own
            headers.append((b"content-security-policy", JSON_CSP.encode()))
        headers += [(k.encode(), v.encode()) for k, v in self.common_headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    # -- Authlib calls -------------------------------------------------------------------------------

    def oauth_request(self, request: HttpRequest) -> IdentityRequest:
        query = urlencode(request.query)
        url = self.base_url + request.path + (f"?{query}" if query else "")
        return IdentityRequest(
            request.method, url, request.headers, request.form, request.query, request.client_ip
        )

    def authorization_request(self, request: HttpRequest, params: dict[str, str]) -> IdentityRequest:
        """An authorization request with ``params``: the query of GET /authorize, or the same parameters
        carried through the login, second-factor and consent forms."""
        query = urlencode(params)
        url = self.base_url + "/authorize" + (f"?{query}" if query else "")
        return IdentityRequest("GET", url, request.headers, {}, params, request.client_ip)

    async def token(self, request: HttpRequest) -> HttpResponse:
        result = await call_authlib(self.server.create_token_response, self.oauth_request(request))
        return from_endpoint(result)

    async def endpoint(self, name: str, request: HttpRequest) -> HttpResponse:
        result = await call_authlib(self.server.create_endpoint_response, name, self.oauth_request(request))
        if result is None:
            return json_response(200, {"active": False} if name == "introspection" else {})
        return from_endpoint(result)


def from_endpoint(result: EndpointResponse) -> HttpResponse:
    body = result.body if isinstance(result.body, str) else json.dumps(result.body, separators=(",", ":"))
    return HttpResponse(result.status, body.encode(), headers=[(k.lower(), v) for k, v in result.headers])


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
