"""`garrison vault`: the vault as a component of the core (core/runner.py): storage, seal, TLS, HTTP.

Start: the database is migrated (history "vault"), the seal state is read, the listener opens with
TLS (``auto`` by default: from the mesh CA when there is one, else a local CA under
``state_dir/vault/tls``), and in dev mode the vault initialises and unseals itself. It starts sealed
otherwise: ``sys/init`` once, then ``sys/unseal`` with enough shares after every start.

uvicorn serves with llhttp (httptools), as the other components do, through ``_VaultHttpProtocol``:
llhttp refuses methods it does not know, and Vault's clients send ``LIST``, so a request line that
starts with ``LIST`` is handed to llhttp as ``GET`` and its method set back to ``LIST`` (h11, which
takes any method, served until 2026-12-06: 1.2-1.7x the CPU per request, measured with bench/vault).
SIGTERM finishes requests in flight and closes the database; SIGHUP regenerates the
per-service policies from the file (service_policies.py). The listener asks for an optional client
certificate verified against the mesh trust bundle, followed as it changes (listener_tls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from garrison.config.loader import LoadedConfig, load_config
from garrison.core.runner import StartFailed, run_component
from garrison.core.sockets import address_of, bind_socket
from garrison.events.emitter import Emitter, NullEmitter, emitter_for
from garrison.pki.ca_client import CaUnreachable
from garrison.pki.tls import CaIssuer, resolve_certificate
from garrison.pki.workload import WorkloadIdentity
from garrison.pki.workload_types import WorkloadError
from garrison.store.db import make_engine
from garrison.store.startup import prepare_schema
from garrison.telemetry import logging as log
from garrison.vault.api import VaultApp
from garrison.vault.audit import AuditLog
from garrison.vault.audit_events import VaultEvents
from garrison.vault.core import VaultCore
from garrison.vault.listener_tls import ListenerTls, with_tls_extension
from garrison.vault.mesh_state import vault_identity
from garrison.vault.migrations import SCHEMA
from garrison.vault.service_policies import ServicePolicies
from garrison.vault.storage import durable

__all__ = ["VaultComponent", "serve"]

DRAIN_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024  # request line and headers, as h11_max_incomplete_event_size bounded them before
LIST_LINE, STAND_IN = b"LIST ", b"GET "


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parser error, answered 400 and closed."""


