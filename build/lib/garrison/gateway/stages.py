"""The gateway's request path: the order of its stages, and the chain each route compiles at load.

The path, in order (docs/gateway.md, "Request path"):

1. admission: framing, limits, target, Host, and the blocklist and global ``ip_rules``, while the
   head is turned into an exchange (gateway/head.py). First, because a refused client costs nothing
   further, not even a route lookup; the address is the one resolved through ``trusted_proxies``,
   so a forged X-Forwarded-For changes nothing.
2. route: the route table, then the route's own ``ip_rules``, and the CORS decision on the route's
   policy (gateway/head.py). The route decides everything after it; CORS is decided here so that
   every answer, refusals included, carries the CORS headers a page needs to read it.
3. ``CorsPreflightStage``: the gateway's own 204 to an allowed preflight, before any limit or
   credential: a browser sends no credentials on a preflight, so authenticating it would refuse it.
4. ``RateLimitStage`` per limit keyed by address or route: before authentication, so a flood of
   bad credentials is cut before it costs signature checks or key look-ups.
5. ``CredentialAuthStage`` (JWT or API key) or ``MtlsAuthStage``, chosen at load: the route's
   credential check (gateway/policy_stages.py).
6. ``RateLimitStage`` per limit keyed by client: after authentication, which names the client.
7. ``CacheStage``: after authentication, because the subject is part of the key, so a caller only
   ever sees its own entries; a hit answers without the upstream.
8. ``UpstreamStage``: 100-continue, the retry budget, target choice and dispatch (gateway/forward.py).

Stages 1 and 2 run while the exchange is built (they decide what it is); 3 to 8 are the route's
``Chain`` (garrison.proxy.stages), holding only the stages the route needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from garrison.gateway.authn import MtlsRouteAuth
from garrison.gateway.forward import UpstreamStage
from garrison.gateway.policy_stages import CacheStage, CredentialAuthStage, MtlsAuthStage, RateLimitStage
from garrison.proxy.stages import CONTINUE, DONE, Chain, ChainHost, Stage, Verdict

if TYPE_CHECKING:
    from garrison.gateway.exchange import Exchange
    from garrison.gateway.runtime import Route

__all__ = ["CorsPreflightStage", "EdgeChain", "compile_chain"]

EdgeChain = Chain["Exchange", Any]


class CorsPreflightStage:
    """Answer an allowed CORS preflight (decided at routing) with the gateway's own 204."""

    name = "cors-preflight"

    def check(self, exchange: Exchange, host: PreflightHost) -> Verdict:
        head = exchange.preflight
        if head is None:
            return CONTINUE  # a CORS route's ordinary request: its headers were set at routing
        host.answer_preflight(exchange, head)
        return DONE


class PreflightHost(ChainHost["Exchange"], Protocol):
    def answer_preflight(self, exchange: Exchange, head: bytes) -> None: ...


def compile_chain(route: Route) -> EdgeChain:
    """The route's stages 3 to 8 (see the module docstring), only those it needs, in order."""
    stages: list[Stage[Exchange, Any]] = []
    if route.cors is not None:
        stages.append(CorsPreflightStage())
    limits = (*route.pre_auth_limits, *route.post_auth_limits)
    last_limit = limits[-1] if limits else None
    # The RateLimit-* headers go out once the route's last limit has counted.
    stages.extend(RateLimitStage(limiter, last=limiter is last_limit) for limiter in route.pre_auth_limits)
    if route.auth is not None:
        # Refused credentials still carry the address limits' headers when client limits follow
        # (they would have gone out after those).
        held = bool(route.post_auth_limits)
        auth = route.auth
        # Which check runs is decided here, once, not per request.
        stages.append(
            MtlsAuthStage(auth, held_rate_headers=held)
            if isinstance(auth, MtlsRouteAuth)
            else CredentialAuthStage(auth, held_rate_headers=held)
        )
    stages.extend(RateLimitStage(limiter, last=limiter is last_limit) for limiter in route.post_auth_limits)
    if route.cache_ttl is not None:
        stages.append(CacheStage(route.cache_ttl))
    stages.append(UpstreamStage())
    return Chain(stages)
