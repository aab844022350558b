"""Token revocation through real gateway processes: the admin API, the CLI on every worker, and a
Redis feed shared by two gateways and written to directly, as an identity provider would."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis
from gateway_harness import (
    GatewayProcess,
    RecordingUpstream,
    deep_merge,
    garrison_cli,
    http_call,
    wait_until,
)
from test_gateway_jwt import Issuer, bearer, jwt_gateway


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


def revocation_gateway(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer, extra: dict[str, Any]
) -> GatewayProcess:
    """The JWT test gateway (routes /orders and /admin) with ``extra`` merged into its config."""
    return jwt_gateway(
        lambda up, overrides: gateway_factory(up, deep_merge(overrides, extra)), upstream, issuer
    )


def minted(issuer: Issuer) -> tuple[str, str, int]:
    """A fresh token with a jti of its own: (token, jti, exp)."""
    jti = f"t-{uuid.uuid4().hex}"
    token = issuer.token(jti=jti)
    return token, jti, int(jwt.decode(token, options={"verify_signature": False})["exp"])


def status(gw: GatewayProcess, token: str) -> int:
    return http_call(gw.port, "/orders/1", bearer(token))[0]


def admin(gw: GatewayProcess, method: str, query: str) -> tuple[int, dict[str, Any]]:
    code, _, body = http_call(gw.admin_port, f"/revocations?{query}", gw.admin_headers(), method=method)
    return code, json.loads(body) if body.startswith(b"{") else {}


def test_admin_revocation_refuses_a_cached_token(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = revocation_gateway(gateway_factory, upstream, issuer, {})
    token, jti, exp = minted(issuer)
    other, _, _ = minted(issuer)
    assert [status(gw, token), status(gw, token), status(gw, other)] == [200, 200, 200]  # now cached

    assert admin(gw, "POST", f"jti={jti}&until={exp}") == (200, {"revoked": {"jti": jti, "until": exp}})
    code, headers, _ = http_call(gw.port, "/orders/1", bearer(token))
    assert code == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert status(gw, other) == 200  # only that jti
    assert admin(gw, "GET", "") == (200, {"revoked": [{"jti": jti, "until": exp}]})

    gw.proc.send_signal(signal.SIGHUP)  # a reload builds a new token cache on the same revocations
    assert wait_until(lambda: "gateway.reload.ok" in gw.stderr_text())
    assert status(gw, token) == 401

    assert admin(gw, "POST", "jti=has%20space&for=1m")[0] == 400
    assert admin(gw, "POST", "jti=x&until=1")[0] == 400  # in the past
    assert admin(gw, "POST", "jti=x")[0] == 400  # neither until nor for
    assert admin(gw, "POST", f"jti=x&for=1m&until={exp}")[0] == 400  # both
    assert admin(gw, "DELETE", "jti=x")[0] == 405  # a revocation only expires
    logged = gw.stderr_text() + json.dumps(gw.access_log_lines())
    assert token.split(".")[2] not in logged  # a token never reaches a log


def test_cli_revokes_on_every_worker(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer, held_port: int
) -> None:
    admin_listen = {"gateway": {"workers": 2, "admin": {"listen": f"127.0.0.1:{held_port}"}}}
    gw = revocation_gateway(gateway_factory, upstream, issuer, admin_listen)
    config = str(gw.config_path)
    token, jti, _ = minted(issuer)
    # New connections land on either worker (SO_REUSEPORT): both verify, and cache, the token.
    assert {status(gw, token) for _ in range(20)} == {200}

    result = garrison_cli("revoke", jti, "--for", "10m", "-c", config)
    assert result.returncode == 0, result.stderr
    assert f"revoked {jti} until" in result.stderr
    assert {status(gw, token) for _ in range(20)} == {401}
    listing = garrison_cli("revocations", "-c", config)
    assert listing.returncode == 0 and jti in listing.stdout and "1 revoked token" in listing.stdout

    neither = garrison_cli("revoke", jti, "-c", config)
    assert neither.returncode == 2 and "--until" in neither.stderr and "--for" in neither.stderr
    bad = garrison_cli("revoke", "has space", "--for", "1m", "-c", config)
    assert bad.returncode == 1 and "visible ASCII" in bad.stderr


def test_redis_revocations_reach_every_gateway_and_come_from_an_idp(
    gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer, redis_url: str
) -> None:
    prefix = f"garrison-test:revoked:{uuid.uuid4().hex}"
    shared = {"redis": {"url": redis_url}, "revocations": {"storage": "redis", "prefix": prefix}}
    first = revocation_gateway(gateway_factory, upstream, issuer, shared)
    second = revocation_gateway(gateway_factory, upstream, issuer, shared)
    by_admin, admin_jti, _ = minted(issuer)
    by_idp, idp_jti, idp_exp = minted(issuer)
    assert {status(gw, token) for gw in (first, second) for token in (by_admin, by_idp)} == {200}
    try:
        assert admin(first, "POST", f"jti={admin_jti}&for=5m")[0] == 200
        assert status(first, by_admin) == 401
        assert wait_until(lambda: status(second, by_admin) == 401, timeout=5)

        # The identity provider's side of the documented wire format: one MULTI of ZADD + PUBLISH.
        message = json.dumps({"op": "revoke", "jti": idp_jti, "until": idp_exp})
        with redis.Redis.from_url(redis_url) as client, client.pipeline(transaction=True) as pipe:
            pipe.zadd(f"{prefix}:until", {idp_jti: idp_exp})
            pipe.publish(f"{prefix}:events", message)
            pipe.execute()
        for gw in (first, second):
            assert wait_until(lambda gw=gw: status(gw, by_idp) == 401, timeout=5)
        listed = {entry["jti"] for entry in admin(second, "GET", "")[1]["revoked"]}
        assert listed == {admin_jti, idp_jti}
    finally:
        with redis.Redis.from_url(redis_url) as client:
            client.delete(f"{prefix}:until")
