"""The ``routes`` section: which requests the gateway takes, to which service, with which checks.

Route paths are checked with ``garrison.uri.normalize``, the normaliser the proxy matches requests
with, so a route is written in exactly the form requests are matched in (see ``garrison.uri`` for
why that grammar sits below the config rather than behind a registered hook).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from garrison.config.common import HOSTNAME_RE, Strict
from garrison.config.gateway import IpRulesConfig
from garrison.config.units import Duration
from garrison.uri.normalize import TargetRejected, normalize_path

__all__ = [
    "AuthConfig",
    "CorsConfig",
    "RateLimitConfig",
    "RouteCacheConfig",
    "RouteConfig",
    "RouteMatch",
]

_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")


def _check_path(value: str) -> str:
    try:
        normalized = normalize_path(value.encode("ascii")).decode("ascii")
    except (TargetRejected, UnicodeEncodeError) as exc:
        raise ValueError(f"not a valid route path: {value!r}") from exc
    if normalized != value:
        raise ValueError(f"route paths must be in normalized form: write {normalized!r}, not {value!r}")
    return value


class RouteMatch(Strict):
    """What a request must look like to take this route. Longest matching path wins."""

    path: Annotated[str, AfterValidator(_check_path)] = Field(
        description="Normalized path, case-sensitive, e.g. /api/orders."
    )
    prefix: bool = Field(
        False,
        description="Also match everything below `path` at a segment boundary "
        "(/api matches /api and /api/x, never /apix).",
    )
    methods: list[str] | None = Field(None, description="Allowed methods (any if unset); others get 405.")
    hosts: list[str] | None = Field(
        None, description="Host names this route serves (any if unset); `*.example.com` allowed."
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for method in value:
                if not _METHOD_RE.match(method):
                    raise ValueError(f"methods are upper-case tokens such as GET, got {method!r}")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for host in value:
                if not HOSTNAME_RE.match(host):
                    raise ValueError(f"hosts are lower-case DNS names, got {host!r}")
        return value


class AuthConfig(Strict):
    """How a route is authenticated and authorized. Every route must say it."""

    require: Literal["jwt", "api_key", "mtls", "none"] = Field(
        description="`jwt`: a valid access token (gateway.jwt); `api_key`: a Garrison API key in "
        "`Authorization: ApiKey ...` or `X-API-Key`; `mtls`: a client certificate listed in "
        "gateway.mtls; `none`: anyone (`garrison check` warns)."
    )
    scopes: list[str] = Field(default_factory=list, description="Scopes the token must all have.")
    scopes_any: list[str] = Field(default_factory=list, description="Scopes of which it needs one.")
    roles: list[str] = Field(default_factory=list, description="Roles of which it needs one.")
    claims: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Claims that must equal (one of) these values."
    )
    allow_query_token: bool = Field(
        False, description="Accept `?access_token=` (RFC 6750 §2.3); leaks into logs, avoid."
    )

    @model_validator(mode="after")
    def _requirements_need_a_token(self) -> AuthConfig:
        if self.require == "none" and (self.scopes or self.scopes_any or self.roles or self.claims):
            raise ValueError("scopes, roles and claims need `require: jwt` (scopes also `api_key`)")
        if self.require in ("api_key", "mtls") and (self.roles or self.claims):
            raise ValueError(f"`{self.require}` carries scopes only: roles and claims need `require: jwt`")
        return self


class CorsConfig(Strict):
    """Cross-origin access from browsers. Preflights are answered by the gateway; real requests
    still pass the route's authentication."""

    allow_origins: list[str] = Field(
        min_length=1,
        description="Exact origins (`https://app.example.com`), or `*` (not with credentials).",
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST"], description="Methods a page may use."
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type"],
        description="Request headers a page may send.",
    )
    expose_headers: list[str] = Field(default_factory=list, description="Response headers a page may read.")
    allow_credentials: bool = Field(False, description="Let pages send cookies / credentials.")
    max_age: Duration = Field(600.0, description="How long a browser may cache a preflight answer.")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[a-z0-9.-]+(:\d{1,5})?", origin.lower()):
                raise ValueError(f"an origin is scheme://host[:port] or *, got {origin!r}")
        return value

    @field_validator("allow_methods")
    @classmethod
    def _cors_methods(cls, value: list[str]) -> list[str]:
        for method in value:
            if not _METHOD_RE.match(method):
                raise ValueError(f"methods are upper-case tokens such as GET, got {method!r}")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("`*` cannot be combined with allow_credentials (browsers refuse it)")
        return self


def _check_rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"not a rate: {value!r} (use e.g. 100/second, 10/minute, 1000/hour)") from None
    return value


class RateLimitConfig(Strict):
    """A rate limit on a route (429 with Retry-After and RateLimit-* headers)."""

    rate: Annotated[str, AfterValidator(_check_rate)] = Field(description="e.g. 100/second, 10/minute.")
    key: Literal["client", "api_key", "ip", "route"] = Field(
        "ip",
        description="What is counted: the client address (`ip`) or the whole route (`route`), both "
        "before authentication; or, after it, the authenticated client (`client`: the token's "
        "client_id, else its subject; the API key; the certificate's id) or the API key (`api_key`).",
    )
    strategy: Literal["fixed_window", "moving_window", "sliding_window_counter"] = Field(
        "sliding_window_counter", description="Counting algorithm (the `limits` library's)."
    )
    storage: Literal["memory", "redis"] = Field(
        "memory", description="`memory`: per worker; `redis`: shared by all workers and replicas."
    )
    on_redis_error: Literal["open", "closed"] = Field(
        "closed",
        description="When Redis is unreachable: `open` lets requests through (logged and counted), "
        "`closed` answers 503.",
    )


class RouteCacheConfig(Strict):
    """Cache GET/HEAD responses of this route in the gateway. Keyed by host, path, query, the headers
    the response's Vary names, and the authenticated subject: one caller never gets another's answer.
    `Cache-Control: no-store`, `private`, `no-cache` and `Set-Cookie` responses are never stored."""

    ttl: Duration = Field(
        gt=0, description="How long a response is served from the cache (an upstream max-age can shorten it)."
    )


class RouteConfig(Strict):
    """A route: a match, the service it goes to, and (in later sections) its security chain."""

    name: str | None = Field(None, description="Name in logs and metrics (default: the path).")
    match: RouteMatch = Field(description="Which requests take this route.")
    service: str = Field(description="Name of the service in `services`.")
    ip_rules: IpRulesConfig | None = Field(
        None, description="IP allow/deny lists for this route only, on top of the global ones (403)."
    )
    auth: AuthConfig = Field(description="Authentication and authorization; required on every route.")
    rate_limit: list[RateLimitConfig] | None = Field(
        None,
        description="Rate limits for this route (429): one mapping, or a list of them, all of which "
        "apply. `ip`/`route` limits count before the credentials are checked (a flood of bad tokens "
        "costs no signature checks); `client`/`api_key` limits count after.",
    )

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    cors: CorsConfig | None = Field(None, description="CORS for browsers (unset: no CORS headers).")
    cache: RouteCacheConfig | None = Field(None, description="Response caching (unset: none).")
