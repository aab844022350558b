"""`garrison ca serve`: the workload CA as a component process (core/runner.py).

Start order: the CA's files must exist (``garrison ca init``; the start fails saying so otherwise), the
schema is migrated (history "mesh"), the published state is read, then the TLS API (mesh/ca/api.py) and
the admin listener (mesh/ca/admin.py) open. Every second the CA looks again at its files and its
database: a rotation done on the files (``garrison ca rotate``) gets a new server certificate and new
roots on the listener, and moves the published state's version, so sidecars learn of it at once.

SIGTERM: stop accepting, answer the long-polls in flight, close. SIGHUP reloads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.admin.auth import AdminTokenError, admin_token_path
from garrison.admin.listener import AdminListener, start_admin_listener
from garrison.config.loader import LoadedConfig
from garrison.config.model import GarrisonConfig
from garrison.core.runner import ReloadUnsupported, StartFailed, run_component
from garrison.core.sockets import BACKLOG, address_of, bind_socket
from garrison.events.emitter import emitter_for, register_metrics
from garrison.mesh.ca.admin import ca_admin_api
from garrison.mesh.ca.api import MAX_BODY, CaApi
from garrison.mesh.ca.issuer import Issuer
from garrison.mesh.ca.join_tokens import JoinTokens
from garrison.mesh.ca.state import CaState
from garrison.mesh.ca.tls import CaTls
from garrison.mesh.migrations import SCHEMA as MESH_SCHEMA
from garrison.pki.authority_files import AuthorityFiles
from garrison.pki.kek import KeyEncryption
from garrison.store.db import make_engine
from garrison.store.startup import prepare_schema
from garrison.telemetry import logging as log
from garrison.telemetry.mesh_metrics import CaMetrics
from garrison.web.simplehttp import SimpleHttpProtocol

__all__ = ["CaComponent", "CaParts", "open_ca", "serve"]

DRAIN_TIMEOUT = 10.0
REFRESH_INTERVAL = 1.0  # how soon a change made on the files or by another process is published


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ca_files(config: GarrisonConfig) -> AuthorityFiles:
    return AuthorityFiles(config.state_dir / "ca", KeyEncryption.load(config.state_dir))


@dataclass
class CaParts:
    """What the CA process (and the CLI, when the CA is not running) works with."""

    config: GarrisonConfig
    files: AuthorityFiles
    engine: AsyncEngine
    tokens: JoinTokens
    issuer: Issuer
    state: CaState


async def open_ca(config: GarrisonConfig, clock: Callable[[], dt.datetime] = utc_now) -> CaParts:
    """The CA's files, database (migrated) and state; StartFailed without ``garrison ca init``."""
    mesh = config.mesh
    if mesh is None:
        raise StartFailed("garrison.yaml has no `mesh` section (the CA is configured under mesh.ca)")
    kek = KeyEncryption.load(config.state_dir)
    files = AuthorityFiles(config.state_dir / "ca", kek)
    if not files.exists():
        raise StartFailed(f"no CA in {files.directory}: run `garrison ca init -c FILE` first")
    engine = make_engine(mesh.ca.database, config.state_dir)
    try:
        await prepare_schema(engine, MESH_SCHEMA, config.store)
    except BaseException:
        await engine.dispose()
        raise
    tokens = JoinTokens(engine, kek, clock)
    lifetime = dt.timedelta(seconds=mesh.ca.workload_ttl)
    issuer = Issuer(files, tokens, engine, clock, lifetime)
    state = CaState(engine, files, issuer, clock)
    await state.refresh()
    return CaParts(config, files, engine, tokens, issuer, state)


