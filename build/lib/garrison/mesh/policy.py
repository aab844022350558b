"""Default-deny authorization between services: may this caller make this call to this service?

The one file decides: ``services.<caller>.calls`` lists what each service may call (service, methods,
paths), and every route of the gateway lets the gateway's own identity (``spiffe://<td>/gateway``) call
its service with the route's methods and path. Nothing else is allowed. Callers are SPIFFE IDs, read
from the peer's verified certificate, never from a header.

Compiled once per config load into per-callee tables; a decision is a dictionary lookup and a short
scan of that caller's rules. Paths are compared after the proxy's normalization (``garrison.uri``),
so ``/charges/../admin`` and ``/%63harges`` are decided as what the callee will see; a path that does
not normalize is refused before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # from_config reads the model; a sidecar compiles grants it was handed instead
    from garrison.config.assembly import GarrisonConfig

__all__ = ["CallPolicy", "CallRule", "Grant", "gateway_id", "grants_of", "service_id"]


def service_id(trust_domain: str, service: str) -> str:
    return f"spiffe://{trust_domain}/svc/{service}"


def gateway_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/gateway"


@dataclass(frozen=True, slots=True)
class CallRule:
    """Methods (None: any) on paths (None: any): exact paths, and subtrees kept as prefixes ending in
    ``/`` so that ``/charges/`` never matches ``/chargesX``."""

    methods: frozenset[str] | None
    exact: frozenset[str] | None
    subtrees: tuple[str, ...]

    def allows(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.exact is None:
            return True
        return path in self.exact or any(path.startswith(tree) for tree in self.subtrees)


@dataclass(frozen=True, slots=True)
class Grant:
    """One allowance as the file states it: ``caller`` (a SPIFFE ID) may call ``callee`` with
    ``methods`` (None: any) on ``paths`` (None: any; ``/x/**`` a subtree)."""

    callee: str
    caller: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None


def grants_of(config: GarrisonConfig) -> list[Grant]:
    """Every allowance of the file: each ``services.<caller>.calls`` entry, and each route's for the
    gateway's identity."""
    domain = config.trust_domain

    def tupled(values: Sequence[str] | None) -> tuple[str, ...] | None:
        return tuple(values) if values is not None else None

    found = [
        Grant(call.service, service_id(domain, caller), tupled(call.methods), tupled(call.paths))
        for caller, service in config.services.items()
        for call in service.calls
    ]
    for route in config.routes:
        path = route.match.path
        paths = (path + "/**" if path != "/" else "/**",) if route.match.prefix else (path,)
        found.append(Grant(route.service, gateway_id(domain), tupled(route.match.methods), paths))
    return found


def _rule(methods: Sequence[str] | None, paths: Sequence[str] | None) -> CallRule:
    if paths is None:
        return CallRule(frozenset(methods) if methods else None, None, ())
    exact = {path for path in paths if not path.endswith("/**")}
    bases = [path[:-3] for path in paths if path.endswith("/**")]
    exact |= {base or "/" for base in bases}  # /x/** matches /x itself too
    subtrees = tuple(base + "/" for base in bases)
    return CallRule(frozenset(methods) if methods else None, frozenset(exact), subtrees)


class CallPolicy:
    """callee service -> caller SPIFFE ID -> rules; anything absent is denied."""

    __slots__ = ("_by_callee",)

    def __init__(self, by_callee: dict[str, dict[str, tuple[CallRule, ...]]]) -> None:
        self._by_callee = by_callee

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> CallPolicy:
        return cls.from_grants(grants_of(config))

    @classmethod
    def from_grants(cls, grants: Iterable[Grant]) -> CallPolicy:
        table: dict[str, dict[str, list[CallRule]]] = {}
        for grant in grants:
            rule = _rule(grant.methods, grant.paths)
            table.setdefault(grant.callee, {}).setdefault(grant.caller, []).append(rule)
        return cls(
            {
                callee: {caller: tuple(rules) for caller, rules in callers.items()}
                for callee, callers in table.items()
            }
        )

    def allows(self, caller: str | None, callee: str, method: str, path: str) -> bool:
        """``path`` is the normalized path (no query). A missing caller (no certificate) is denied."""
        if caller is None:
            return False
        rules = self._by_callee.get(callee, {}).get(caller)
        return rules is not None and any(rule.allows(method, path) for rule in rules)

    def callers_of(self, callee: str) -> list[str]:
        """Who may call ``callee`` at all (for `garrison check` and the docs of a deployment)."""
        return sorted(self._by_callee.get(callee, {}))
