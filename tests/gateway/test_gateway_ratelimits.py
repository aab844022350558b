"""Route rate limits through real gateway processes: memory, shared Redis, and Redis going away."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from gateway_harness import GatewayProcess, RecordingUpstream, ThrowawayRedis, http_call, wait_until
from jwt_issuer import AUDIENCE, Issuer


def call(gw: GatewayProcess, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    status, response_headers, _ = http_call(gw.port, "/x", headers)
    return status, response_headers


def limited(rate: str, **extra: str) -> dict[str, object]:
    return {
        "routes": [
            {
                "match": {"path": "/", "prefix": True},
                "service": "rec",
                "auth": {"require": "none"},
                "name": "limited",
                "rate_limit": {"rate": rate, **extra},
            }
        ]
    }


def test_memory_limit_per_client_address(gateway_factory, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream, limited("5/minute", strategy="fixed_window"))
    answers = [call(gw, {"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(7)]
    statuses = [status for status, _ in answers]
    assert statuses == [200] * 5 + [429] * 2  # forged X-Forwarded-For values are one client
    ok_headers, refused_headers = answers[0][1], answers[5][1]
    assert ok_headers["ratelimit-limit"] == "5" and ok_headers["ratelimit-remaining"] == "4"
    assert 1 <= int(refused_headers["retry-after"]) <= 60
    assert refused_headers["content-type"] == "application/json"
    assert len(upstream.requests) == 5
    gw.wait_access_log(lambda line: line.get("status") == 429)


def test_shared_redis_limit_holds_across_two_gateways(
    gateway_factory, upstream: RecordingUpstream, redis_url: str
) -> None:
    # A fresh route name per run: counter keys are derived from it, so runs never share counts.
    overrides = limited("50/minute", strategy="fixed_window", storage="redis", key="route")
    overrides["routes"][0]["name"] = f"shared-{uuid.uuid4().hex}"  # type: ignore[index]
    overrides["redis"] = {"url": redis_url}
    first = gateway_factory(upstream, overrides)
    second = gateway_factory(upstream, overrides)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda i: call(first if i % 2 else second)[0], range(120)))
    assert statuses.count(200) == 50
    assert statuses.count(429) == 70


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(("mode", "status_while_down"), [("closed", 503), ("open", 200)])
def test_redis_going_away_follows_the_fail_mode_and_recovers(
    gateway_factory,
    upstream: RecordingUpstream,
    throwaway_redis: ThrowawayRedis,
    mode: str,
    status_while_down: int,
) -> None:
    overrides = limited("1000/minute", storage="redis", on_redis_error=mode)
    overrides["redis"] = {"url": f"redis://127.0.0.1:{throwaway_redis.port}/0"}
    gw = gateway_factory(upstream, overrides)
    assert call(gw)[0] == 200
    throwaway_redis.kill()
    assert {call(gw)[0] for _ in range(5)} == {status_while_down}
    throwaway_redis.start()
    assert wait_until(lambda: call(gw)[0] == 200 and call(gw)[0] == 200, timeout=5)
    metrics = http_call(gw.admin_port, "/metrics")[2].decode()
    assert f'outcome="failed_{mode}"' in metrics


# -- limits keyed by the authenticated client ----------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


def client_limited(issuer: Issuer, *limits: dict[str, str]) -> dict[str, object]:
    return {
        "gateway": {"jwt": {"issuer": issuer.url, "jwks_url": f"{issuer.url}/jwks", "audiences": [AUDIENCE]}},
        "routes": [
            {
                "match": {"path": "/", "prefix": True},
                "service": "rec",
                "auth": {"require": "jwt"},
                "name": "per-client",
                "rate_limit": list(limits),
            }
        ],
    }


def test_client_limits_count_each_client_whatever_its_token_or_address(
    gateway_factory, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    gw = gateway_factory(upstream, client_limited(issuer, {"rate": "3/minute", "key": "client"}))
    web = [issuer.token(client_id="web", jti=f"web-{i}") for i in range(4)]  # four tokens, one client
    batch = issuer.token(client_id="batch", sub="svc-batch")
    statuses = [
        call(gw, {"Authorization": f"Bearer {t}", "X-Forwarded-For": f"198.51.100.{i}"})[0]
        for i, t in enumerate(web)
    ]
    assert statuses == [200, 200, 200, 429]
    status, headers = call(gw, {"Authorization": f"Bearer {batch}"})
    assert status == 200  # another client has its own budget, from the same address
    assert headers["ratelimit-remaining"] == "2"


def test_address_limits_cut_a_flood_of_bad_tokens_before_signature_checks(
    gateway_factory, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    limits = ({"rate": "5/minute", "key": "ip"}, {"rate": "100/minute", "key": "client"})
    gw = gateway_factory(upstream, client_limited(issuer, *limits))
    forged = issuer.token()[:-4] + "AAAA"  # a bad signature
    statuses = [call(gw, {"Authorization": f"Bearer {forged}"})[0] for _ in range(8)]
    assert statuses == [401] * 5 + [429] * 3
    refused = gw.wait_access_log(lambda line: line.get("status") == 429)
    assert refused["subject"] is None  # refused before the token was looked at
    # A good token from the same address is refused too: the address limit counts it first.
    status, headers = call(gw, {"Authorization": f"Bearer {issuer.token()}"})
    assert status == 429 and headers["ratelimit-limit"] == "5"


def test_the_tightest_limit_is_the_one_in_the_headers(
    gateway_factory, upstream: RecordingUpstream, issuer: Issuer
) -> None:
    limits = ({"rate": "50/minute", "key": "ip"}, {"rate": "2/minute", "key": "client"})
    gw = gateway_factory(upstream, client_limited(issuer, *limits))
    token = {"Authorization": f"Bearer {issuer.token()}"}
    answers = [call(gw, token) for _ in range(3)]
    assert [status for status, _ in answers] == [200, 200, 429]
    first = answers[0][1]
    assert (first["ratelimit-limit"], first["ratelimit-remaining"]) == ("2", "1")
    assert answers[2][1]["ratelimit-limit"] == "2" and "retry-after" in answers[2][1]
