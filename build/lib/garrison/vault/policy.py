"""Vault ACL policies: parsing (HCL or JSON, with pyhcl), path matching, and the capability decision.

A policy is a set of ``path "PATTERN" { capabilities = [...] }`` rules. Patterns match request paths
(``secret/data/orders/x``) exactly, with ``+`` standing for one path segment and a trailing ``*`` for
any suffix. Rules of all the token's policies are merged by pattern (capabilities add up; ``deny`` in
any of them wins for that pattern), then the request path is decided by the single most specific
matching pattern, by Vault's priority rules: the pattern whose first wildcard comes later wins; then
one without a trailing ``*``; then fewer ``+``; then the longer; then the lexically greater. Nothing
matching means no capability: default deny. The ``root`` policy grants everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import hcl

__all__ = [
    "CAPABILITIES",
    "DEFAULT_POLICY",
    "Acl",
    "Policy",
    "PolicyError",
    "parse_policy",
]

CAPABILITIES = frozenset(
    {"create", "read", "update", "patch", "delete", "list", "sudo", "deny", "subscribe", "recover"}
)
MAX_POLICY_BYTES = 64 * 1024

DEFAULT_POLICY = """# Every token gets this policy unless created with no_default_policy.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/lookup" {
  capabilities = ["update"]
}
"""


class PolicyError(ValueError):
    """A policy text that does not parse or names an unknown capability."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    capabilities: frozenset[str]


@dataclass(frozen=True)
class Policy:
    name: str
    text: str
    rules: tuple[Rule, ...]


def parse_policy(name: str, text: str) -> Policy:
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyError("the policy is too large")
    try:
        parsed: Any = hcl.loads(text)
    except Exception as exc:  # pyhcl raises ValueError and its own lexer/parser errors
        raise PolicyError(
            f"failed to parse policy: {str(exc).splitlines()[0] if str(exc) else 'syntax error'}"
        ) from None
    if not isinstance(parsed, dict):
        raise PolicyError("failed to parse policy: expected path blocks")
    unknown = set(parsed) - {"path", "name"}
    if unknown:
        raise PolicyError(f"failed to parse policy: unknown key(s) {', '.join(sorted(unknown))}")
    paths = parsed.get("path", {})
    if not isinstance(paths, dict):
        raise PolicyError("failed to parse policy: `path` blocks are keyed by their pattern")
    rules = []
    for pattern, body in paths.items():
        _check_pattern(pattern)
        capabilities = body.get("capabilities") if isinstance(body, dict) else None
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise PolicyError(f"path {pattern!r}: capabilities is a list of strings")
        bad = set(capabilities) - CAPABILITIES
        if bad:
            raise PolicyError(f"path {pattern!r}: invalid capabilities {', '.join(sorted(bad))}")
        rules.append(Rule(pattern.lstrip("/"), frozenset(capabilities)))
    return Policy(name, text, tuple(rules))


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise PolicyError("a path pattern is a non-empty string")
    if "*" in pattern[:-1]:
        raise PolicyError(f"path {pattern!r}: `*` may only end a pattern")
    for segment in pattern.rstrip("*").split("/"):
        if "+" in segment and segment != "+":
            raise PolicyError(f"path {pattern!r}: `+` stands for a whole path segment")


@dataclass(frozen=True)
class _Compiled:
    pattern: str
    regex: re.Pattern[str]
    capabilities: frozenset[str]
    priority: tuple[int, int, int, int, str]


def _compile(pattern: str, capabilities: frozenset[str]) -> _Compiled:
    glob = pattern.endswith("*")
    body = pattern[:-1] if glob else pattern
    parts = ["[^/]*" if segment == "+" else re.escape(segment) for segment in body.split("/")]
    regex = re.compile("/".join(parts) + (".*" if glob else ""), re.DOTALL)
    wildcards = [i for i, ch in enumerate(pattern) if ch in "+*"]
    first = wildcards[0] if wildcards else len(pattern) + 1
    priority = (first, 0 if glob else 1, -pattern.count("+"), len(pattern), pattern)
    if "deny" in capabilities:
        capabilities = frozenset({"deny"})
    return _Compiled(pattern, regex, capabilities, priority)


class Acl:
    """The merged rules of a token's policies; ``capabilities(path)`` is the decision."""

    def __init__(self, policies: list[Policy]) -> None:
        self.root = any(policy.name == "root" for policy in policies)
        merged: dict[str, set[str]] = {}
        for policy in policies:
            for rule in policy.rules:
                merged.setdefault(rule.pattern, set()).update(rule.capabilities)
        compiled = [_compile(pattern, frozenset(caps)) for pattern, caps in merged.items()]
        # Exact patterns first in a dict (the common case); wildcard ones by descending priority.
        self.exact = {
            c.pattern: c.capabilities
            for c in compiled
            if "+" not in c.pattern and not c.pattern.endswith("*")
        }
        self.wild = sorted(
            (c for c in compiled if c.pattern not in self.exact), key=lambda c: c.priority, reverse=True
        )

    def capabilities(self, path: str) -> frozenset[str]:
        if self.root:
            return CAPABILITIES - {"deny"}
        exact = self.exact.get(path)
        if exact is not None:
            return exact  # an exact pattern outranks every wildcard one (its first wildcard is at +inf)
        for rule in self.wild:
            if rule.regex.fullmatch(path):
                return rule.capabilities
        return frozenset()

    def has_any_under(self, prefix: str) -> bool:
        """Some pattern that grants a capability (not deny) on a path under ``prefix`` (mount lookups)."""
        if self.root:
            return True
        rules = [(p, c) for p, c in self.exact.items()] + [(r.pattern, r.capabilities) for r in self.wild]
        return any(
            (pattern.startswith(prefix) or prefix.startswith(pattern.rstrip("*"))) and "deny" not in caps
            for pattern, caps in rules
        )

    def allows(self, path: str, capability: str) -> bool:
        granted = self.capabilities(path)
        return "deny" not in granted and capability in granted
