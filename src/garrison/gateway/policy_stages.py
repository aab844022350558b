"""The policy stages of a route's chain: rate limits, authentication and the response cache.

Their order and why is in gateway/stages.py. Each stage is built once per route at config load and
shared by every request on it; per-request state lives on the exchange, never on the stage. Each is
synchronous unless it must wait: a Redis-backed limit, or a token signed by a key not fetched yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from garrison.gateway.authn import (
    ApiKeyRouteAuth,
    CertificateClient,
    ClientCertificates,
    Identity,
    JwtRouteAuth,
    MtlsRouteAuth,
    NeedsRefetch,
    challenge,
)
from garrison.gateway.cache import X_CACHE_MISS, CachedResponse
from garrison.gateway.cache_policy import CacheRequest
from garrison.gateway.exchange import STATUS_LINES
from garrison.gateway.ratelimit import RateDecision, RateLimiter, rate_limit_lines
from garrison.proxy.stages import CONTINUE, DONE, ChainHost, SlowPath, Verdict
from garrison.proxy.state import ResponsePhase
from garrison.tokens.jwt import AuthError

if TYPE_CHECKING:
    from garrison.gateway.audit import GatewayAudit
    from garrison.gateway.exchange import Exchange
    from garrison.gateway.runtime import Runtime


class PolicyHost(ChainHost["Exchange"], Protocol):
    """What the policy stages need from the client connection."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def audit(self) -> GatewayAudit: ...

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None: ...
    def certificate_client(self, clients: ClientCertificates) -> CertificateClient: ...
    def write(self, data: bytes) -> None: ...
    def finish(self, exchange: Exchange) -> None: ...
    def now(self) -> float: ...


def add_rate_headers(exchange: Exchange) -> None:
    decision = exchange.rate_decision
    if decision is not None:
        exchange.extra_response_headers += rate_limit_lines(decision)


class RateLimitStage:
    """One of the route's limits: counted in memory in the callback, or in Redis as a slow path."""

    name = "rate-limit"

    def __init__(self, limiter: RateLimiter, *, last: bool) -> None:
        self.limiter = limiter
        self.key = limiter.spec.key
        self.in_memory = limiter.spec.storage == "memory"
        self.last = last  # the route's last limit: once it passes, the RateLimit-* headers go out

    def check(self, exchange: Exchange, host: PolicyHost) -> Verdict | SlowPath:
        key = self.key
        identity = exchange.client_ip if key == "ip" else ("" if key == "route" else exchange.client)
        if not self.in_memory:
            return self._shared(exchange, host, identity)
        return self._counted(exchange, host, self.limiter.hit_sync(identity))

    async def _shared(self, exchange: Exchange, host: PolicyHost, identity: str) -> Verdict:
        decision = await self.limiter.hit(identity)  # never raises: a Redis failure is in the decision
        if not host.serving(exchange):
            return DONE
        return self._counted(exchange, host, decision)

    def _counted(self, exchange: Exchange, host: PolicyHost, decision: RateDecision) -> Verdict:
        """Keep the tightest decision for the RateLimit-* headers; refuse when a limit is exceeded."""
        tightest = exchange.rate_decision
        if not decision.failed_open and (tightest is None or decision.remaining < tightest.remaining):
            exchange.rate_decision = decision
        if decision.allowed:
            if self.last:
                add_rate_headers(exchange)
            return CONTINUE
        exchange.rate_decision = decision
        add_rate_headers(exchange)
        if decision.storage_error:
            host.fail(exchange, 503, "rate_limiter_unavailable")
        else:
            host.fail(exchange, 429, "too_many_requests")
        return DONE


class AuthStage:
    """The route's credential check: ``CredentialAuthStage`` or ``MtlsAuthStage``, chosen at load."""

    name = "auth"

    def __init__(self, *, held_rate_headers: bool) -> None:
        self.held_rate_headers = held_rate_headers

    def _refuse(self, exchange: Exchange, host: PolicyHost, refusal: AuthError) -> None:
        if self.held_rate_headers:
            add_rate_headers(exchange)  # the address limits counted; their headers were held back
        host.runtime.metrics.reject(refusal.error)
        host.audit.token_rejected(exchange, refusal)
        host.fail(exchange, refusal.status, refusal.error, challenge(refusal))


