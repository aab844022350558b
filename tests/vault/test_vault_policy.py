"""ACL policies: parsing, Vault's glob and segment wildcards, priority between patterns, default deny."""

from __future__ import annotations

import pytest

from garrison.vault.kv import merge_patch
from garrison.vault.policy import DEFAULT_POLICY, Acl, Policy, PolicyError, parse_policy

ORDERS = """
path "secret/data/orders/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/orders/*" {
  capabilities = ["list"]
}
"""


def acl(*texts: str) -> Acl:
    return Acl([parse_policy(f"p{i}", text) for i, text in enumerate(texts)])


def test_default_deny_and_a_glob() -> None:
    orders = acl(ORDERS)
    assert orders.allows("secret/data/orders/db", "read")
    assert orders.allows("secret/data/orders/a/b", "update")
    assert not orders.allows("secret/data/orders/db", "delete")
    assert not orders.allows("secret/data/payments/db", "read")
    assert not orders.allows("secret/data/orders", "read")  # the glob needs the slash
    assert orders.capabilities("sys/seal") == frozenset()


def test_plus_is_one_segment() -> None:
    policy = acl('path "secret/+/teams/+/config" { capabilities = ["read"] }')
    assert policy.allows("secret/data/teams/blue/config", "read")
    assert not policy.allows("secret/data/teams/blue/green/config", "read")
    assert not policy.allows("secret/data/teams/blue/config/x", "read")


def test_the_most_specific_pattern_decides() -> None:
    policy = acl(
        'path "secret/*" { capabilities = ["read", "list"] }\n'
        'path "secret/data/payments/*" { capabilities = ["deny"] }\n'
        'path "secret/data/payments/public" { capabilities = ["read"] }\n'
    )
    assert policy.allows("secret/data/orders/x", "read")
    assert not policy.allows("secret/data/payments/card", "read")  # a later wildcard wins over secret/*
    assert policy.allows("secret/data/payments/public", "read")  # exact beats any wildcard


def test_priority_rules_in_order() -> None:
    # first wildcard later wins
    assert acl(
        'path "a/+/c" { capabilities = ["read"] }', 'path "a/b/*" { capabilities = ["list"] }'
    ).capabilities("a/b/c") == frozenset({"list"})
    # a trailing * loses to no trailing *
    assert acl(
        'path "a/+" { capabilities = ["read"] }', 'path "a/*" { capabilities = ["list"] }'
    ).capabilities("a/b") == frozenset({"read"})
    # fewer + wins
    assert acl(
        'path "a/+/+" { capabilities = ["read"] }', 'path "a/+/c" { capabilities = ["list"] }'
    ).capabilities("a/b/c") == frozenset({"list"})


def test_policies_merge_and_deny_wins_on_the_same_pattern() -> None:
    merged = acl('path "x/*" { capabilities = ["read"] }', 'path "x/*" { capabilities = ["list"] }')
    assert merged.capabilities("x/y") == frozenset({"read", "list"})
    denied = acl('path "x/*" { capabilities = ["read"] }', 'path "x/*" { capabilities = ["deny"] }')
    assert not denied.allows("x/y", "read")


def test_root_grants_everything_and_default_grants_self_service() -> None:
    assert Acl([Policy("root", "", ())]).allows("sys/seal", "sudo")
    default = acl(DEFAULT_POLICY)
    assert default.allows("auth/token/lookup-self", "read")
    assert default.allows("auth/token/renew-self", "update")
    assert not default.allows("auth/token/create", "update")


def test_json_policies_parse_too() -> None:
    assert acl('{"path": {"k/*": {"capabilities": ["read"]}}}').allows("k/v", "read")


@pytest.mark.parametrize(
    "text",
    [
        'path "a" { capabilities = ["fly"] }',
        'path "a/*/b" { capabilities = ["read"] }',
        'path "a/b+" { capabilities = ["read"] }',
        'path "a" { capabilities = "read" }',
        "path {",
        'backend "x" {}',
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy("bad", text)


def test_json_merge_patch_follows_rfc_7396() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"a": None, "b": {"c": 9}, "e": [1]}) == {
        "b": {"c": 9, "d": 3},
        "e": [1],
    }
    assert merge_patch({"a": 1}, "x") == "x"


def test_mount_visibility_needs_some_grant_under_the_mount() -> None:
    assert acl(ORDERS).has_any_under("secret/")
    assert acl('path "secret/*" { capabilities = ["read"] }').has_any_under("secret/")
    assert not acl('path "secret/*" { capabilities = ["deny"] }').has_any_under("secret/")
    assert not acl('path "sys/policy" { capabilities = ["read"] }').has_any_under("secret/")
    assert Acl([Policy("root", "", ())]).has_any_under("secret/")
