"""The identity provider and the gateway together: a token from the provider opens a protected route,
and revoking it at the provider closes the route within seconds — pushed to the gateway's admin API,
or published through Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import RecordingUpstream, http_call, wait_until
from identity_harness import IdentityProcess, identity_config


def protected_routes(issuer: str) -> dict[str, Any]:
    return {
        "gateway": {"jwt": {"issuer": issuer, "jwks_url": issuer + "/jwks", "audiences": ["garrison"]}},
        "routes": [
            {
                "match": {"path": "/orders", "prefix": True},
                "service": "rec",
                "auth": {"require": "jwt", "scopes": ["orders:read"]},
            }
        ],
    }


def status_with(port: int, token: str) -> int:
    return http_call(port, "/orders/1", {"Authorization": f"Bearer {token}"})[0]


@pytest.mark.parametrize("feed", ["push", "redis"])
def test_a_token_revoked_at_the_provider_is_refused_by_the_gateway(
    feed: str,
    tmp_path: Path,
    gateway_factory: Any,
    upstream: RecordingUpstream,
    request: pytest.FixtureRequest,
    held_port: int,
) -> None:
    admin_port = held_port  # the provider is told where to push before the gateway starts
    config = identity_config(tmp_path / "idp")
    shared: dict[str, Any] = {}  # for the gateway section
    top: dict[str, Any] = {}  # for the top level of both files
    if feed == "push":
        # The provider has a state dir of its own: it is told where the gateway's admin token is.
        token_file = str(tmp_path / "gateway-admin.token")
        config["identity"]["revocation_push"] = [f"http://127.0.0.1:{admin_port}"]
        config["identity"]["revocation_push_token_file"] = token_file
        shared = {"admin": {"listen": f"127.0.0.1:{admin_port}", "token_file": token_file}}
    else:
        prefix = f"garrison:test:{uuid.uuid4().hex[:8]}"
        top = {
            "redis": {"url": request.getfixturevalue("redis_url")},
            "revocations": {"storage": "redis", "prefix": prefix},
        }
        config.update(top)
    idp = IdentityProcess(tmp_path / "idp", config).start()
    try:
        service = idp.create_client("orders-client", "--scope", "orders:read")
        overrides = protected_routes(idp.issuer)
        overrides["gateway"].update({"admin": {"listen": f"127.0.0.1:{admin_port}"}})
        overrides["gateway"].update(shared)
        overrides.update(top)
        gateway = gateway_factory(upstream, overrides)
        token = idp.token(service).json()["access_token"]
        assert status_with(gateway.port, token) == 200  # accepted, and now in the gateway's token cache
        credentials = (service["client_id"], service["client_secret"])
        assert idp.post("/revoke", {"token": token}, credentials).status_code == 200
        assert wait_until(lambda: status_with(gateway.port, token) == 401, timeout=5.0, interval=0.05)
        # A fresh token for the same client still works: only the revoked one is refused.
        assert status_with(gateway.port, idp.token(service).json()["access_token"]) == 200
    finally:
        idp.stop()
