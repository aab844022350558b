"""The gateway's compiled configuration: what the hot path reads, built once per config load.

A reload builds a whole new ``Runtime`` and swaps one reference; requests already running keep the
runtime they started with, so a reload never changes a request half-way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from garrison.config.model import (
    AuthConfig,
    CorsConfig,
    GarrisonConfig,
    IpRulesConfig,
    JwtConfig,
    LimitsConfig,
    MtlsConfig,
    RateLimitConfig,
)
from garrison.gateway.auth.apikeys import ApiKeyCache
from garrison.gateway.auth.authz import Requirement
from garrison.gateway.authn import ApiKeyRouteAuth, ClientCertificates, JwtRouteAuth, MtlsRouteAuth, RouteAuth
from garrison.gateway.cache import ResponseCache
from garrison.gateway.cors import CorsPolicy
from garrison.gateway.iprules import IpRules
from garrison.gateway.mesh import sidecar_peers
from garrison.gateway.ratelimit import RateLimiter, RateLimitSpec
from garrison.gateway.redirect import HttpsRedirect
from garrison.gateway.router import RouteEntry, RouteTable
from garrison.gateway.stages import EdgeChain, compile_chain
from garrison.proxy.upstream.build import build_service
from garrison.proxy.upstream.service import UpstreamService
from garrison.telemetry.metrics import GatewayMetrics, RouteStats
from garrison.tokens.forwarded import TrustedProxies
from garrison.tokens.jwks import JwksCache
from garrison.tokens.jwt import JwtVerifier
from garrison.tokens.token_cache import RevocationCheck, TokenCache
from garrison.web.headers import hsts_value, render, security_headers


@dataclass(slots=True, eq=False)
class Route:
    name: str
    log_name: bytes  # JSON-encoded once, for the access log
    service: UpstreamService
    stats: RouteStats
    ip_rules: IpRules | None = None
    # Limits keyed by address or route count before authentication, so a flood of bad credentials
    # is cut before it costs signature checks; limits keyed by client or API key count after it.
    pre_auth_limits: tuple[RateLimiter, ...] = ()
    post_auth_limits: tuple[RateLimiter, ...] = ()
    auth: RouteAuth | None = None  # None: `require: none`
    cors: CorsPolicy | None = None
    cache_ttl: float | None = None  # seconds; None: responses of this route are not cached
    # The route's stages after routing, compiled from the fields above (gateway/stages.py).
    chain: EdgeChain = field(init=False)

    @property
    def rate_limiters(self) -> tuple[RateLimiter, ...]:
        return self.pre_auth_limits + self.post_auth_limits


@dataclass(eq=False)
class Runtime:
    config: GarrisonConfig
    routes: RouteTable[Route]
    services: dict[str, UpstreamService]
    trusted: TrustedProxies
    scheme: str
    security_headers: bytes  # on every response
    referrer_policy_line: bytes  # added unless the upstream set its own
    metrics: GatewayMetrics
    jwks: JwksCache | None = None
    jwt_routes: bool = False  # some route has `require: jwt`: serving them needs the key set
    # One per runtime: a reload starts empty, so a changed ttl or route never serves old entries.
    response_cache: ResponseCache | None = None
    # Copied out of the config so the hot path does one attribute lookup, not four.
    limits: LimitsConfig = field(init=False)
    preserve_host: bool = field(init=False)
    allow_underscores: bool = field(init=False)
    ip_rules: IpRules | None = field(init=False)  # global; None when both lists are empty
    unmatched: RouteStats = field(init=False)  # requests refused before a route was chosen
    redirect: HttpsRedirect = field(init=False)  # the plaintext listener's hosts
    memory_limiters: tuple[RateLimiter, ...] = field(init=False)  # swept by the server's sweeper

    def __post_init__(self) -> None:
        self.unmatched = self.metrics.route("(refused)", "(none)")
        self.limits = self.config.gateway.limits
        self.preserve_host = self.config.gateway.preserve_host
        self.allow_underscores = self.config.gateway.allow_underscores_in_headers
        self.ip_rules = _ip_rules(self.config.gateway.ip_rules)
        self.redirect = HttpsRedirect.from_config(self.config)
        routes = [
            route.payload
            for entries in (*self.routes.exact.values(), *self.routes.prefixes.values())
            for route in entries
        ]
        self.memory_limiters = tuple(
            limiter for route in routes for limiter in route.rate_limiters if limiter.spec.storage == "memory"
        )

    def not_ready_reasons(self) -> list[str]:
        """Why some routes of this configuration cannot be served yet (empty: all can)."""
        if self.jwt_routes and self.jwks is not None and not self.jwks.has_keys:
            return ["no JWT key set loaded yet"]
        return []

    def adopt_keys(self, previous: Runtime) -> None:
        """Start from the previous configuration's JWT keys (a reload while the issuer is down)."""
        if self.jwks is not None and previous.jwks is not None:
            self.jwks.adopt(previous.jwks)

    async def open(self) -> None:
        """Fetch what must be there before the first request (the JWKS); then start health checks."""
        if self.jwks is not None:
            await self.jwks.start()
        for service in self.services.values():
            if service.health is not None:
                service.health.start()

    async def close(self) -> None:
        for service in self.services.values():
            await service.close()
        if self.jwks is not None:
            await self.jwks.stop()
        for entry in [*self.routes.exact.values(), *self.routes.prefixes.values()]:
            for route in entry:
                for limiter in route.payload.rate_limiters:
                    await limiter.aclose()

    def sweep(self, now: float) -> None:
        for service in self.services.values():
            service.sweep(now)
        for limiter in self.memory_limiters:
            limiter.sweep()


