"""CORS on routes: the gateway answers preflights itself; real requests keep their authentication."""

from __future__ import annotations

from typing import Any

from gateway_harness import GatewayProcess, RecordingUpstream, http_call

APP = "https://app.example.com"


def cors_gateway(gateway_factory: Any, upstream: RecordingUpstream) -> GatewayProcess:
    cors = {
        "allow_origins": [APP],
        "allow_methods": ["GET"],  # the route also takes PUT, but not from pages
        "allow_headers": ["authorization", "x-api-key", "content-type"],
        "expose_headers": ["x-request-id"],
        "allow_credentials": True,
        "max_age": "10m",
    }
    return gateway_factory(
        upstream,
        {
            "routes": [
                {
                    "match": {"path": "/api", "prefix": True, "methods": ["GET", "PUT"]},
                    "service": "rec",
                    "auth": {"require": "api_key"},
                    "cors": cors,
                },
                {"match": {"path": "/open", "prefix": True}, "service": "rec", "auth": {"require": "none"}},
            ]
        },
    )


def preflight(gw: GatewayProcess, origin: str, method: str, headers: str = "") -> tuple[int, dict[str, str]]:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    status, response_headers, _ = http_call(gw.port, "/api/items", request_headers, method="OPTIONS")
    return status, response_headers


def test_preflight_is_answered_by_the_gateway(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = cors_gateway(gateway_factory, upstream)
    status, headers = preflight(gw, APP, "GET", "X-API-Key, Content-Type")
    assert status == 204
    assert headers["access-control-allow-origin"] == APP  # echoed: credentials rule out "*"
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-allow-methods"] == "GET"
    assert headers["access-control-allow-headers"] == "x-api-key, content-type"
    assert headers["access-control-max-age"] == "600"
    assert "origin" in headers["vary"].lower()
    assert upstream.settle() == []  # no credentials needed, and nothing reaches the upstream


def test_preflights_outside_the_policy_are_refused(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = cors_gateway(gateway_factory, upstream)
    assert preflight(gw, "https://evil.example", "GET")[0] == 403
    assert preflight(gw, APP, "PUT")[0] == 403  # the route takes PUT, the CORS policy does not
    assert preflight(gw, APP, "DELETE")[0] == 405  # the route itself does not take DELETE
    assert preflight(gw, APP, "GET", "x-secret-header")[0] == 403
    assert upstream.settle() == []


def test_the_real_request_still_needs_its_credentials(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    gw = cors_gateway(gateway_factory, upstream)
    status, headers, _ = http_call(gw.port, "/api/items", {"Origin": APP})
    assert status == 401  # the preflight opened nothing
    assert headers["access-control-allow-origin"] == APP  # ... but the page may read the refusal
    status, headers, _ = http_call(gw.port, "/api/items", {"Origin": "https://evil.example"})
    assert status == 401 and "access-control-allow-origin" not in headers
    assert upstream.settle() == []


def test_routes_without_cors_send_no_cors_headers(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = cors_gateway(gateway_factory, upstream)
    status, headers, _ = http_call(gw.port, "/open/x", {"Origin": APP})
    assert status == 200 and "access-control-allow-origin" not in headers
    # An OPTIONS preflight to a route without CORS is an ordinary request for the upstream.
    assert (
        http_call(gw.port, "/open/x", {"Origin": APP, "Access-Control-Request-Method": "GET"}, "OPTIONS")[0]
        == 200
    )
