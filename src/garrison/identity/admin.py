"""The identity provider's admin listener: ``/live``, ``/ready`` and ``/metrics`` (admin/api.py), and
``/token-families`` and ``/lockouts`` (admin_api.py), behind the same guard as the gateway's
(admin/auth.py), at ``identity.admin.listen``.

The token is the gateway's unless ``identity.admin.token_file`` names another, so an operator (and
the CLI) holds one credential for both. The listener is auxiliary: a port already taken is logged
as an error and the provider serves on without it (the readiness probe then cannot reach it, which
is what an orchestrator notices), rather than taking sign-ins down with it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import text

from garrison.admin.api import AdminApi
from garrison.admin.auth import AdminTokenError, admin_token_path
from garrison.admin.listener import AdminListener, start_admin_listener
from garrison.config.model import GarrisonConfig
from garrison.identity.admin_api import lockouts_api, token_families_api
from garrison.telemetry import logging as log
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

if TYPE_CHECKING:
    from garrison.identity.service import Provider

__all__ = ["start_identity_admin"]

DATABASE_CHECK_TIMEOUT = 2.0  # a readiness probe that hangs is worse than one that says why


class Serving(Protocol):
    """The main listener's state (uvicorn's Server): started, and not yet shutting down."""

    started: bool
    should_exit: bool


def identity_admin_api(provider: Provider, serving: Serving) -> AdminApi:
    """The provider's admin API; ``serving`` is its main listener (ready only while it serves)."""
    assert provider.app is not None
    metrics = provider.app.metrics
    if provider.client_guard is not None:  # the throttle sign-ins and client authentication share
        provider.client_guard.throttle.on_refused = metrics.throttle_refused

    async def not_ready_reasons() -> list[str]:
        if not serving.started:
            return ["starting"]
        if serving.should_exit:
            return ["draining"]
        try:
            async with asyncio.timeout(DATABASE_CHECK_TIMEOUT), provider.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach it is the answer, named by type only
            return [f"database unreachable ({type(exc).__name__})"]
        return []

    api = AdminApi(not_ready_reasons, metrics.registry)
    families, locks, grants = provider.families, provider.locks, provider.app.server.user_grants
    assert families is not None and locks is not None and grants is not None

    async def revoke_families(request: SimpleRequest) -> SimpleResponse:
        return await token_families_api(request, families, grants.users, provider.audit)

    async def lockouts(request: SimpleRequest) -> SimpleResponse:
        return await lockouts_api(request, locks, provider.audit)

    api.register("/token-families", revoke_families)
    api.register("/lockouts", lockouts)
    return api


async def start_identity_admin(
    config: GarrisonConfig, config_dir: Path, provider: Provider, serving: Serving
) -> AdminListener | None:
    """Serve the admin API; None (logged) when the listener cannot be opened."""
    identity = config.identity
    assert identity is not None
    settings = identity.admin
    token_path = Path(settings.token_file) if settings.token_file else admin_token_path(config)
    api = identity_admin_api(provider, serving)
    try:
        listener = await start_admin_listener(settings, token_path, config_dir, api)
    except (OSError, AdminTokenError) as exc:
        log.error("identity.admin.unavailable", listen=settings.listen, error=str(exc))
        return None
    log.log("identity.admin.listening", address=listener.address)
    return listener
