"""Routes that require an API key: keys made with the CLI, checked by every gateway worker."""

from __future__ import annotations

from typing import Any

from gateway_harness import GatewayProcess, RecordingUpstream, garrison_cli, http_call, wait_until


def call(gw: GatewayProcess, headers: dict[str, str]) -> int:
    return http_call(gw.port, "/keyed/x", headers)[0]


def keyed_gateway(gateway_factory: Any, upstream: RecordingUpstream) -> GatewayProcess:
    return gateway_factory(
        upstream,
        {
            "gateway": {"workers": 2, "api_keys": {"refresh_interval": "0.2s"}},
            "routes": [
                {
                    "match": {"path": "/keyed", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "api_key", "scopes": ["orders:read"]},
                },
                {"match": {"path": "/open", "prefix": True}, "service": "rec", "auth": {"require": "none"}},
            ],
        },
    )


def create_key(config: str, name: str, *scopes: str) -> str:
    args = ["apikey", "create", "--name", name, "-c", config]
    for scope in scopes:
        args += ["--scope", scope]
    result = garrison_cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_api_keys_from_the_cli_work_and_revocation_reaches_every_worker(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    gw = keyed_gateway(gateway_factory, upstream)
    config = str(gw.config_path)
    key = create_key(config, "billing", "orders:read")
    weak = create_key(config, "weak", "profile")
    assert key.startswith("gk_") and weak != key
    # New keys reach every worker's snapshot within the refresh interval (connections land on
    # either worker, so ask several times).
    assert wait_until(lambda: {call(gw, {"X-API-Key": key}) for _ in range(10)} == {200}, timeout=3)
    assert wait_until(lambda: {call(gw, {"X-API-Key": weak}) for _ in range(10)} == {403}, timeout=3)
    assert call(gw, {"Authorization": f"ApiKey {key}"}) == 200
    request = upstream.requests[-1]
    assert request.header("x-garrison-subject") == b"apikey:billing"
    assert request.header("x-api-key") is None and request.header("authorization") is None  # key hidden
    assert call(gw, {}) == 401
    assert call(gw, {"X-API-Key": key[:-2] + "xx"}) == 401
    assert call(gw, {"X-API-Key": weak}) == 403
    assert call(gw, {"X-API-Key": key, "Authorization": f"ApiKey {weak}"}) == 400
    listing = garrison_cli("apikey", "list", "-c", config)
    assert "billing" in listing.stdout and key not in listing.stdout
    assert garrison_cli("apikey", "revoke", "billing", "-c", config).returncode == 0
    # Each new connection may land on either worker: all must refuse within a couple of seconds.
    assert wait_until(lambda: {call(gw, {"X-API-Key": key}) for _ in range(10)} == {401}, timeout=3)
    assert "revoked" in garrison_cli("apikey", "list", "-c", config).stdout


def test_keys_pass_through_to_routes_that_do_not_consume_them(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    gw = keyed_gateway(gateway_factory, upstream)
    assert http_call(gw.port, "/open/x", {"X-API-Key": "an-upstream-own-key"})[0] == 200
    assert upstream.wait_for_requests(1)[0].header("x-api-key") == b"an-upstream-own-key"
