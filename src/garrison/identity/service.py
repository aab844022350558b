"""`garrison identity`: assemble the provider (stores, keys, Authlib server, web app) and serve it.

Startup order matters: tables exist, the key-encryption key is loaded, a signing key exists and the
client directory is in memory before the listener accepts its first connection, so the first token
request never waits on (or fails for) something still loading.

How it is served (TLS, uvicorn, the admin listener, signals) is ``component.py``.

Routes: the OAuth endpoints (/token, /introspect, /revoke), OpenID Connect (/authorize and its pages
/login, /mfa, /consent; /userinfo; /logout) and metadata (discovery, /jwks, /live).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from garrison.admin.auth import admin_token_path
from garrison.config.model import GarrisonConfig, IdentityConfig
from garrison.events.emitter import Emitter
from garrison.identity import tables
from garrison.identity.account_locks import AccountLocks
from garrison.identity.auditing import IdentityAudit
from garrison.identity.authserver import AccessTokenGenerator, IdentityServer, build_server
from garrison.identity.client_throttle import ClientAuthGuard
from garrison.identity.clients import ClientDirectory, ClientStore
from garrison.identity.endpoints import TokenInspector
from garrison.identity.families import TokenFamilies
from garrison.identity.feed import GatewayPush
from garrison.identity.flows import BrowserFlows
from garrison.identity.grants import UserGrants, install
from garrison.identity.keys import SigningKeys
from garrison.identity.logout import LogoutFlow
from garrison.identity.mfa import MfaStore
from garrison.identity.migrations import SCHEMA as IDENTITY_SCHEMA
from garrison.identity.oidc import EndSession, Issuer, OpenIdCode, UserInfoClaims, discovery_document
from garrison.identity.sessions import Browser, BrowserCookies, ConsentStore, CsrfGuard, SessionStore
from garrison.identity.throttle import Throttle
from garrison.identity.users import UserStore
from garrison.identity.web import HttpRequest, HttpResponse, IdentityApp, json_response
from garrison.pki.kek import KeyEncryption
from garrison.store.db import make_engine
from garrison.store.shared_set import SharedSetFull
from garrison.store.startup import prepare_schema
from garrison.telemetry import logging as log
from garrison.tokens.forwarded import TrustedProxies
from garrison.tokens.jwks import JwksCache
from garrison.tokens.jwt import JwtVerifier
from garrison.tokens.revocations import Revocations, revocations_from_config
from garrison.tokens.token_cache import TokenCache


@dataclass
class Provider:
    """Everything a running provider holds, for the web handlers and for shutdown."""

    config: IdentityConfig
    engine: AsyncEngine
    keys: SigningKeys
    directory: ClientDirectory
    revocations: Revocations
    jwks_cache: JwksCache
    push: GatewayPush
    audit: IdentityAudit = field(default_factory=IdentityAudit)  # its events (auditing.py)
    locks: AccountLocks | None = None  # administrative account locks (the admin API's /lockouts)
    families: TokenFamilies | None = None  # token families (the admin API's /token-families)
    app: IdentityApp | None = None  # set once the Authlib server around this provider is built
    client_guard: ClientAuthGuard | None = None  # refreshed from the throttle table by _maintain
    purgers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)  # forget what expired

    def revoke_sync(self, jti: str, exp: float) -> None:
        """Called by Authlib's revocation endpoint (inside greenlet_spawn)."""
        await_only(self.revoke(jti, exp))

    async def revoke(self, jti: str, exp: float) -> None:
        until = datetime.fromtimestamp(exp, UTC)
        with contextlib.suppress(IntegrityError):  # already revoked
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(tables.revoked_tokens).values(
                        jti=jti, expires_at=until, revoked_at=datetime.now(UTC)
                    )
                )
        if exp > time.time():
            try:
                await self.revocations.revoke(jti, exp)  # with Redis: published to every gateway
            except SharedSetFull as exc:
                # The provider's own record (introspection) holds; the gateways honour the token
                # until its exp. Loud, because it means someone is filling the revocation set.
                log.error("identity.revocation.set_full", cap=exc.cap)
            self.push.publish(jti, exp)  # without Redis: told to the configured gateways' admin APIs

    async def load_revocations(self) -> None:
        now = datetime.now(UTC)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tables.revoked_tokens.c.jti, tables.revoked_tokens.c.expires_at).where(
                        tables.revoked_tokens.c.expires_at > now
                    )
                )
            ).all()
        for jti, until in rows:
            await self.revocations.revoke(jti, until.timestamp())

    def refresh_jwks(self) -> None:
        self.jwks_cache.load(self.keys.public_jwks())