class _VaultHttpProtocol(HttpToolsProtocol):
    """uvicorn's llhttp protocol, taught Vault's ``LIST`` verb and bounded in head size.

    Between two requests (no request begun on this connection since the last one completed) the next
    bytes start a request line: ``LIST `` there is fed to llhttp as ``GET `` and the request's method
    set back to ``LIST`` once its head is parsed, before the app sees it. Bytes that may still become
    ``LIST `` (``L``, ``LI``...) wait for the next read. A client that pipelines a LIST behind another
    request in the same read gets llhttp's 400 and a closed connection, as before the translation; Vault's
    clients (Go's net/http, requests) send one request at a time on a connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._between = True
        self._held = b""
        self._listing = False
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = with_tls_extension(self.app, transport)

    def data_received(self, data: bytes) -> None:
        if self._between:
            data, self._held = self._held + data, b""
            if data.startswith(LIST_LINE):
                data = STAND_IN + data[len(LIST_LINE) :]
                self._listing = True
            elif LIST_LINE.startswith(data):
                self._held = data
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._between = False
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # builds the scope; the app's task has not run yet
        if self._listing:
            self.scope["method"] = "LIST"
            self._listing = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between = True


BUNDLE_CHECK_INTERVAL = 1.0  # a root rotation reaches cert logins within this


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: core/runner.py owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class VaultComponent:
    name = "vault"

    def __init__(self, loaded: LoadedConfig, emitter: Emitter | None = None) -> None:
        """``emitter``: where the audit events go, for tests run in process (else ``emitter_for``)."""
        self.loaded = loaded
        self.given_emitter = emitter
        self.core: VaultCore | None = None
        self.server: _Uvicorn | None = None
        self.serving: asyncio.Task[None] | None = None
        self.tls: ListenerTls | None = None
        self.following: asyncio.Task[None] | None = None
        self.identity: WorkloadIdentity | None = None
        self.emitter: Emitter = NullEmitter()

    async def start(self) -> dict[str, str]:
        config = self.loaded.config
        vault = config.vault
        if vault is None:
            raise StartFailed("garrison.yaml has no `vault` section")
        directory = config.state_dir / "vault"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = durable(make_engine(vault.database, config.state_dir))
        try:
            await prepare_schema(engine, SCHEMA, config.store)
            audit_path = Path(vault.audit.file) if vault.audit.file else directory / "audit.log"
            audit = AuditLog(audit_path, vault.audit.fail_closed)
            core = self.core = VaultCore(
                engine, audit, default_ttl=vault.token.default_ttl, max_ttl=vault.token.max_ttl
            )
            await core.load()
            await core.apply_services(ServicePolicies.from_config(config), vault.cert_token_ttl)
            if vault.dev:
                await core.dev_unseal(directory)
            tls = self.tls = self._tls()
            await self._join_mesh(core)
        except BaseException:
            if self.identity is not None:
                await self.identity.close()
            await engine.dispose()
            raise
        sock = bind_socket(vault.listen)
        listening = address_of(sock)
        # Stable across restarts (the emitter's spool is named after it): the host and configured listen.
        instance = f"{socket.gethostname()}/{vault.listen}"
        identity = self.identity
        self.emitter = self.given_emitter or emitter_for(
            config, "vault", instance, identity.client_context if identity is not None else None
        )
        await self.emitter.start()
        events = VaultEvents(self.emitter, instance)
        app = VaultApp(core, hsts=tls is not None, max_body=vault.max_request_body, events=events)
        server = self.server = _Uvicorn(_uvicorn_config(app, tls.listening if tls else None))
        self.serving = asyncio.create_task(server.serve(sockets=[sock]), name="vault-server")
        while not server.started:
            if self.serving.done():
                self.serving.result()
                raise StartFailed("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        if tls is not None:
            self.following = asyncio.create_task(_follow_bundle(tls), name="vault-bundle")
        log.log(
            "vault.listening", address=listening, initialized=core.seal.initialized, sealed=core.seal.sealed
        )
        return {"vault": listening}

    async def _join_mesh(self, core: VaultCore) -> None:
        """With the mesh configured: the vault's own identity, following the CA's state (revocations,
        quarantine) for cert logins."""
        identity = vault_identity(self.loaded.config)
        if identity is None:
            return
        core.cert_login.follows_mesh = True  # from here on, no state known means no cert login
        try:
            await identity.start()
        except (WorkloadError, CaUnreachable) as exc:  # no token, or the CA refused or is down
            # The vault still serves tokens and AppRole; only cert logins wait for an identity.
            td = self.loaded.config.trust_domain
            log.error(
                "vault.mesh.no_identity",
                message=f"{exc}; cert logins are refused until the vault restarts with an identity: "
                f"garrison ca join-token --spiffe-id spiffe://{td}/vault",
            )
            return
        self.identity = identity
        identity.on_state(core.cert_login.apply_state)

    def _tls(self) -> ListenerTls | None:
        config = self.loaded.config
        assert config.vault is not None
        tls = config.vault.tls
        if tls.insecure_disable:
            log.warn(
                "vault.tls.disabled", message="TLS is OFF: tokens and secrets cross the network in clear"
            )
            return None
        ca = CaIssuer.for_config(config, "vault")
        cert, key = resolve_certificate(tls, config.state_dir / "vault", self.loaded.source.parent, ca)
        return ListenerTls(cert, key, tls.min_version, config.state_dir / "ca" / "bundle.pem")

    def details(self) -> dict[str, Any]:
        core = self.core
        return {"initialized": core.seal.initialized if core else False}

    async def reload(self) -> None:
        """SIGHUP: the per-service policies and cert bindings again from the file (the rest of the
        vault section needs a restart). A file that does not load keeps the running ones."""
        assert self.core is not None
        loaded = load_config(self.loaded.source)
        if loaded.config.vault is None:
            raise ValueError("the file has no `vault` section any more: keeping the running policies")
        await self.core.apply_services(
            ServicePolicies.from_config(loaded.config), loaded.config.vault.cert_token_ttl
        )
        self.loaded = loaded
        log.log("vault.reloaded", services=len(loaded.config.services))

    async def drain(self) -> None:
        assert self.server is not None and self.serving is not None and self.core is not None
        if self.following is not None:
            self.following.cancel()
        if self.identity is not None:
            await self.identity.close()
        self.server.should_exit = True  # stop accepting; requests in flight finish
        await _close_idle_connections(self.server, self.serving)
        self.core.seal_now()
        await self.core.engine.dispose()
        await self.emitter.close()  # after the last request: its events are delivered or spooled
        log.log("vault.stopped")


async def _close_idle_connections(server: _Uvicorn, serving: asyncio.Task[None]) -> None:
    """Wait for uvicorn to finish, cutting idle keep-alive connections as it goes.

    uvicorn closes an idle connection with ``transport.close()``, which over TLS waits for the client's
    close_notify; a client holding a pooled connection without reading it (requests, hence hvac) never
    sends one, and the drain would wait out the SSL shutdown timeout. A connection with no request
    in progress has nothing to lose: it is aborted. One with a request in flight gets DRAIN_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    while not serving.done():
        for connection in list(server.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            idle = cycle is None or getattr(cycle, "response_complete", True)
            if transport is not None and (idle or loop.time() > deadline):
                transport.abort()
        await asyncio.wait({serving}, timeout=0.05)
    serving.result()


async def _follow_bundle(tls: ListenerTls) -> None:
    """The trust bundle checked every second (a stat and a small read): a root rotation reaches the
    listener without a restart."""
    while True:
        await asyncio.sleep(BUNDLE_CHECK_INTERVAL)
        tls.refresh()


def _uvicorn_config(app: VaultApp, context: ssl.SSLContext | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="none",
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
        http=_VaultHttpProtocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=10_000,
        timeout_keep_alive=30,
    )


async def serve(loaded: LoadedConfig, ready_file: Path | None) -> int:
    """Run the vault until SIGTERM/SIGINT (core/runner.py)."""
    return await run_component(VaultComponent(loaded), ready_file)
