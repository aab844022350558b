"""JWT-protected routes through a real gateway: tokens minted here, keys served by a real JWKS server."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from gateway_harness import GatewayProcess, RecordingUpstream, deep_merge, http_call, wait_until
from jwt_issuer import AUDIENCE, Issuer


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


def jwt_gateway(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer, **gateway: Any
) -> GatewayProcess:
    """Two JWT routes; ``gateway`` is merged into the gateway section (``workers=2``, ``jwt={...}``)."""
    jwt_settings = {
        "issuer": issuer.url,
        "jwks_url": f"{issuer.url}/jwks",
        "audiences": [AUDIENCE],
        "min_refetch_interval": "1s",
    }
    return gateway_factory(
        upstream,
        {
            "gateway": deep_merge({"jwt": jwt_settings}, gateway),
            "routes": [
                {
                    "match": {"path": "/orders", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "jwt", "scopes": ["orders:read"]},
                },
                {
                    "match": {"path": "/admin", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "jwt", "scopes": ["admin"]},
                },
            ],
        },
    )


def call(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    status, response_headers, _ = http_call(gw.port, path, headers)
    return status, response_headers


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def test_valid_token_reaches_the_upstream_with_the_identity(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = jwt_gateway(gateway_factory, upstream, issuer)
    spoofed = {"X-Garrison-Subject": "admin", "x_garrison_scopes": "admin"}
    status, _ = call(gw, "/orders/7", bearer(issuer.token(), **spoofed))
    assert status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.header("x-garrison-subject") == b"user-42"
    assert request.header("x-garrison-client") == b"web"
    assert request.header("x-garrison-scopes") == b"orders:read"
    assert request.header_values("x-garrison-subject") == [b"user-42"]  # the spoofed copy was dropped
    line = gw.wait_access_log(lambda entry: entry.get("path") == "/orders/7")
    assert line["subject"] == "user-42"


@pytest.mark.parametrize(
    ("make_headers", "status", "error"),
    [
        (lambda i: {}, 401, None),
        (lambda i: bearer("not.a.token"), 401, "invalid_token"),
        (lambda i: bearer(i.token(aud="other-api")), 401, "invalid_token"),
        (lambda i: bearer(i.token(exp=int(time.time()) - 3600)), 401, "invalid_token"),
        (lambda i: bearer(i.token(iss="https://evil.example")), 401, "invalid_token"),
        (lambda i: bearer(i.token(scope="profile")), 403, "insufficient_scope"),
        (lambda i: {"Authorization": "Basic dXNlcjpwYXNz"}, 401, None),
    ],
    ids=["missing", "garbage", "wrong-aud", "expired", "wrong-iss", "scope", "basic"],
)
def test_refusals_carry_a_bearer_challenge(
    gateway_factory: Any,
    upstream: RecordingUpstream,
    issuer: Issuer,
    make_headers: Any,
    status: int,
    error: str | None,
) -> None:
    gw = jwt_gateway(gateway_factory, upstream, issuer)
    got, headers = call(gw, "/orders/1", make_headers(issuer))
    assert got == status
    challenge = headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="garrison"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    if error == "insufficient_scope":
        assert 'scope="orders:read"' in challenge
    assert upstream.requests == []


def test_query_tokens_and_two_tokens_are_refused(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = jwt_gateway(gateway_factory, upstream, issuer)
    token = issuer.token()
    assert call(gw, f"/orders/1?access_token={token}")[0] == 400
    assert call(gw, f"/orders/1?access_token={token}", bearer(token))[0] == 400
    assert call(gw, "/admin/x", bearer(token))[0] == 403
    assert upstream.requests == []


def test_key_rotation_is_picked_up_and_unknown_kids_are_rate_limited(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = jwt_gateway(gateway_factory, upstream, issuer)
    assert call(gw, "/orders/1", bearer(issuer.token()))[0] == 200
    issuer.add_key("k2")  # published now, used right away: one refetch picks it up
    # Refetched once min_refetch_interval (1 s) since start has passed; until then k2 is an unknown kid.
    accepted = lambda: call(gw, "/orders/2", bearer(issuer.token("k2")))[0] == 200  # noqa: E731
    wait_until(accepted, timeout=10, interval=0.1, what="the gateway to pick up the new key k2")
    fetches = issuer.fetches
    forged = [
        jwt.encode({"sub": "x"}, issuer.keys["k1"], "ES256", headers={"kid": f"nope-{i}"}) for i in range(40)
    ]
    assert {call(gw, "/orders/3", bearer(token))[0] for token in forged} == {401}
    assert issuer.fetches - fetches <= 2  # a flood of unknown kids costs at most a fetch per interval


def ready(gw: GatewayProcess) -> tuple[int, bytes]:
    status, _, body = http_call(gw.admin_port, "/ready")
    return status, body


@pytest.mark.parametrize("workers", [1, 2])
def test_gateway_started_before_its_issuer_answers_503_until_the_keys_arrive(
    gateway_factory: Any, upstream: RecordingUpstream, workers: int, held_port: int
) -> None:
    issuer = Issuer(port=held_port, serve=False)  # the issuer is down: its (held) port refuses connections
    try:
        # A refetch interval of an hour: recovery must come from the short back-off, not from it.
        gw = jwt_gateway(
            gateway_factory, upstream, issuer, workers=workers, jwt={"min_refetch_interval": "1h"}
        )
        token = issuer.token()
        status, headers, body = http_call(gw.port, "/orders/1", bearer(token))
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        assert "www-authenticate" not in headers  # not a verdict on the token: clients keep it
        assert json.loads(body)["error"] == "authentication_unavailable"
        assert call(gw, "/orders/1", bearer("not.a.token"))[0] == 401  # a broken token is still refused
        assert call(gw, "/orders/1")[0] == 401  # and so is no token
        status, reason = ready(gw)
        assert status == 503 and b"no JWT key set loaded yet" in reason
        assert upstream.requests == []

        issuer.serve()
        # Normally within a second or two (the back-off has reached 1-2 s by now); the deadline is
        # generous for a loaded machine, and still far below the hour the refetch interval would take.
        assert wait_until(lambda: ready(gw)[0] == 200, timeout=15), ready(gw)
        assert call(gw, "/orders/1", bearer(token))[0] == 200
        assert "gateway.jwks.unavailable" in gw.stderr_text()
        assert "keeping 0 keys" not in gw.stderr_text()
    finally:
        issuer.stop()


def test_reload_while_the_issuer_is_down_keeps_the_keys(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = jwt_gateway(gateway_factory, upstream, issuer)
    assert call(gw, "/orders/1", bearer(issuer.token()))[0] == 200
    issuer.stop()
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)  # the new configuration cannot fetch the keys ...
    assert wait_until(lambda: "gateway.reload.ok" in gw.stderr_text(), timeout=10), gw.stderr_tail()
    # ... and starts from the ones it had (a new token: the reload also emptied the token cache).
    assert call(gw, "/orders/2", bearer(issuer.token(jti="after-reload")))[0] == 200
    assert ready(gw)[0] == 200
