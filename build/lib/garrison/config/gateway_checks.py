"""The gateway's checks across sections of garrison.yaml, run by the loader after validation.

A route names a service and an authentication source that live in other sections, and its rate limits
count what its authentication produces: pydantic validates one section at a time, so these checks
run on the whole file. Each returns ``(location, message)`` pairs; the loader adds line numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from garrison.config.common import is_loopback_host, parse_listen

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

Finding = tuple[tuple[Any, ...], str]


def gateway_problems(config: GarrisonConfig) -> list[Finding]:
    """Errors: the file cannot be served as written."""
    errors = route_table_problems(config)
    for index in range(len(config.routes)):
        errors += route_auth_problems(config, index)
    if config.gateway.mtls is not None and config.gateway.tls.insecure_disable:
        errors.append((("gateway", "mtls"), "client certificates need TLS (tls.insecure_disable is on)"))
    if not config.redis.url:
        errors += [(loc, "storage `redis` needs `redis.url`") for loc in redis_users(config)]
    errors += admin_listener_problems(config)
    return errors


def route_table_problems(config: GarrisonConfig) -> list[Finding]:
    """Each route names a known service, no two routes match alike, and names are unique."""
    errors: list[Finding] = []
    seen_names: dict[str, int] = {}
    seen_matches: dict[tuple[Any, ...], int] = {}
    for index, route in enumerate(config.routes):
        if route.service not in config.services:
            known = ", ".join(sorted(config.services)) or "none defined"
            errors.append((("routes", index, "service"), f"no service {route.service!r} (known: {known})"))
        match = route.match
        key = (match.path, match.prefix, tuple(sorted(match.methods or [])), tuple(sorted(match.hosts or [])))
        if key in seen_matches:
            errors.append(
                (
                    ("routes", index, "match"),
                    f"same match as routes[{seen_matches[key]}]; one would never run",
                )
            )
            continue
        seen_matches[key] = index
        if route.name is not None:
            if route.name in seen_names:
                errors.append((("routes", index, "name"), f"duplicate route name {route.name!r}"))
            seen_names.setdefault(route.name, index)
    return errors


def redis_users(config: GarrisonConfig) -> list[tuple[Any, ...]]:
    """Where the gateway's sections ask for Redis storage."""
    users: list[tuple[Any, ...]] = []
    if config.gateway.blocklist.storage == "redis":
        users.append(("gateway", "blocklist", "storage"))
    for index, route in enumerate(config.routes):
        for number, limit in enumerate(route.rate_limit or []):
            if limit.storage == "redis":
                users.append(("routes", index, "rate_limit", number, "storage"))
    return users


def admin_listener_problems(config: GarrisonConfig) -> list[Finding]:
    """An admin listener off loopback must not take its credential in clear (admin/auth.py)."""
    admin = config.gateway.admin
    host = parse_listen(admin.listen)[0]
    if is_loopback_host(host) or admin.tls is not None:
        return []
    return [
        (
            ("gateway", "admin", "listen"),
            "the admin listener is not on loopback: add gateway.admin.tls (cert, key, and optionally "
            "client_ca) so the admin credential never crosses the network in clear, or listen on "
            "127.0.0.1",
        )
    ]


def route_auth_problems(config: GarrisonConfig, index: int) -> list[Finding]:
    """What a route's auth block needs from the gateway section, and what its limits can count."""
    route = config.routes[index]
    require = route.auth.require
    errors: list[Finding] = []
    for kind, section in (("jwt", config.gateway.jwt), ("mtls", config.gateway.mtls)):
        if require == kind and section is None:
            errors.append(
                (("routes", index, "auth", "require"), f"`require: {kind}` needs a `gateway.{kind}` section")
            )
    for number, limit in enumerate(route.rate_limit or []):
        loc = ("routes", index, "rate_limit", number, "key")
        if limit.key == "client" and require == "none":
            errors.append((loc, "`key: client` counts authenticated clients; this route has `require: none`"))
        if limit.key == "api_key" and require != "api_key":
            errors.append((loc, "`key: api_key` needs `auth: {require: api_key}`"))
    return errors


def gateway_warnings(config: GarrisonConfig) -> list[Finding]:
    """Risks the file may mean: served as written, said out loud at every start."""
    warnings: list[Finding] = []
    if config.gateway.tls.insecure_disable:
        warnings.append(
            (
                ("gateway", "tls", "insecure_disable"),
                "TLS is OFF: the gateway serves plaintext HTTP (insecure)",
            )
        )
    for index, route in enumerate(config.routes):
        if route.auth.require == "none":
            warnings.append(
                (("routes", index, "auth", "require"), "this route is open to anyone (require: none)")
            )
    if not config.routes:
        warnings.append((("routes",), "no routes: the gateway will answer 404 to everything"))
    return warnings