class CaComponent:
    name = "ca"

    def __init__(self, loaded: LoadedConfig, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.loaded = loaded
        self.clock = clock
        self.metrics = CaMetrics()
        # Audit events (ca.join, ca.renew, ca.revoke, ca.quarantine), sent with the emit token: the
        # CA holds no workload certificate of its own. Instance: the host (one CA per state_dir).
        self.emitter = emitter_for(loaded.config, "ca", socket.gethostname())
        register_metrics(self.emitter, self.metrics.registry)
        self.parts: CaParts | None = None
        self.server: asyncio.Server | None = None
        self.admin: AdminListener | None = None
        self.tls: CaTls | None = None
        self.api: CaApi | None = None
        self.maintenance: asyncio.Task[None] | None = None
        self.draining = False
        self.stopping = asyncio.Event()

    async def start(self) -> dict[str, str]:
        config = self.loaded.config
        parts = self.parts = await open_ca(config, self.clock)
        assert config.mesh is not None
        ca = config.mesh.ca
        tls = self.tls = CaTls(parts.files, config.trust_domain, self.clock)
        await self.emitter.start()
        api = self.api = CaApi(parts.issuer, parts.state, self.metrics, emitter=self.emitter)
        sock = bind_socket(ca.listen)
        try:
            self.server = await asyncio.get_running_loop().create_server(
                lambda: SimpleHttpProtocol(api, max_body=MAX_BODY, long_responses=True),
                sock=sock,
                ssl=tls.listening,
                backlog=BACKLOG,
            )
        except BaseException:
            sock.close()
            raise
        listening = address_of(sock)
        listeners = {"ca": listening}
        self.admin = await self._start_admin()
        if self.admin is not None:
            listeners["admin"] = self.admin.address
        self._publish()
        self.maintenance = asyncio.create_task(self._maintain(), name="ca-maintenance")
        log.log("ca.listening", address=listening, spiffe_id=tls.spiffe_id)
        return listeners

    async def _start_admin(self) -> AdminListener | None:
        config = self.loaded.config
        assert config.mesh is not None and self.parts is not None
        settings = config.mesh.ca.admin
        token_path = Path(settings.token_file) if settings.token_file else admin_token_path(config)
        api = ca_admin_api(
            self._not_ready,
            self.metrics,
            self.parts.state,
            self.parts.tokens,
            config.trust_domain,
            self.emitter,
        )
        try:
            listener = await start_admin_listener(settings, token_path, self.loaded.source.parent, api)
        except (OSError, AdminTokenError) as exc:
            log.error("ca.admin.unavailable", listen=settings.listen, error=str(exc))
            return None
        return listener

    async def _not_ready(self) -> list[str]:
        if self.draining:
            return ["draining"]
        assert self.parts is not None
        try:
            async with asyncio.timeout(2.0), self.parts.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach it is the answer, named by type only
            return [f"database unreachable ({type(exc).__name__})"]
        return []

    def _publish(self) -> None:
        assert self.parts is not None
        snapshot = self.parts.state.snapshot
        self.metrics.published(snapshot.version, len(snapshot.revoked), len(snapshot.quarantined))

    async def _maintain(self) -> None:
        assert self.parts is not None and self.tls is not None
        while True:
            try:
                await asyncio.wait_for(self.stopping.wait(), REFRESH_INTERVAL)
                return
            except TimeoutError:
                pass
            try:
                self.tls.refresh()
                await self.parts.state.refresh()
                self._publish()
            except Exception as exc:  # keep serving what we have; say so, try again
                log.warn("ca.refresh_failed", error=type(exc).__name__, message=str(exc))

    def details(self) -> dict[str, Any]:
        return {"spiffe_id": self.tls.spiffe_id if self.tls else ""}

    async def reload(self) -> None:
        raise ReloadUnsupported

    async def drain(self) -> None:
        assert self.parts is not None and self.server is not None
        self.draining = True
        self.server.close()
        self.stopping.set()
        if self.maintenance is not None:
            # Not cancelled: a database call cut short leaves aiosqlite's thread answering a closed loop.
            await self.maintenance
        await self.parts.state.wake_all()  # long-polls answer now, with the current state
        if self.api is not None:
            with contextlib.suppress(TimeoutError):  # requests in flight finish before the database closes
                await asyncio.wait_for(self.api.idle(), DRAIN_TIMEOUT)
        await self.server.wait_closed()
        if self.admin is not None:
            await self.admin.close()
        await self.parts.engine.dispose()
        await self.emitter.close()
        log.log("ca.stopped")


async def serve(loaded: LoadedConfig, ready_file: Path | None) -> int:
    """Run the CA until SIGTERM/SIGINT (core/runner.py)."""
    return await run_component(CaComponent(loaded), ready_file)
