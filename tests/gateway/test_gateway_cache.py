"""Response caching (`routes[].cache`) through a real gateway: hits, misses, isolation, what is not stored."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest
from gateway_harness import GatewayProcess, RecordedRequest, RecordingUpstream, Reply, http_call, wait_until
from jwt_issuer import AUDIENCE, Issuer

_serial = count()


def echo(*headers: tuple[bytes, bytes]) -> Any:
    """An upstream answer that names the request it answers, so a stale or foreign copy shows."""

    def answer(request: RecordedRequest) -> Reply:
        subject = request.header("x-garrison-subject") or b"-"
        body = b"%s %s #%d" % (subject, request.target, next(_serial))
        return Reply(body=body, headers=((b"content-type", b"text/plain"), *headers))

    return answer


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


def cached_gateway(gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer) -> GatewayProcess:
    jwt = {"issuer": issuer.url, "jwks_url": f"{issuer.url}/jwks", "audiences": [AUDIENCE]}
    return gateway_factory(
        upstream,
        {
            "gateway": {"jwt": jwt, "cache": {"max_entry_size": "4KiB"}},
            "routes": [
                {
                    "match": {"path": "/catalog", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "none"},
                    "cache": {"ttl": "1m"},
                },
                {
                    "match": {"path": "/me", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "jwt"},
                    "cache": {"ttl": "1m"},
                },
                {
                    "match": {"path": "/live", "prefix": True},
                    "service": "rec",
                    "auth": {"require": "none"},
                },
            ],
        },
    )


@pytest.fixture
def gw(gateway_factory: Any, upstream: RecordingUpstream, issuer: Issuer) -> GatewayProcess:
    return cached_gateway(gateway_factory, upstream, issuer)


def fetch(
    gw: GatewayProcess, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return http_call(gw.port, path, headers, method=method)


def test_a_second_request_is_a_hit_the_upstream_never_sees(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    upstream.handler = echo()
    status, first_headers, first = fetch(gw, "/catalog/items?page=2")
    assert status == 200 and first_headers["x-cache"] == "MISS"
    status, headers, body = fetch(gw, "/catalog/items?page=2")
    assert status == 200 and headers["x-cache"] == "HIT"
    assert body == first
    assert int(headers["age"]) >= 0
    assert headers["content-length"] == str(len(body))
    # A hit is still the gateway's response: security headers, and its own request id.
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-request-id"] != first_headers["x-request-id"]
    assert len(upstream.requests) == 1
    # Another query is another entry.
    assert fetch(gw, "/catalog/items?page=3")[1]["x-cache"] == "MISS"
    assert len(upstream.wait_for_requests(2)) == 2


def test_two_users_never_see_each_others_cached_response(
    gw: GatewayProcess, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    upstream.handler = echo()
    alice = {"Authorization": f"Bearer {issuer.token(sub='alice')}"}
    bob = {"Authorization": f"Bearer {issuer.token(sub='bob')}"}
    _, headers, alice_body = fetch(gw, "/me/profile", **alice)
    assert headers["x-cache"] == "MISS" and alice_body.startswith(b"alice ")
    _, headers, bob_body = fetch(gw, "/me/profile", **bob)
    assert headers["x-cache"] == "MISS" and bob_body.startswith(b"bob ")
    _, headers, again = fetch(gw, "/me/profile", **alice)
    assert headers["x-cache"] == "HIT" and again == alice_body
    _, headers, again = fetch(gw, "/me/profile", **bob)
    assert headers["x-cache"] == "HIT" and again == bob_body
    # No token: refused before the cache is consulted, whatever it holds.
    assert fetch(gw, "/me/profile")[0] == 401
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    "header",
    [
        (b"cache-control", b"no-store"),
        (b"cache-control", b"private, max-age=60"),
        (b"cache-control", b"no-cache"),
        (b"cache-control", b"max-age=0"),
        (b"set-cookie", b"session=abc; HttpOnly"),
        (b"vary", b"*"),
    ],
)
def test_responses_the_upstream_marks_uncacheable_are_never_served_again(
    gw: GatewayProcess, upstream: RecordingUpstream, header: tuple[bytes, bytes]
) -> None:
    upstream.handler = echo(header)
    bodies = [fetch(gw, "/catalog/private")[2] for _ in range(3)]
    assert len(set(bodies)) == 3
    assert len(upstream.requests) == 3


def test_vary_keeps_one_entry_per_variant(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.handler = echo((b"vary", b"Accept-Language"))
    _, _, english = fetch(gw, "/catalog/greeting", **{"Accept-Language": "en"})
    _, _, french = fetch(gw, "/catalog/greeting", **{"Accept-Language": "fr"})
    assert english != french
    _, headers, body = fetch(gw, "/catalog/greeting", **{"Accept-Language": "fr"})
    assert headers["x-cache"] == "HIT" and body == french
    _, headers, body = fetch(gw, "/catalog/greeting", **{"Accept-Language": "en"})
    assert headers["x-cache"] == "HIT" and body == english


def test_only_get_and_head_are_cached_and_separately(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.handler = echo()
    assert fetch(gw, "/catalog/x", method="POST")[1].get("x-cache") is None
    assert fetch(gw, "/catalog/x", method="POST")[1].get("x-cache") is None
    status, headers, body = fetch(gw, "/catalog/x", method="HEAD")
    assert status == 200 and headers["x-cache"] == "MISS" and body == b""
    status, headers, body = fetch(gw, "/catalog/x", method="HEAD")
    assert headers["x-cache"] == "HIT" and body == b"" and int(headers["content-length"]) > 0
    assert fetch(gw, "/catalog/x")[1]["x-cache"] == "MISS"
    assert [r.method for r in upstream.wait_for_requests(4)] == [b"POST", b"POST", b"HEAD", b"GET"]


def test_a_client_can_ask_for_a_fresh_answer(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.handler = echo()
    _, _, first = fetch(gw, "/catalog/fresh")
    _, headers, fresh = fetch(gw, "/catalog/fresh", **{"Cache-Control": "no-cache"})
    assert headers["x-cache"] == "MISS" and fresh != first
    _, headers, body = fetch(gw, "/catalog/fresh")
    assert headers["x-cache"] == "HIT" and body == fresh  # the fresh answer replaced the old one


def test_credentials_on_an_open_route_bypass_the_shared_cache(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    upstream.handler = echo()
    fetch(gw, "/catalog/shared", Authorization="Basic dXNlcjpwYXNz")
    _, headers, _ = fetch(gw, "/catalog/shared", Authorization="Basic dXNlcjpwYXNz")
    assert headers["x-cache"] == "MISS"  # RFC 9111 §3.5: not stored for a request with credentials


def test_large_responses_stream_through_uncached(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(size=64 * 1024, framing="chunked")
    for _ in range(2):
        status, headers, body = fetch(gw, "/catalog/big")
        assert status == 200 and len(body) == 64 * 1024 and headers["x-cache"] == "MISS"


def test_routes_without_cache_say_nothing_and_metrics_count_lookups(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    upstream.handler = echo()
    assert "x-cache" not in fetch(gw, "/live/x")[1]
    fetch(gw, "/catalog/metrics")
    fetch(gw, "/catalog/metrics")
    status, _, text = http_call(gw.admin_port, "/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    assert any(
        line.startswith("garrison_gateway_cache_lookups_total{") and 'result="hit"' in line for line in lines
    )
    held = next(line for line in lines if line.startswith("garrison_gateway_cache_bytes "))
    assert float(held.split()[1]) > 0


def test_an_entry_expires_with_its_max_age(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.handler = echo((b"cache-control", b"max-age=1"))
    _, _, first = fetch(gw, "/catalog/short")
    assert fetch(gw, "/catalog/short")[2] == first
    # Polled, not timed: the entry must go within a few seconds of its 1 s max-age.
    assert wait_until(lambda: fetch(gw, "/catalog/short")[1]["x-cache"] == "MISS", timeout=5.0, interval=0.2)