def _cors(spec: CorsConfig | None) -> CorsPolicy | None:
    if spec is None:
        return None
    return CorsPolicy.compile(
        spec.allow_origins,
        spec.allow_methods,
        spec.allow_headers,
        spec.expose_headers,
        spec.allow_credentials,
        spec.max_age,
    )


def _ca_context(ca_file: str) -> ssl.SSLContext:
    """The context that verifies the JWKS endpoint; a missing CA file is an error that says what it is."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"gateway.jwt.ca: {ca_file} does not exist (the identity provider's `auto` certificate is "
            "made at its first start; with a mesh section it comes from the mesh CA: run `garrison ca "
            "init` or `garrison up`)"
        ) from None


def _jwt(
    spec: JwtConfig | None, revocations: RevocationCheck | None
) -> tuple[JwksCache | None, JwtVerifier | None]:
    if spec is None:
        return None, None
    verify: ssl.SSLContext | bool = _ca_context(spec.ca) if spec.ca else True
    if spec.jwks_url:
        jwks = JwksCache(
            jwks_uri=spec.jwks_url,
            refresh_interval=spec.refresh_interval,
            min_refetch_interval=spec.min_refetch_interval,
            verify=verify,
        )
    else:
        jwks = JwksCache(
            issuer=spec.issuer,
            refresh_interval=spec.refresh_interval,
            min_refetch_interval=spec.min_refetch_interval,
            verify=verify,
        )
    verifier = JwtVerifier(
        jwks,
        spec.issuer,
        spec.audiences,
        leeway=spec.leeway,
        require_typ=spec.require_typ,
        cache=TokenCache(revocations=revocations),  # the server's feed: it outlives reloads
    )
    return jwks, verifier


def _client_certificates(spec: MtlsConfig | None) -> ClientCertificates | None:
    if spec is None:
        return None
    entries = []
    for client in spec.clients:
        kind, name = next(
            (kind, value)
            for kind, value in (
                ("uri", client.uri),
                ("dns", client.dns),
                ("email", client.email),
                ("common_name", client.common_name),
            )
            if value is not None
        )
        entries.append((client.id, kind, name, client.scopes))
    return ClientCertificates(entries)


def _route_auth(
    spec: AuthConfig,
    verifier: JwtVerifier | None,
    api_keys: ApiKeyCache | None,
    certificates: ClientCertificates | None,
) -> RouteAuth | None:
    if spec.require == "none":
        return None
    requirement = Requirement(spec.scopes, spec.scopes_any, spec.roles, spec.claims)
    if spec.require == "mtls":
        if certificates is None:
            raise ValueError("a route requires mtls but gateway.mtls is not configured")
        return MtlsRouteAuth(certificates, requirement)
    if spec.require == "api_key":
        if api_keys is None:
            raise ValueError("a route requires api_key but no API-key store is open")
        return ApiKeyRouteAuth(api_keys, requirement)
    # The loader refuses `require: jwt` without gateway.jwt; fail closed if that ever changes.
    if verifier is None:
        raise ValueError("a route requires jwt but gateway.jwt is not configured")
    return JwtRouteAuth(verifier, requirement, spec.allow_query_token)


def _rate_limiters(
    name: str, specs: list[RateLimitConfig] | None, redis_url: str | None, metrics: GatewayMetrics
) -> tuple[tuple[RateLimiter, ...], tuple[RateLimiter, ...]]:
    """The route's limits split into (before authentication, after authentication)."""
    limiters = [
        _rate_limiter(name, number, spec, redis_url, metrics) for number, spec in enumerate(specs or [])
    ]
    before = tuple(limiter for limiter in limiters if limiter.spec.key in ("ip", "route"))
    after = tuple(limiter for limiter in limiters if limiter.spec.key not in ("ip", "route"))
    return before, after


