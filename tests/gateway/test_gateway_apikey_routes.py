"""Routes that require an API key: keys made with the CLI, checked by every gateway worker."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway_harness import GatewayProcess, RecordingUpstream, wait_until


def garrison(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "garrison", *args], capture_output=True, text=True, timeout=60, check=False
    )


def call(gw: GatewayProcess, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{gw.port}/keyed/x", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


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
    result = garrison(*args)
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
    # New keys reach the gateways' snapshots within the refresh interval.
    assert wait_until(lambda: call(gw, {"X-API-Key": key}) == 200, timeout=3)
    assert call(gw, {"Authorization": f"ApiKey {key}"}) == 200
    request = upstream.requests[-1]
    assert request.header("x-garrison-subject") == b"apikey:billing"
    assert request.header("x-api-key") is None and request.header("authorization") is None  # key hidden
    assert call(gw, {}) == 401
    assert call(gw, {"X-API-Key": key[:-2] + "xx"}) == 401
    assert call(gw, {"X-API-Key": weak}) == 403
    assert call(gw, {"X-API-Key": key, "Authorization": f"ApiKey {weak}"}) == 400
    listing = garrison("apikey", "list", "-c", config)
    assert "billing" in listing.stdout and key not in listing.stdout
    assert garrison("apikey", "revoke", "billing", "-c", config).returncode == 0
    # Each new connection may land on either worker: all must refuse within a couple of seconds.
    assert wait_until(lambda: {call(gw, {"X-API-Key": key}) for _ in range(10)} == {401}, timeout=3)
    assert "revoked" in garrison("apikey", "list", "-c", config).stdout


def test_keys_pass_through_to_routes_that_do_not_consume_them(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    gw = keyed_gateway(gateway_factory, upstream)
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.port}/open/x", headers={"X-API-Key": "an-upstream-own-key"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    assert upstream.wait_for_requests(1)[0].header("x-api-key") == b"an-upstream-own-key"
