"""The identity provider's HTTP face: a small ASGI application (web/app.py) served by uvicorn.

Thin on purpose: it turns an HTTP request into an ``IdentityRequest``, hands it to Authlib (inside
``greenlet_spawn``, see authserver.py), and writes what comes back. The app layer below does the
rest: bodies are bounded (64 KiB) and must be ``application/x-www-form-urlencoded`` on the OAuth
endpoints, a parameter sent twice is refused (RFC 6749 §3.1, §3.2), and every answer carries the
common security headers (web/headers.py). The HTML pages (pages.py) bring their own, stricter,
Content-Security-Policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy.util import greenlet_spawn

from garrison.identity.adapter import EndpointResponse, IdentityRequest
from garrison.identity.auditing import in_context
from garrison.identity.authserver import IdentityServer
from garrison.telemetry.identity_metrics import IdentityMetrics
from garrison.tokens.forwarded import TrustedProxies
from garrison.web.app import WebApp
from garrison.web.http import Handler, HttpRequest, HttpResponse, json_response, parse_params
from garrison.web.http import HttpError as BadRequest

__all__ = [
    "BadRequest",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "IdentityApp",
    "call_authlib",
    "from_endpoint",
    "json_response",
    "parse_params",
    "redirect",
]

T = TypeVar("T")


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


class IdentityApp(WebApp):
    """The provider's app: the web layer's routing and checks, plus the calls into Authlib."""

    def __init__(
        self, server: IdentityServer, base_url: str, hsts: bool, trusted: TrustedProxies | None = None
    ) -> None:
        # Who the client is, for the per-address throttle and the audit log: the TCP peer, or the
        # X-Forwarded-For entry a trusted proxy (identity.trusted_proxies) vouches for.
        super().__init__(hsts, trusted)
        self.server = server
        self.base_url = base_url.rstrip("/")
        # Counted at the code points (token, introspection here; sign-ins in flows.py); scraped from
        # the admin listener (identity/admin.py).
        self.metrics = IdentityMetrics()

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Every route runs with its request's audit context: address, trace and request ids."""
        super().route(method, path, in_context(handler))

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
        try:
            result = await call_authlib(self.server.create_token_response, self.oauth_request(request))
        except BadRequest as exc:
            self.metrics.token_error(exc.error)
            raise
        if result.status == 200:
            self.metrics.token_issued(request.form.get("grant_type", ""))
        else:
            self.metrics.token_error(_error_code(result))
        return from_endpoint(result)

    async def endpoint(self, name: str, request: HttpRequest) -> HttpResponse:
        result = await call_authlib(self.server.create_endpoint_response, name, self.oauth_request(request))
        if name == "introspection" and (result is None or result.status == 200):
            body = result.body if result is not None else None
            self.metrics.introspection(isinstance(body, dict) and body.get("active") is True)
        if result is None:
            return json_response(200, {"active": False} if name == "introspection" else {})
        return from_endpoint(result)


def _error_code(result: EndpointResponse) -> str:
    body = result.body
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return "other"
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else "other"


def from_endpoint(result: EndpointResponse) -> HttpResponse:
    body = result.body if isinstance(result.body, str) else json.dumps(result.body, separators=(",", ":"))
    return HttpResponse(result.status, body.encode(), headers=[(k.lower(), v) for k, v in result.headers])
