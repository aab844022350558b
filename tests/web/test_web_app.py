"""The HTTP app layer (web/): routing, the body limit, strict parameters, JSON errors and the
security headers, driven through the ASGI interface uvicorn calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from garrison.web.app import WebApp
from garrison.web.headers import hsts_value, render, security_headers
from garrison.web.http import HttpError, HttpRequest, HttpResponse, json_response
from garrison.web.router import RouteMiss, Router


def call(
    app: WebApp,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through the app; (status, headers, body) of the answer."""
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
        "client": ("192.0.2.1", 50000),
    }
    asyncio.run(app(scope, receive, send))
    start, end = sent
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], answer_headers, end["body"]


async def echo(request: HttpRequest) -> HttpResponse:
    return json_response(200, {"query": request.query, "form": request.form, "ip": request.client_ip})


async def teapot(request: HttpRequest) -> HttpResponse:
    raise HttpError(418, "teapot", "I am one.")


def test_routing_answers_404_and_405_with_allow() -> None:
    app = WebApp(hsts=False)
    app.route("GET", "/echo", echo)
    app.route("POST", "/echo", echo)
    assert call(app, "GET", "/echo")[0] == 200
    status, headers, body = call(app, "DELETE", "/echo")
    assert (status, headers["allow"], json.loads(body)) == (405, "GET, POST", {"error": "method_not_allowed"})
    status, _, body = call(app, "GET", "/elsewhere")
    assert (status, json.loads(body)) == (404, {"error": "not_found"})


def test_errors_are_json_and_limits_hold() -> None:
    app = WebApp(hsts=False, max_body=4096)
    app.route("POST", "/echo", echo)
    app.route("GET", "/teapot", teapot)
    status, _, body = call(app, "GET", "/teapot")
    assert (status, json.loads(body)) == (418, {"error": "teapot", "error_description": "I am one."})
    assert call(app, "POST", "/echo", body=b"a=" + b"x" * 5000)[0] == 413
    assert call(app, "GET", "/teapot", query=b"a=1&a=2")[0] == 400  # a repeated parameter
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    status, _, body = call(app, "POST", "/echo", body=b"a=1&b=2", headers=form)
    assert (status, json.loads(body)["form"]) == (200, {"a": "1", "b": "2"})
    assert call(app, "POST", "/echo", body=b"{}", headers=[(b"content-type", b"application/json")])[0] == 415
    twice = [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]
    assert call(app, "POST", "/echo", headers=twice)[0] == 400


def test_every_answer_carries_the_security_headers() -> None:
    plain, tls = WebApp(hsts=False), WebApp(hsts=True)
    for app in (plain, tls):
        app.route("GET", "/echo", echo)
    _, headers, _ = call(plain, "GET", "/echo")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in headers
    _, headers, _ = call(tls, "GET", "/echo")
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_the_gateway_block_is_the_bytes_it_always_was() -> None:
    hsts = hsts_value(31536000, include_subdomains=True, preload=True)
    block = render(security_headers(hsts=hsts, referrer_policy=None, frame_deny=False))
    assert block == (
        b"x-content-type-options: nosniff\r\n"
        b"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
    )
    assert render(security_headers(hsts=None, referrer_policy=None, frame_deny=False)) == (
        b"x-content-type-options: nosniff\r\n"
    )


def test_router_prefixes_own_their_subtree() -> None:
    router: Router[str] = Router()
    router.route("GET", "/live", "live")
    router.mount("/blocklist", "blocklist")
    assert router.match("GET", "/live") == "live"
    assert router.match("PUT", "/blocklist/x") == "blocklist"
    assert router.match("GET", "/blocklistx") == RouteMiss(404)
    assert router.match("POST", "/live") == RouteMiss(405, "GET")
