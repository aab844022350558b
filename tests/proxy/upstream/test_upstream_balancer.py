"""Target URL parsing and the balancers' choices (no sockets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from garrison.proxy.upstream.balancer import LeastRequests, RoundRobin, make_balancer
from garrison.proxy.upstream.circuit import CircuitBreaker, CircuitState
from garrison.proxy.upstream.target import Target

NOW = 1000.0


def make_targets(n: int = 3, **breaker: float) -> list[Target]:
    return [
        Target.from_url(f"http://127.0.0.1:{7001 + i}", CircuitBreaker(**breaker))  # type: ignore[arg-type]
        for i in range(n)
    ]


def trip(target: Target, now: float = NOW) -> None:
    """Open the target's breaker (default threshold 5)."""
    for _ in range(5):
        target.breaker.record_failure(now)
    assert target.breaker.state is CircuitState.OPEN


# --- Target ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "host_header"),
    [
        ("http://127.0.0.1:7001", "http", "127.0.0.1", 7001, b"127.0.0.1:7001"),
        ("http://127.0.0.1:7001/", "http", "127.0.0.1", 7001, b"127.0.0.1:7001"),
        ("http://orders.internal", "http", "orders.internal", 80, b"orders.internal"),
        ("http://orders.internal:80", "http", "orders.internal", 80, b"orders.internal"),
        ("HTTPS://Orders.Example.COM", "https", "orders.example.com", 443, b"orders.example.com"),
        ("https://api.example.com:8443", "https", "api.example.com", 8443, b"api.example.com:8443"),
        ("https://api.example.com:443", "https", "api.example.com", 443, b"api.example.com"),
        ("http://[::1]:7001", "http", "::1", 7001, b"[::1]:7001"),
        ("http://[2001:DB8::1]", "http", "2001:db8::1", 80, b"[2001:db8::1]"),
    ],
)
def test_target_from_url(url: str, scheme: str, host: str, port: int, host_header: bytes) -> None:
    breaker = CircuitBreaker()
    target = Target.from_url(url, breaker)
    assert (target.url, target.scheme, target.host, target.port, target.host_header) == (
        url,
        scheme,
        host,
        port,
        host_header,
    )
    assert target.breaker is breaker
    assert target.in_flight == 0
    assert target.healthy
    assert target.available(NOW)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host", "http:// or https://"),
        ("127.0.0.1:7001", "http:// or https://"),
        ("//host:80", "http:// or https://"),
        ("http://user:pw@host", "credentials"),
        ("http://@host", "credentials"),
        ("http://host/api", "origin only"),
        ("http://host?x=1", "origin only"),
        ("http://host/?", "origin only"),
        ("http://host#frag", "origin only"),
        ("http://", "no host"),
        ("http://:80", "no host"),
        ("http://host:99999", "invalid"),
        ("http://host:abc", "invalid"),
        ("http://host:0", "port 0"),
        ("http://[::1", "invalid"),
        ("http://[not-ipv6]:80", "IPv6"),
        ("http://[fe80::1%25eth0]:80", "zone"),
        ("http://ho st:80", "whitespace"),
        ("http://host\r\n:80", "whitespace"),
        ("http://hôst:80", "ASCII"),
        ("http://ho$t:80", "invalid host"),
    ],
)
def test_target_from_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target.from_url(url, CircuitBreaker())


def test_target_identity_equality() -> None:
    a, b = (Target.from_url("http://127.0.0.1:7001", CircuitBreaker()) for _ in range(2))
    assert a != b
    assert len({a, b}) == 2


def test_available_does_not_take_half_open_slot() -> None:
    (target,) = make_targets(1, open_for=10.0)
    trip(target)
    assert not target.available(NOW + 5)
    for _ in range(3):
        assert target.available(NOW + 10)
    assert target.breaker.state is CircuitState.OPEN
    target.healthy = False
    assert not target.available(NOW + 10)


# --- RoundRobin -----------------------------------------------------------------------------------


def test_round_robin_rotates_evenly() -> None:
    targets = make_targets(3)
    rr = RoundRobin()
    picks = [rr.pick(targets, NOW) for _ in range(300)]
    assert picks[:4] == [targets[0], targets[1], targets[2], targets[0]]
    assert Counter(id(t) for t in picks) == {id(t): 100 for t in targets}


def test_round_robin_skips_unhealthy_and_open() -> None:
    targets = make_targets(3)
    targets[1].healthy = False
    rr = RoundRobin()
    picks = [rr.pick(targets, NOW) for _ in range(100)]
    assert Counter(id(t) for t in picks) == {id(targets[0]): 50, id(targets[2]): 50}
    trip(targets[2])
    assert {id(rr.pick(targets, NOW)) for _ in range(10)} == {id(targets[0])}


