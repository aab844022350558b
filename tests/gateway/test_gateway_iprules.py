"""IP allow/deny lists and the dynamic blocklist, through real gateway processes.

The address every control uses is the client resolved through trusted_proxies (here 10.0.0.0/8;
the test client connects from 127.0.0.1, which is not trusted), so a forged X-Forwarded-For must
change nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gateway_harness import GatewayProcess, RecordingUpstream, garrison_cli, http_call, wait_until


def status_of(gw: GatewayProcess, path: str = "/x", headers: dict[str, str] | None = None) -> int:
    return http_call(gw.port, path, headers)[0]


def admin(gw: GatewayProcess, method: str, query: str) -> tuple[int, dict[str, Any]]:
    status, _, body = http_call(gw.admin_port, f"/blocklist?{query}", gw.admin_headers(), method=method)
    return status, json.loads(body)


def test_global_deny_and_route_allow_lists(gateway_factory, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(
        upstream,
        {
            "gateway": {"ip_rules": {"deny": ["192.0.2.0/24"]}},
            "routes": [
                {
                    "match": {"path": "/", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "none"},
                    "name": "catchall",
                },
                {
                    "match": {"path": "/admin", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "none"},
                    "name": "admin",
                    "ip_rules": {"allow": ["10.1.0.0/16"]},
                },
            ],
        },
    )
    assert status_of(gw, "/x") == 200
    assert status_of(gw, "/admin/panel") == 403  # 127.0.0.1 is not on the route's allow list
    # A forged X-Forwarded-For from an untrusted peer claims an allowed address: nothing changes.
    assert status_of(gw, "/admin/panel", {"X-Forwarded-For": "10.1.2.3"}) == 403
    before = len(upstream.requests)
    assert status_of(gw, "/admin") == 403
    assert len(upstream.requests) == before  # refused before the upstream
    line = gw.wait_access_log(lambda entry: entry.get("error") == "forbidden")
    assert line["client_ip"] == "127.0.0.1" and line["status"] == 403


def test_global_rules_deny_the_resolved_client(gateway_factory, upstream: RecordingUpstream) -> None:
    deny_loopback = {"gateway": {"ip_rules": {"deny": ["127.0.0.0/8", "::1/128"]}}}
    gw = gateway_factory(upstream, deny_loopback)
    assert status_of(gw) == 403
    assert status_of(gw, headers={"X-Forwarded-For": "203.0.113.7"}) == 403
    assert upstream.requests == []


def test_block_expires_and_unblock_lifts_it(gateway_factory, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream)
    assert status_of(gw) == 200
    status, answer = admin(gw, "POST", "ip=127.0.0.1&for=1s&reason=test")
    assert status == 200 and answer["blocked"]["ip"] == "127.0.0.1"
    assert status_of(gw) == 403
    assert admin(gw, "GET", "")[1]["blocked"][0]["reason"] == "test"
    assert wait_until(lambda: status_of(gw) == 200, timeout=3)
    admin(gw, "POST", "ip=127.0.0.1&for=1h")
    assert status_of(gw) == 403
    assert admin(gw, "DELETE", "ip=127.0.0.1") == (200, {"unblocked": True})
    assert status_of(gw) == 200
    assert admin(gw, "POST", "ip=not-an-ip&for=1m")[0] == 400
    assert admin(gw, "POST", "ip=127.0.0.1&for=-5s")[0] == 400


def test_cli_blocks_every_worker(gateway_factory, upstream: RecordingUpstream, held_port: int) -> None:
    gw = gateway_factory(upstream, {"gateway": {"workers": 2, "admin": {"listen": f"127.0.0.1:{held_port}"}}})
    config = str(gw.config_path)
    result = garrison_cli("block", "127.0.0.1", "--for", "1h", "--reason", "cli test", "-c", config)
    assert result.returncode == 0, result.stderr
    assert "blocked" in result.stderr
    # New connections land on either worker (SO_REUSEPORT): every one of them must refuse.
    assert {status_of(gw) for _ in range(30)} == {403}
    listing = garrison_cli("blocklist", "-c", config)
    assert listing.returncode == 0 and "127.0.0.1" in listing.stdout and "cli test" in listing.stdout
    assert garrison_cli("unblock", "127.0.0.1", "-c", config).returncode == 0
    assert {status_of(gw) for _ in range(30)} == {200}
    bad = garrison_cli("block", "999.1.1.1", "-c", config)
    assert bad.returncode == 1 and "not an IP address" in bad.stderr


def test_redis_blocklist_is_shared_between_gateways(
    gateway_factory, upstream: RecordingUpstream, redis_url: str
) -> None:
    prefix = f"garrison-test:{uuid.uuid4().hex}"
    blocklist = {"storage": "redis", "prefix": prefix}
    shared = {"redis": {"url": redis_url}, "gateway": {"blocklist": blocklist}}
    first = gateway_factory(upstream, shared)
    second = gateway_factory(upstream, shared)
    assert status_of(second) == 200
    assert admin(first, "POST", "ip=127.0.0.1&for=30s")[0] == 200
    started = time.monotonic()
    assert wait_until(lambda: status_of(second) == 403, timeout=1.5)
    assert time.monotonic() - started < 1.5
    assert admin(second, "DELETE", "ip=127.0.0.1")[1] == {"unblocked": True}
    assert wait_until(lambda: status_of(first) == 200, timeout=1.5)