def _rate_limiter(
    name: str, number: int, spec: RateLimitConfig, redis_url: str | None, metrics: GatewayMetrics
) -> RateLimiter:
    limiter_spec = RateLimitSpec(
        rate=spec.rate,
        strategy=spec.strategy,
        key=spec.key,
        storage=spec.storage,
        redis_url=redis_url if spec.storage == "redis" else None,
        on_redis_error=spec.on_redis_error,
    )
    # Counter keys are named by a digest of the route name: stable across reloads and restarts
    # (Redis counters carry on), and free of the ':' the key format reserves.
    # The first limit keeps the key it had when a route could have only one.
    key_name = hashlib.sha256(name.encode()).hexdigest()[:16] + (f"-{number}" if number else "")
    return RateLimiter(limiter_spec, lambda outcome: metrics.rate_limited(name, outcome), route=key_name)


def _response_cache(config: GarrisonConfig, loop: asyncio.AbstractEventLoop) -> ResponseCache | None:
    if not any(route.cache is not None for route in config.routes):
        return None
    spec = config.gateway.cache
    return ResponseCache(spec.max_size, spec.max_entry_size, clock=loop.time)


def _ip_rules(spec: IpRulesConfig | None) -> IpRules | None:
    if spec is None or not (spec.allow or spec.deny):
        return None  # nothing to check: the hot path skips the call entirely
    return IpRules(spec.allow, spec.deny)


def _security_headers(config: GarrisonConfig) -> bytes:
    """The common block (web/headers.py); Referrer-Policy travels apart (an upstream's own wins) and
    framing is the upstream's decision."""
    gateway = config.gateway
    hsts = None
    if not gateway.tls.insecure_disable and gateway.hsts.enabled:
        hsts = hsts_value(gateway.hsts.max_age, gateway.hsts.include_subdomains, gateway.hsts.preload)
    return render(security_headers(hsts=hsts, referrer_policy=None, frame_deny=False))


def build_runtime(
    config: GarrisonConfig,
    loop: asyncio.AbstractEventLoop,
    metrics: GatewayMetrics,
    api_keys: ApiKeyCache | None = None,
    *,
    revocations: RevocationCheck | None = None,
    mesh_tls: Callable[[], ssl.SSLContext] | None = None,
) -> Runtime:
    """Compile a validated config. Raises ValueError for what validation could not see.
    ``mesh_tls``: the gateway identity's current client context (gateway/mesh.py), needed when a
    routed service has a sidecar."""
    upstream_tls = ssl.create_default_context()
    services = {
        name: build_service(name, spec, loop, upstream_tls, component="gateway")
        for name, spec in config.services.items()
    }
    for name, (address, spiffe_id) in sidecar_peers(config).items():
        if mesh_tls is None:
            raise ValueError(f"{name} is reached through its sidecar: restart the gateway to join the mesh")
        # The sidecar checks the app's health; its mTLS port answers only the policy's calls.
        services[name] = build_service(
            name,
            config.services[name],
            loop,
            upstream_tls,
            component="gateway",
            targets=[f"https://{address}"],
            health_checks=False,
            tls_source=mesh_tls,
            expected_peer=spiffe_id,
        )
    jwks, verifier = _jwt(config.gateway.jwt, revocations)
    certificates = _client_certificates(config.gateway.mtls)
    entries: list[RouteEntry[Route]] = []
    for route_config in config.routes:
        name = route_config.name or route_config.match.path
        service = services[route_config.service]
        before, after = _rate_limiters(name, route_config.rate_limit, config.redis.url, metrics)
        route = Route(
            name,
            json.dumps(name).encode(),
            service,
            metrics.route(name, service.name),
            _ip_rules(route_config.ip_rules),
            before,
            after,
            _route_auth(route_config.auth, verifier, api_keys, certificates),
            _cors(route_config.cors),
            route_config.cache.ttl if route_config.cache is not None else None,
        )
        route.chain = compile_chain(route)
        match = route_config.match
        entries.append(
            RouteEntry(
                path=match.path.encode(),
                prefix=match.prefix,
                methods=frozenset(m.encode() for m in match.methods) if match.methods else None,
                hosts=tuple(h.encode() for h in match.hosts) if match.hosts else None,
                payload=route,
            )
        )
    runtime = Runtime(
        config=config,
        routes=RouteTable.compile(entries),
        services=services,
        trusted=TrustedProxies(config.gateway.trusted_proxies),
        scheme="http" if config.gateway.tls.insecure_disable else "https",
        security_headers=_security_headers(config),
        referrer_policy_line=f"referrer-policy: {config.gateway.referrer_policy}\r\n".encode(),
        metrics=metrics,
        jwks=jwks,
        jwt_routes=any(route.auth.require == "jwt" for route in config.routes),
        response_cache=_response_cache(config, loop),
    )
    cache = runtime.response_cache
    metrics.cache_bytes = (lambda: cache.size_bytes) if cache is not None else (lambda: 0)
    metrics.circuit_states = lambda: (
        (service.name, target.url, target.breaker.state.value)
        for service in runtime.services.values()
        for target in service.targets
    )
    return runtime
