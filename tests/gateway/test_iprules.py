"""IP allow/deny rules: deny wins, allow restricts, IPv6 and IPv4-mapped addresses, the cache."""

from __future__ import annotations

import pytest

from garrison.gateway.iprules import IpRules, canonical_ip


def test_empty_rules_permit_every_address() -> None:
    rules = IpRules([], [])
    assert rules.permits("203.0.113.9") and rules.permits("2001:db8::1")


def test_deny_wins_over_allow() -> None:
    rules = IpRules(allow=["10.0.0.0/8"], deny=["10.1.0.0/16", "10.2.3.4"])
    assert rules.permits("10.0.0.1")
    assert not rules.permits("10.1.200.7")
    assert not rules.permits("10.2.3.4")
    assert rules.permits("10.2.3.5")
    assert not rules.permits("192.168.0.1")  # allow list given: others are refused


def test_deny_only_refuses_just_the_listed() -> None:
    rules = IpRules(deny=["198.51.100.0/24", "2001:db8:bad::/48"])
    assert not rules.permits("198.51.100.200")
    assert rules.permits("198.51.101.1")
    assert not rules.permits("2001:db8:bad:1::5")
    assert rules.permits("2001:db8:bee::5")


def test_ipv6_allow_and_spellings() -> None:
    rules = IpRules(allow=["2001:db8::/32", "::1/128"])
    assert rules.permits("2001:db8:0:0:0:0:0:1")
    assert rules.permits("2001:DB8::ffff")
    assert rules.permits("::1")
    assert not rules.permits("2001:db9::1")
    assert not rules.permits("10.0.0.1")  # an IPv4 client is outside an IPv6-only allow list
    assert rules.permits("fe80::1%eth0") is False
    assert IpRules(allow=["fe80::/10"]).permits("fe80::1%eth0")


def test_ipv4_mapped_addresses_match_ipv4_rules() -> None:
    rules = IpRules(allow=["10.0.0.0/8"], deny=["10.9.9.9/32"])
    assert rules.permits("::ffff:10.0.0.1")
    assert not rules.permits("::ffff:10.9.9.9")
    assert not rules.permits("::ffff:a09:909")  # the same address, hex spelling
    assert not rules.permits("::ffff:192.168.0.1")


def test_mapped_networks_in_lists_are_read_as_ipv4() -> None:
    rules = IpRules(deny=["::ffff:192.0.2.0/120"])
    assert not rules.permits("192.0.2.77")
    assert not rules.permits("::ffff:192.0.2.77")
    assert rules.permits("192.0.3.1")


def test_garbage_is_refused() -> None:
    rules = IpRules()
    for text in ["", "localhost", "1.2.3", "1.2.3.4.5", "::g", "10.0.0.1/8", " 10.0.0.1"]:
        assert not rules.permits(text), text


def test_bad_cidr_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="deny"):
        IpRules(deny=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="allow"):
        IpRules(allow=["example.com"])


def test_long_lists_and_the_bounded_cache() -> None:
    deny = [f"172.16.{i}.0/24" for i in range(0, 256, 2)] + ["2001:db8::/120"]
    rules = IpRules(allow=[], deny=deny, cache_size=8)
    for i in range(256):
        assert rules.permits(f"172.16.{i}.1") is (i % 2 == 1)
    assert len(rules._cache) == 8
    assert not rules.permits("172.16.0.1")  # evicted and evaluated again: same verdict
    assert rules.permits("172.16.1.1")


def test_canonical_ip() -> None:
    assert canonical_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert canonical_ip("2001:DB8:0::1") == "2001:db8::1"
    assert canonical_ip("fe80::1%eth0") == "fe80::1"
    assert canonical_ip("nope") is None
