"""The gateway process: listeners, the sweeper, reload, drain.

One ``GatewayServer`` per process. It owns what outlives a config reload (client connections,
metrics, the access log) and swaps the ``Runtime`` (routes, services, pools) on reload.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.admin.listener import admin_security_headers
from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.config.model import GarrisonConfig, parse_listen
from garrison.config.store import StoreConfig
from garrison.core.sockets import BACKLOG, address_of, bind_socket
from garrison.events.emitter import Emitter, NullEmitter, emitter_for, register_metrics
from garrison.gateway.admin import gateway_admin_api
from garrison.gateway.audit import GatewayAudit, hint_key
from garrison.gateway.auth.apikeys import ApiKeyCache, ApiKeyStore
from garrison.gateway.blocklist import blocklist_from_config
from garrison.gateway.exchange import Exchange
from garrison.gateway.heap import HeapTrimmer, glibc_malloc_trim
from garrison.gateway.listeners import open_admin_listener
from garrison.gateway.mesh import gateway_identity
from garrison.gateway.migrations import SCHEMA as GATEWAY_SCHEMA
from garrison.gateway.proxy import ClientConnection
from garrison.gateway.runtime import Runtime, build_runtime
from garrison.pki.tls import CaIssuer, ask_for_client_certificates, resolve_certificate, server_context
from garrison.store.db import make_engine
from garrison.store.startup import prepare_schema
from garrison.telemetry import logging as log
from garrison.telemetry.accesslog import AccessLog
from garrison.telemetry.metrics import GatewayMetrics
from garrison.tokens.revocations import revocations_from_config
from garrison.web.simplehttp import SimpleHttpProtocol, SimpleRequest, SimpleResponse

SWEEP_INTERVAL = 0.1
WATCH_INTERVAL = 1.0
# One access-log line. Every %s field is a number or text the gateway has already restricted to a
# JSON-safe alphabet (see telemetry/accesslog.py), so %-formatting is safe and cheaper than json.
ACCESS_LINE = (
    b'{"time":"%s.%03dZ","request_id":"%s","trace_id":"%s","client_ip":"%s","method":"%s",'
    b'"path":"%s","route":%s,"status":%d,"bytes_in":%d,"bytes_out":%d,"upstream_ms":%.3f,'
    b'"total_ms":%.3f,"attempts":%d,"subject":%s}\n'
)


class GatewayServer:
    def __init__(
        self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop, audit_instance: str | None = None
    ) -> None:
        """``audit_instance``: this process's name in its audit events (None: it serves no requests,
        as the supervisor of ``workers: N``, and emits none)."""
        self.loop = loop
        self.source = loaded.source
        self.metrics = GatewayMetrics()
        self.api_keys: ApiKeyCache | None = None
        self._api_keys_started = False
        self._store = loaded.config.store  # migrations and waits for the API-key database
        self._ensure_api_keys(loaded.config)
        # Created before the first runtime, whose token cache reads it; kept across reloads.
        self.revocations = revocations_from_config(loaded.config.revocations, loaded.config.redis.url)
        # The mesh identity (started in start()) is asked for its context per new upstream connection.
        self.identity = gateway_identity(loaded.config)
        self.runtime: Runtime = build_runtime(
            loaded.config,
            loop,
            self.metrics,
            self.api_keys,
            revocations=self.revocations,
            mesh_tls=self.mesh_tls,
        )
        self.connections: set[ClientConnection] = set()
        self.closed_connections = 0  # client connections ever closed: when to trim the heap
        self.heap = HeapTrimmer(glibc_malloc_trim())
        self.metrics.open_connections = lambda: len(self.connections)
        self.metrics.heap_trims = lambda: self.heap.trims
        self.metrics.heap_trim_pending = lambda: self.heap.pending(self.closed_connections)
        self.max_connections = loaded.config.gateway.limits.max_connections
        self.draining = False
        self.ready = False
        self.access_log = self._open_access_log(loaded)
        self.emitter, self.audit = self._audit(loaded.config, audit_instance)
        self.blocklist = blocklist_from_config(loaded.config.gateway.blocklist, loaded.config.redis.url)
        self.admin_api = gateway_admin_api(
            self.not_ready_reasons,
            self.metrics.registry,
            self.blocklist,
            self.revocations,
            lambda: self.runtime.config.gateway.blocklist.max_duration,
            self.metrics.admin_refused,
        )
        self.servers: list[asyncio.Server] = []
        self.tls_context: ssl.SSLContext | None = None
        self.https_port = parse_listen(loaded.config.gateway.listen)[1]
        self._config_mtime = self._mtime()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def mesh_tls(self) -> Callable[[], ssl.SSLContext] | None:
        return self.identity.client_context if self.identity is not None else None

    def _ensure_api_keys(self, config: GarrisonConfig) -> None:
        """Open the API-key store once some route needs it (then it stays open across reloads)."""
        if self.api_keys is None and any(route.auth.require == "api_key" for route in config.routes):
            engine = make_engine(config.gateway.api_keys.database, config.state_dir)
            self.api_keys = ApiKeyCache(ApiKeyStore(engine), config.gateway.api_keys.refresh_interval)

    async def _start_api_keys(self) -> None:
        if self.api_keys is not None and not self._api_keys_started:
            await create_tables(self.api_keys.store.engine, self._store, self.source)
            await self.api_keys.start()
            self._api_keys_started = True

    def _audit(self, config: GarrisonConfig, instance: str | None) -> tuple[Emitter, GatewayAudit]:
        """The emitter (with the mesh identity's certificate when the gateway has one) and the events."""
        if instance is None or config.audit is None:
            return NullEmitter(), GatewayAudit(NullEmitter(), "none", b"")
        emitter = emitter_for(config, "gateway", instance, self.mesh_tls)
        register_metrics(emitter, self.metrics.registry)
        mode = config.audit.emitter.gateway_requests
        return emitter, GatewayAudit(emitter, mode, hint_key(config.state_dir), instance)

    @staticmethod
    def _open_access_log(loaded: LoadedConfig) -> AccessLog:
        settings = loaded.config.gateway.access_log
        return AccessLog(settings.path if settings.enabled else None)

    # -- listeners -------------------------------------------------------------------------------
    async def start(self, main_sock: socket.socket, with_side_listeners: bool = True) -> dict[str, str]:
        """Serve on ``main_sock`` (bound, not listening). Returns listener name -> address."""
        if self.identity is not None:
            try:  # first: joins or renews; services behind sidecars need it from the first request
                await self.identity.start()
            except BaseException:
                main_sock.close()
                raise
        config = self.runtime.config
        gateway = config.gateway
        listeners: dict[str, str] = {}
        if gateway.tls.insecure_disable:
            log.warn("gateway.tls.disabled", message="TLS is OFF: serving plaintext HTTP (insecure)")
        else:
            ca = CaIssuer.for_config(config, "gateway")
            cert, key = resolve_certificate(gateway.tls, config.state_dir, self.source.parent, ca)
            self.tls_context = server_context(cert, key, gateway.tls.min_version)
            if gateway.mtls is not None:
                ca_file = Path(gateway.mtls.ca)
                ask_for_client_certificates(self.tls_context, self.source.parent / ca_file)
        await self.revocations.start()  # before serving: a revoked token is never let in at start
        await self.emitter.start()
        server = await self.loop.create_server(
            lambda: ClientConnection(self).as_protocol(),
            sock=main_sock,
            ssl=self.tls_context,
            backlog=BACKLOG,
        )
        self.servers.append(server)
        await self.blocklist.start()
        listeners["gateway"] = address_of(main_sock)
        self.https_port = main_sock.getsockname()[1]
        if with_side_listeners:
            listeners.update(await self._start_side_listeners())
        await self._start_api_keys()
        await self.runtime.open()
        self._tasks.append(self.loop.create_task(self._sweep()))
        self.ready = True
        return listeners

    async def _start_side_listeners(self) -> dict[str, str]:
        gateway = self.runtime.config.gateway
        listeners = {}
        config = self.runtime.config
        admin_sock, guard, admin_tls = open_admin_listener(config, self.source, self.admin_handler)
        self.metrics.admin_denied = guard.denied
        admin_headers = admin_security_headers(admin_tls is not None)  # as every admin listener
        admin = await self.loop.create_server(
            lambda: SimpleHttpProtocol(guard, admin_headers), sock=admin_sock, ssl=admin_tls
        )
        self.servers.append(admin)
        listeners["admin"] = address_of(admin_sock)
        if gateway.redirect_http and not gateway.tls.insecure_disable:
            redirect_sock = bind_socket(gateway.redirect_http, reuse_port=gateway.workers > 1)
            security = self.runtime.security_headers + self.runtime.referrer_policy_line
            redirect = await self.loop.create_server(
                lambda: SimpleHttpProtocol(self.redirect_handler, security), sock=redirect_sock
            )
            self.servers.append(redirect)
            listeners["redirect"] = address_of(redirect_sock)
        return listeners

    def admin_handler(self, request: SimpleRequest) -> SimpleResponse | Awaitable[SimpleResponse]:
        return self.admin_api(request)

    def not_ready_reasons(self) -> list[str]:
        """Why a load balancer should not send traffic here now (empty: it should)."""
        if self.draining:
            return ["draining"]
        if not self.ready:
            return ["starting"]
        return self.runtime.not_ready_reasons()

    def redirect_handler(self, request: SimpleRequest) -> SimpleResponse:
        """308 to the same target over HTTPS, on a host the config names (see redirect.py)."""
        # The bound port: with `listen: ...:0` the configured one says 0.
        return self.runtime.redirect.answer(request, self.https_port)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run per-request async work (a new upstream connection, a Redis rate-limit hit).

        The loop keeps only a weak reference to a task: holding it here until it ends is what
        keeps it from being collected half-way."""
        task = self.loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- per request -----------------------------------------------------------------------------
    def record(self, exchange: Exchange) -> None:
        """Metrics and the access log line for a finished exchange."""
        total = time.perf_counter() - exchange.start
        route = exchange.route
        route.stats.observe(exchange.status, total, exchange.body_seen, exchange.bytes_out)
        self.audit.request(exchange, total)
        if not self.access_log.enabled:
            return
        prefix, milliseconds = self.access_log.now()
        self.access_log.write(
            ACCESS_LINE
            % (
                prefix,
                milliseconds,
                exchange.request_id,
                exchange.trace_id,
                exchange.client_ip.encode(),
                exchange.method,
                exchange.path,
                route.log_name,
                exchange.status,
                exchange.body_seen,
                exchange.bytes_out,
                exchange.upstream_time * 1000,
                total * 1000,
                exchange.attempts,
                exchange.log_subject,
            )
        )

    def record_refusal(self, peer: str, status: int, code: str) -> None:
        """The access-log line of a request refused before routing. Nothing from the request is
        echoed: its target or headers are exactly what failed validation."""
        self.runtime.unmatched.observe(status, 0.0, 0, 0)
        self.audit.refusal(peer, status, code)
        if self.access_log.enabled:
            self.access_log.write(
                f'{{"time":"{_utc_now()}","request_id":null,"trace_id":null,"client_ip":"{peer}",'
                f'"method":null,"path":null,"route":null,"status":{status},"error":"{code}",'
                f'"bytes_in":0,"bytes_out":0,"upstream_ms":0,"total_ms":0,"attempts":0}}\n'.encode()
            )

    # -- background work -------------------------------------------------------------------------
    async def _sweep(self) -> None:
        last_watch = self.loop.time()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadlines(now)
            self.runtime.sweep(now)
            # Hands the memory of closed connections back to the OS, rarely (gateway/heap.py says why).
            self.heap.maybe_trim(len(self.connections), self.closed_connections, now)
            self.access_log.flush()
            if now - last_watch >= WATCH_INTERVAL:
                last_watch = now
                if self.runtime.config.gateway.watch_config and self._mtime() != self._config_mtime:
                    await self.reload("file changed")

    def _mtime(self) -> float:
        try:
            return os.stat(self.source).st_mtime
        except OSError:
            return 0.0

    async def reload_quietly(self, reason: str) -> None:
        await self.reload(reason)

    async def reload(self, reason: str) -> bool:
        """Load, validate and compile the config file; swap it in, or keep the old one and say why."""
        self._config_mtime = self._mtime()
        try:
            loaded = load_config(self.source)
            self._ensure_api_keys(loaded.config)
            await self._start_api_keys()
            runtime = build_runtime(
                loaded.config,
                self.loop,
                self.metrics,
                self.api_keys,
                revocations=self.revocations,
                mesh_tls=self.mesh_tls,
            )
        except ConfigError as exc:
            self.metrics.reloads["failure"] += 1
            log.error(
                "gateway.reload.failed",
                reason=reason,
                problems=[p.render(exc.filename) for p in exc.problems],
            )
            return False
        except (ValueError, OSError) as exc:
            self.metrics.reloads["failure"] += 1
            log.error("gateway.reload.failed", reason=reason, problems=[str(exc)])
            return False
        old = self.runtime
        runtime.adopt_keys(old)
        restart_needed = self._needs_restart(old, runtime)
        try:
            await runtime.open()
        except Exception as exc:  # any failure to open keeps the old config
            self.metrics.reloads["failure"] += 1
            log.error("gateway.reload.failed", reason=reason, problems=[f"cannot start: {exc}"])
            await runtime.close()
            return False
        self.runtime = runtime
        self.max_connections = loaded.config.gateway.limits.max_connections
        if self.tls_context is not None and not loaded.config.gateway.tls.insecure_disable:
            # New handshakes use the new certificate; live connections keep theirs.
            cert, key = resolve_certificate(
                loaded.config.gateway.tls,
                loaded.config.state_dir,
                self.source.parent,
                CaIssuer.for_config(loaded.config, "gateway"),
            )
            self.tls_context.load_cert_chain(cert, key)
        await old.close()
        self.metrics.reloads["success"] += 1
        log.log("gateway.reload.ok", reason=reason, routes=len(loaded.config.routes))
        if restart_needed:
            log.warn("gateway.reload.restart_needed", message=restart_needed)
        return True

    @staticmethod
    def _needs_restart(old: Runtime, new: Runtime) -> str:
        before, after = old.config.gateway, new.config.gateway
        # The stores are created once per process and kept across reloads.
        changed = [
            key
            for key in ("listen", "workers", "admin", "redirect_http", "access_log", "blocklist")
            if getattr(before, key) != getattr(after, key)
        ]
        changed += [
            key for key in ("revocations", "redis") if getattr(old.config, key) != getattr(new.config, key)
        ]
        if before.tls.min_version != after.tls.min_version:
            changed.append("tls.min_version")
        if before.tls.insecure_disable != after.tls.insecure_disable:
            changed.append("tls.insecure_disable")
        if (before.mtls and before.mtls.ca) != (after.mtls and after.mtls.ca):
            changed.append("mtls.ca")  # a context cannot drop a trusted CA: new trust needs a restart
        if not changed:
            return ""
        return f"changes to {', '.join(changed)} take effect after a restart"

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), then close the rest."""
        self.draining = True
        # Stop accepting client connections; the admin listener stays up so /ready reports 503.
        self.servers[0].close()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self.servers[1:]:
            server.close()
        for task in self._tasks:
            task.cancel()
        await self.runtime.close()
        await self.blocklist.stop()
        await self.revocations.stop()
        if self.identity is not None:
            await self.identity.close()
        if self.api_keys is not None:
            await self.api_keys.stop()
            await self.api_keys.store.engine.dispose()
        self.access_log.close()
        await self.emitter.close()  # after the last request: its events go out or to the spool


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


async def create_tables(engine: AsyncEngine, store: StoreConfig, config_file: Path) -> None:
    """Bring the API-key table to this release's schema (or check it, see store/startup.py). Gateway
    workers start together: the migration runner's lock lets one migrate and the others find it done."""
    await prepare_schema(engine, GATEWAY_SCHEMA, store, config_file=str(config_file))