def test_round_robin_exclude_prefers_another_target() -> None:
    targets = make_targets(3)
    rr = RoundRobin()
    for _ in range(30):
        picked = rr.pick(targets, NOW, exclude=targets[0])
        assert picked is not None and picked is not targets[0]


def test_round_robin_exclude_is_last_resort() -> None:
    targets = make_targets(3)
    targets[1].healthy = False
    trip(targets[2])
    rr = RoundRobin()
    assert rr.pick(targets, NOW, exclude=targets[0]) is targets[0]
    targets[0].healthy = False
    assert rr.pick(targets, NOW, exclude=targets[0]) is None
    # An excluded target that is no longer in the list is not returned.
    other = make_targets(1)[0]
    assert rr.pick(targets, NOW, exclude=other) is None


def test_round_robin_none_when_all_down_or_empty() -> None:
    targets = make_targets(3)
    for t in targets:
        trip(t)
    rr = RoundRobin()
    assert rr.pick(targets, NOW) is None
    assert rr.pick([], NOW) is None


@pytest.mark.parametrize("balancer", [RoundRobin(), LeastRequests(random.Random(1))])
def test_half_open_slot_taken_only_by_returned_target(balancer: RoundRobin | LeastRequests) -> None:
    targets = make_targets(3, open_for=10.0)
    for t in targets:
        trip(t)
    later = NOW + 10
    # All three may half-open; only the returned one takes its (single) probe slot.
    first = balancer.pick(targets, later)
    assert first is not None
    assert first.breaker.state is CircuitState.HALF_OPEN
    others = [t for t in targets if t is not first]
    assert all(t.breaker.state is CircuitState.OPEN for t in others)
    assert not first.available(later)
    # The next picks go to the other two, one probe each, then nothing is left.
    second = balancer.pick(targets, later)
    third = balancer.pick(targets, later)
    assert {id(second), id(third)} == {id(t) for t in others}
    assert balancer.pick(targets, later) is None
    # A probe that succeeds closes its breaker and the target takes traffic again.
    first.breaker.record_success(later)
    assert balancer.pick(targets, later) is first


def test_half_open_excluded_target_keeps_slot() -> None:
    targets = make_targets(2, open_for=10.0)
    trip(targets[0])
    rr = RoundRobin()
    for _ in range(5):
        assert rr.pick(targets, NOW + 10, exclude=targets[0]) is targets[1]
    assert targets[0].breaker.state is CircuitState.OPEN


# --- LeastRequests --------------------------------------------------------------------------------


def test_least_requests_single_target() -> None:
    (target,) = make_targets(1)
    target.in_flight = 50
    assert LeastRequests().pick([target], NOW) is target


def test_least_requests_prefers_less_loaded() -> None:
    targets = make_targets(3)
    targets[0].in_flight, targets[1].in_flight, targets[2].in_flight = 10, 0, 10
    lr = LeastRequests(random.Random(7))
    picks = Counter(id(lr.pick(targets, NOW)) for _ in range(3000))
    # With P2C the least loaded wins whenever it is drawn: in 2 of the 3 possible pairs.
    assert picks[id(targets[1])] == pytest.approx(2000, rel=0.1)
    # Two targets: the less loaded always wins.
    assert {id(lr.pick(targets[:2], NOW)) for _ in range(50)} == {id(targets[1])}


def test_least_requests_spreads_ties_and_follows_load() -> None:
    targets = make_targets(3)
    lr = LeastRequests(random.Random(3))
    counts: Counter[int] = Counter()
    for _ in range(3000):
        picked = lr.pick(targets, NOW)
        assert picked is not None
        picked.in_flight += 1  # requests never finish: load must stay balanced
        counts[id(picked)] += 1
    assert max(t.in_flight for t in targets) - min(t.in_flight for t in targets) <= 3
    assert set(counts) == {id(t) for t in targets}


def test_least_requests_skips_down_and_exclude() -> None:
    targets = make_targets(3)
    targets[0].healthy = False
    trip(targets[1])
    lr = LeastRequests(random.Random(5))
    assert {id(lr.pick(targets, NOW)) for _ in range(20)} == {id(targets[2])}
    assert lr.pick(targets, NOW, exclude=targets[2]) is targets[2]  # last resort
    targets[2].healthy = False
    assert lr.pick(targets, NOW) is None
    assert lr.pick([], NOW) is None


def test_least_requests_exclude_with_alternatives() -> None:
    targets = make_targets(3)
    targets[1].in_flight = 100
    lr = LeastRequests(random.Random(9))
    for _ in range(50):
        picked = lr.pick(targets, NOW, exclude=targets[0])
        assert picked is not None and picked is not targets[0]


def test_make_balancer() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("least_requests"), LeastRequests)
    with pytest.raises(ValueError, match="round_robin"):
        make_balancer("random")