async def open_provider(
    config: GarrisonConfig,
    base_url: str,
    clock: Callable[[], datetime] | None = None,
    emitter: Emitter | None = None,
    instance: str = "",
) -> Provider:
    """``clock`` (tests) is what the throttle and the account locks read; ``emitter`` takes the audit
    events (none: they go nowhere), ``instance`` names this process in them."""
    identity = config.identity
    assert identity is not None
    engine = make_engine(identity.database, config.state_dir)
    await prepare_schema(engine, IDENTITY_SCHEMA, config.store)
    kek = KeyEncryption.load(config.state_dir)
    keys = SigningKeys(
        engine,
        kek,
        publish_ahead=identity.keys.publish_ahead,
        rotation_interval=identity.keys.rotation_interval,
        max_token_lifetime=max(identity.access_token_ttl, identity.id_token_ttl),
    )
    await keys.ensure()  # the first key, or the next one when due; then the keys are in memory
    directory = ClientDirectory(ClientStore(engine, kek))
    await directory.start()
    revocations = revocations_from_config(config.revocations, config.redis.url)
    await revocations.start()
    jwks_cache = JwksCache(jwks_uri=identity.issuer + "/jwks")  # loaded locally, never fetched
    verifier = JwtVerifier(
        jwks_cache, identity.issuer, [identity.access_token_audience], leeway=30, cache=TokenCache()
    )
    push_token = identity.revocation_push_token_file
    push = GatewayPush(
        identity.revocation_push or [], Path(push_token) if push_token else admin_token_path(config)
    )
    await push.start()
    # Token hints are keyed by a digest of the KEK: stable across restarts and replicas, and secret.
    hint_key = bytes.fromhex(kek.digest("audit", "audit-token-hint"))
    audit = IdentityAudit(emitter, instance, hint_key)
    provider = Provider(identity, engine, keys, directory, revocations, jwks_cache, push, audit)
    provider.locks = AccountLocks(engine, clock) if clock else AccountLocks(engine)
    provider.refresh_jwks()
    generator = AccessTokenGenerator(
        identity.issuer, identity.access_token_audience, identity.access_token_ttl, keys
    )
    inspector = TokenInspector(verifier, revocations.is_revoked)
    # One throttle for passwords, one-time codes and client credentials: an address's failures add up.
    throttle = Throttle(engine, identity.lockout, clock) if clock else Throttle(engine, identity.lockout)
    throttle.on_lockout = lambda locked: audit.lockout(locked.key, locked.until.timestamp())
    provider.client_guard = ClientAuthGuard(throttle, directory.is_confidential)
    provider.client_guard.audit = audit
    await provider.client_guard.refresh()  # locks and failures from before this start still hold
    server = build_server(
        identity.issuer, directory, engine, generator, inspector, provider.revoke_sync, provider.client_guard
    )
    server.audit = audit
    provider.app = IdentityApp(
        server,
        base_url,
        hsts=base_url.startswith("https://"),
        trusted=TrustedProxies(identity.trusted_proxies),
    )
    _user_flows(provider, server, inspector, kek, throttle)
    _routes(provider)
    await provider.load_revocations()
    return provider


def _user_flows(
    provider: Provider,
    server: IdentityServer,
    inspector: TokenInspector,
    kek: KeyEncryption,
    throttle: Throttle,
) -> None:
    """Authorization code + PKCE, refresh rotation, OpenID Connect, and the pages in front of them."""
    identity, engine, app, locks = provider.config, provider.engine, provider.app, provider.locks
    assert app is not None and locks is not None
    families = provider.families = TokenFamilies(
        engine,
        kek,
        code_ttl=identity.code_ttl,
        refresh_ttl=identity.refresh_token_ttl,
        revoke=provider.revoke,
        audit=provider.audit,
    )
    grants = UserGrants(families, UserStore(engine, kek), provider.directory)
    install(server, grants, [OpenIdCode(identity.issuer, identity.id_token_ttl, provider.keys, families)])
    server.register_extension(Issuer(identity.issuer))
    server.register_endpoint(UserInfoClaims(inspector, server, grants))
    server.register_endpoint(EndSession(provider.keys, identity.issuer))
    cookies = BrowserCookies(secure=app.base_url.startswith("https://"), session_ttl=identity.session_ttl)
    browser = Browser(cookies, CsrfGuard(kek), SessionStore(engine, kek, identity.session_ttl))
    flows = BrowserFlows(
        app,
        server,
        grants,
        browser,
        mfa=MfaStore(engine, kek),
        throttle=throttle,
        consents=ConsentStore(engine),
        mfa_roles=identity.mfa_roles,
        locks=locks,
        audit=provider.audit,
    )
    flows.install()
    LogoutFlow(app, server, browser).install()
    provider.purgers += [families.purge, browser.sessions.purge, throttle.purge, locks.purge]


def _routes(provider: Provider) -> None:
    app = provider.app
    assert app is not None
    identity = provider.config

    async def metadata(request: HttpRequest) -> HttpResponse:
        return json_response(200, discovery_document(identity), [("cache-control", "public, max-age=300")])

    async def jwks(request: HttpRequest) -> HttpResponse:
        # Cacheable for far less than identity.keys.publish_ahead: a new key is seen before it signs.
        return json_response(200, provider.keys.public_jwks(), [("cache-control", "public, max-age=60")])

    async def token(request: HttpRequest) -> HttpResponse:
        return await app.token(request)

    async def introspect(request: HttpRequest) -> HttpResponse:
        return await app.endpoint("introspection", request)

    async def revoke(request: HttpRequest) -> HttpResponse:
        return await app.endpoint("revocation", request)

    async def userinfo(request: HttpRequest) -> HttpResponse:
        return await app.endpoint("userinfo", request)

    async def live(request: HttpRequest) -> HttpResponse:
        return json_response(200, {"status": "ok"})

    app.route("GET", "/.well-known/openid-configuration", metadata)
    app.route("GET", "/.well-known/oauth-authorization-server", metadata)
    app.route("GET", "/jwks", jwks)
    app.route("POST", "/token", token)
    app.route("POST", "/introspect", introspect)
    app.route("POST", "/revoke", revoke)
    app.route("GET", "/userinfo", userinfo)
    app.route("POST", "/userinfo", userinfo)
    app.route("GET", "/live", live)