class CredentialAuthStage(AuthStage):
    """A token or an API key; a token naming a key not fetched yet waits for the key set."""

    def __init__(self, auth: JwtRouteAuth | ApiKeyRouteAuth, *, held_rate_headers: bool) -> None:
        super().__init__(held_rate_headers=held_rate_headers)
        self.auth = auth

    def check(self, exchange: Exchange, host: PolicyHost) -> Verdict | SlowPath:
        try:
            identity = self.auth.authenticate(exchange.authorization, exchange.api_key, exchange.query)
        except NeedsRefetch as pending:
            auth = self.auth
            assert isinstance(auth, JwtRouteAuth)  # only tokens name keys to fetch
            return self._later(exchange, host, auth, str(pending.args[0]))
        except AuthError as refusal:
            self._refuse(exchange, host, refusal)
            return DONE
        _authenticated(exchange, identity)
        return CONTINUE

    async def _later(self, exchange: Exchange, host: PolicyHost, auth: JwtRouteAuth, token: str) -> Verdict:
        try:
            identity = await auth.authenticate_async(token)
        except AuthError as refusal:
            if host.serving(exchange):
                self._refuse(exchange, host, refusal)
            return DONE
        if not host.serving(exchange):
            return DONE
        _authenticated(exchange, identity)
        return CONTINUE


class MtlsAuthStage(AuthStage):
    """The route's client-certificate check: the certificate is the connection's, resolved once."""

    def __init__(self, auth: MtlsRouteAuth, *, held_rate_headers: bool) -> None:
        super().__init__(held_rate_headers=held_rate_headers)
        self.mtls = auth

    def check(self, exchange: Exchange, host: PolicyHost) -> Verdict | SlowPath:
        auth = self.mtls
        try:
            identity = auth.authorize(host.certificate_client(auth.clients))
        except AuthError as refusal:
            self._refuse(exchange, host, refusal)
            return DONE
        _authenticated(exchange, identity)
        return CONTINUE


def _authenticated(exchange: Exchange, identity: Identity) -> None:
    exchange.identity_headers = identity.headers
    exchange.log_subject = identity.log_subject
    exchange.client = identity.client


class CacheStage:
    """Serve a fresh cached response, or arrange for the upstream's answer to be stored."""

    name = "cache"

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    def check(self, exchange: Exchange, host: PolicyHost) -> Verdict:
        runtime = host.runtime
        cache = runtime.response_cache
        if cache is None or exchange.request_headers is None:
            return CONTINUE  # not a GET/HEAD, or a reload removed caching since this was routed
        # The subject is part of the key: an authenticated caller only ever sees its own entries.
        subject = b"" if exchange.log_subject == b"null" else exchange.log_subject
        request = CacheRequest.from_headers(
            exchange.method, exchange.host, exchange.path, exchange.query, subject, exchange.request_headers
        )
        entry = cache.lookup(request)
        if entry is None:
            exchange.cache_request = request
            exchange.cache = cache
            exchange.extra_response_headers += X_CACHE_MISS
            runtime.metrics.cache_lookup(exchange.route.name, "miss")
            return CONTINUE
        runtime.metrics.cache_lookup(exchange.route.name, "hit")
        replay(exchange, host, entry)
        return DONE


def replay(exchange: Exchange, host: PolicyHost, entry: CachedResponse) -> None:
    runtime = host.runtime
    exchange.status = entry.status
    exchange.response = ResponsePhase.DONE
    if not exchange.request_done:
        exchange.close_after = True  # the request body would have to be drained
    if exchange.close_after or not exchange.keep_alive:
        connection = b"connection: close\r\n"
    else:
        connection = b"" if exchange.http11 else b"connection: keep-alive\r\n"
    body = b"" if exchange.method == b"HEAD" else entry.body
    exchange.bytes_out = len(body)
    host.write(
        b"".join(
            (
                STATUS_LINES[entry.status],
                entry.replay_headers(host.now()),
                runtime.security_headers,
                exchange.extra_response_headers,
                b"" if entry.has_referrer_policy else runtime.referrer_policy_line,
                exchange.trace_lines,
                connection,
                b"\r\n",
                body,
            )
        )
    )
    host.finish(exchange)
