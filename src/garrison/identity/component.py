"""The identity provider as a component of the core (core/runner.py): TLS, the HTTP server, the admin
listener and the maintenance loop around the ``Provider`` that ``service.open_provider`` assembles.

uvicorn serves the ASGI app on the running loop, with its own signal handling switched off: the core
runner owns SIGTERM (drain, exit 0) and SIGHUP (the provider cannot reload: it says so and keeps
serving) for every component alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from garrison.admin.listener import AdminListener
from garrison.config.loader import LoadedConfig
from garrison.config.model import GarrisonConfig
from garrison.core.runner import ReloadUnsupported, StartFailed, run_component
from garrison.core.sockets import address_of, bind_socket
from garrison.events.emitter import Emitter, NullEmitter, emitter_for
from garrison.identity.admin import start_identity_admin
from garrison.identity.service import Provider, open_provider
from garrison.pki.tls import CaIssuer, resolve_certificate, server_context
from garrison.telemetry import logging as log


def tls_context(config: GarrisonConfig, config_dir: Path) -> ssl.SSLContext | None:
    identity = config.identity
    assert identity is not None
    if identity.tls.insecure_disable:
        log.warn(
            "identity.tls.disabled", message="TLS is OFF: the identity provider serves plaintext (insecure)"
        )
        # The operator chose plaintext explicitly (and is warned above): Authlib's own transport check
        # would only re-parse every request URL to refuse what was already decided.
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        return None
    ca = CaIssuer.for_config(config, "identity")  # Garrison's CA signs `auto` when it exists
    cert, key = resolve_certificate(identity.tls, config.state_dir / "identity", config_dir, ca)
    return server_context(cert, key, identity.tls.min_version)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: core/runner.py owns the signals of every component."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class IdentityComponent:
    """The provider as a component run by core/runner.py: SIGTERM finishes requests in flight, then
    the stores close and the process exits 0; SIGHUP reloads nothing (restart to reconfigure)."""

    name = "identity"

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        emitter: Emitter | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``emitter`` and ``clock`` are for tests run in process: the audit events' recipient (else the
        configured one, ``emitter_for``) and what the throttle and account locks read."""
        self.loaded = loaded
        self.given_emitter, self.clock = emitter, clock
        self.issuer = ""
        self.provider: Provider | None = None
        self.server: _Uvicorn | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.admin: AdminListener | None = None
        self.emitter: Emitter = NullEmitter()

    async def start(self) -> dict[str, str]:
        config = self.loaded.config
        identity = config.identity
        if identity is None:
            raise StartFailed("garrison.yaml has no `identity` section")
        sock = bind_socket(identity.listen)
        listening = address_of(sock)
        if urlsplit(identity.issuer).port == 0:
            # `issuer: http://127.0.0.1:0` with `listen: ...:0` (tests, benchmarks): the issuer is
            # wherever the listener landed.
            parts = urlsplit(identity.issuer)
            issuer = urlunsplit(
                (parts.scheme, f"{parts.hostname}:{sock.getsockname()[1]}", parts.path, "", "")
            )
            identity = identity.model_copy(update={"issuer": issuer.rstrip("/")})
            config = config.model_copy(update={"identity": identity})
        self.issuer = identity.issuer
        context = tls_context(config, Path(self.loaded.source).parent)
        # Stable across restarts (the emitter's spool is named after it): the host and configured listen.
        instance = f"{socket.gethostname()}/{identity.listen}"
        self.emitter = self.given_emitter or emitter_for(config, "identity", instance)
        await self.emitter.start()
        provider = self.provider = await open_provider(
            config, identity.issuer, self.clock, emitter=self.emitter, instance=instance
        )
        server = self.server = _Uvicorn(_uvicorn_config(provider, context))
        self.admin = await start_identity_admin(config, Path(self.loaded.source).parent, provider, server)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="identity-server")
        self.tasks = [serving, asyncio.create_task(_maintain(provider), name="identity-maintenance")]
        while not server.started:
            if serving.done():  # uvicorn gave up before serving (it logged why)
                serving.result()
                raise StartFailed("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.log("identity.listening", address=listening, issuer=identity.issuer)
        return {"identity": listening} | ({"admin": self.admin.address} if self.admin else {})

    def details(self) -> dict[str, Any]:
        return {"issuer": self.issuer}

    async def reload(self) -> None:
        raise ReloadUnsupported

    async def drain(self) -> None:
        assert self.server is not None and self.provider is not None
        self.server.should_exit = True  # stop accepting, finish requests in flight
        serving, maintenance = self.tasks
        await serving
        maintenance.cancel()
        if self.admin is not None:
            await self.admin.close()
        provider = self.provider
        await provider.directory.stop()
        await provider.revocations.stop()
        await provider.push.stop()
        await provider.engine.dispose()
        await self.emitter.close()  # after the last request: its events are delivered or spooled
        log.log("identity.stopped")


def _uvicorn_config(provider: Provider, context: ssl.SSLContext | None) -> uvicorn.Config:
    assert provider.app is not None
    return uvicorn.Config(
        provider.app,
        loop="none",  # serve on the running (uvloop) loop
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=10_000,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=16 * 1024,
    )


async def serve(loaded: LoadedConfig, ready_file: Path | None) -> int:
    """Run the provider until SIGTERM/SIGINT (core/runner.py)."""
    return await run_component(IdentityComponent(loaded), ready_file)


async def _maintain(provider: Provider) -> None:
    """Key schedule, JWKS refresh and the client throttle's look at the table every few seconds;
    expired codes, families, sessions and throttle counters forgotten every minute."""
    rounds = 0
    while True:
        await asyncio.sleep(5.0)
        rounds += 1
        try:
            await provider.keys.maintain_once()
            provider.refresh_jwks()
        except Exception as exc:  # keep serving with the keys we have; say so
            log.warn("identity.keys.maintenance_failed", error=type(exc).__name__)
        if provider.client_guard is not None:
            try:
                await provider.client_guard.refresh()
            except Exception as exc:  # this process's own failures still count; try again next round
                log.warn("identity.client_throttle.refresh_failed", error=type(exc).__name__)
        if rounds % 12:
            continue
        for purge in provider.purgers:
            try:
                await purge()
            except Exception as exc:  # expired rows only cost space; try again next time
                log.warn("identity.purge_failed", error=type(exc).__name__)
