"""`garrison audit serve`: the collector as a component of the core (core/runner.py).

Start, in this order, so that nothing is acknowledged before everything behind it works: the emit
token (``state_dir/audit/emit.token``, 0600, created once), the log (``state_dir/audit/log``,
recovered after a crash), the search index (migrated, then caught up from its highest seq to the
log's end), the recent-id window (rebuilt from the log's tail), the setup hooks (detection and
responses, audit/wiring.py, add a stage and admin sub-APIs; shipping adds background tasks), then the
intake listener (TLS by default) and the admin listener (``/live``, ``/ready``, ``/metrics``, and
what the hooks registered).

SIGTERM drains: the intake stops accepting, idle connections close, requests in flight are answered
(their appends finish), the stages get every durable batch, a last checkpoint is written, the log
and the index close.

Extension points (set before ``start``, by whoever builds the component): ``stages`` (AfterCommit,
after the index), ``background`` (tasks given the LogReader: shippers), ``setup`` (hooks called
with the component once the log is open: ``component.append`` is the Appender for the collector's own
events, ``component.admin_api.register(prefix, handler)`` adds admin sub-APIs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.admin.api import AdminApi
from garrison.admin.auth import AdminTokenError, admin_token_path, load_or_create_admin_token
from garrison.admin.listener import AdminListener, start_admin_listener
from garrison.audit.checkpoints import Checkpointer
from garrison.audit.collector import Collector
from garrison.audit.feeder import StageFeeder
from garrison.audit.index import EventIndex, index_engine
from garrison.audit.intake import IntakeServer
from garrison.audit.log import EventLog
from garrison.audit.metrics import CollectorMetrics
from garrison.audit.migrations import SCHEMA
from garrison.audit.paths import AuditPaths
from garrison.audit.pipeline import AfterCommit, LoggedEvent, LogReader
from garrison.audit.recent import RecentIds
from garrison.config.loader import LoadedConfig
from garrison.core.runner import ReloadUnsupported, StartFailed, run_component
from garrison.core.sockets import address_of, bind_socket
from garrison.events.schema import Event
from garrison.pki.listener_tls import ListenerTls
from garrison.pki.tls import CaIssuer, resolve_certificate
from garrison.store.startup import prepare_schema
from garrison.telemetry import logging as log

__all__ = ["AuditComponent", "emit_token_path", "serve"]

DRAIN_TIMEOUT = 10.0
STAGES_TIMEOUT = 30.0
BUNDLE_CHECK_INTERVAL = 1.0
BACKLOG = 1024

Background = Callable[[LogReader], Awaitable[None]]
Setup = Callable[["AuditComponent"], Awaitable[None]]


def emit_token_path(state_dir: Path) -> Path:
    return state_dir / "audit" / "emit.token"


class AuditComponent:
    name = "audit"

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = CollectorMetrics(self.registry)
        self.admin_api = AdminApi(self._not_ready, self.registry)
        self.stages: list[AfterCommit] = []  # the index goes first at start
        self.background: list[Background] = []
        self.setup: list[Setup] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []  # at drain, after the stages' last batch
        self.log: EventLog | None = None
        self.checkpointer: Checkpointer | None = None
        self.engine: AsyncEngine | None = None
        self.index: EventIndex | None = None
        self.feeder: StageFeeder | None = None
        self.collector: Collector | None = None
        self.intake: IntakeServer | None = None
        self.server: asyncio.Server | None = None
        self.admin: AdminListener | None = None
        self.tls: ListenerTls | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.draining = False

    # -- start -----------------------------------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        config = self.loaded.config
        audit = config.audit
        if audit is None:
            raise StartFailed("garrison.yaml has no `audit` section")
        (config.state_dir / "audit").mkdir(mode=0o700, parents=True, exist_ok=True)
        token = load_or_create_admin_token(emit_token_path(config.state_dir))
        try:
            await self._open_log()
            collector = await self._open_pipeline()
            for hook in self.setup:
                await hook(self)
            self.tls = self._tls()
            listeners = {"audit": await self._listen(collector, token)}
        except BaseException:
            await self._close_stores()
            raise
        self.admin = await self._start_admin()
        if self.admin is not None:
            listeners["admin"] = self.admin.address
        self._start_tasks()
        log.log(
            "audit.listening",
            address=listeners["audit"],
            log_entries=self._log().size(),
            tls=self.tls is not None,
        )
        return listeners

    async def _open_log(self) -> None:
        config = self.loaded.config
        assert config.audit is not None
        paths = AuditPaths.for_state_dir(config.state_dir)
        self.log = await EventLog.open(paths.log)
        self.metrics.entries.set(self.log.size())
        self.checkpointer = await Checkpointer.open(
            self.log, paths.log, paths.checkpoint_key, config.audit.checkpoint_interval
        )

    async def _open_pipeline(self) -> Collector:
        config = self.loaded.config
        self.engine = index_engine(config)
        await prepare_schema(self.engine, SCHEMA, config.store, config_file=str(self.loaded.source))
        index = self.index = EventIndex(self.engine, self._log())
        await index.load_position()
        caught_up = await index.catch_up()
        if caught_up:
            log.log("audit.index.caught_up", entries=caught_up)
        self.stages.insert(0, index)
        feeder = self.feeder = StageFeeder(self.stages, self._log().size())
        self.metrics.watch_stages(lambda: feeder.through, lambda: feeder.backlog)
        collector = self.collector = Collector(self._log(), self.metrics, self.feeder, RecentIds())
        await collector.remember_tail()
        return collector

    def _tls(self) -> ListenerTls | None:
        config = self.loaded.config
        assert config.audit is not None
        tls = config.audit.tls
        if tls.insecure_disable:
            log.warn(
                "audit.tls.disabled",
                message="TLS is OFF: the emit token and every event cross the network in clear, and no "
                "workload certificate can authenticate an emitter",
            )
            return None
        ca = CaIssuer.for_config(config, "audit")
        cert, key = resolve_certificate(tls, config.state_dir / "audit", self.loaded.source.parent, ca)
        return ListenerTls(cert, key, tls.min_version, config.state_dir / "ca" / "bundle.pem", "audit")

    async def _listen(self, collector: Collector, token: str) -> str:
        config = self.loaded.config
        assert config.audit is not None
        intake = self.intake = IntakeServer(collector, self.metrics, config.trust_domain, token)
        sock = bind_socket(config.audit.listen)
        try:
            self.server = await asyncio.get_running_loop().create_server(
                intake.protocol,
                sock=sock,
                ssl=self.tls.listening if self.tls is not None else None,
                backlog=BACKLOG,
            )
        except BaseException:
            sock.close()
            raise
        return address_of(sock)

    async def _start_admin(self) -> AdminListener | None:
        config = self.loaded.config
        assert config.audit is not None
        settings = config.audit.admin
        token_path = Path(settings.token_file) if settings.token_file else admin_token_path(config)
        try:
            listener = await start_admin_listener(
                settings, token_path, self.loaded.source.parent, self.admin_api
            )
        except (OSError, AdminTokenError) as exc:
            log.error("audit.admin.unavailable", listen=settings.listen, error=str(exc))
            return None
        return listener

    def _start_tasks(self) -> None:
        assert self.feeder is not None
        self.feeder.start()
        if self.tls is not None:
            self.tasks.append(asyncio.create_task(_follow_bundle(self.tls), name="audit-bundle"))
        self.tasks.append(asyncio.create_task(self._checkpoints(), name="audit-checkpoints"))
        for number, task in enumerate(self.background):
            self.tasks.append(
                asyncio.create_task(_guarded(task(self._log())), name=f"audit-background-{number}")
            )

    async def _checkpoints(self) -> None:
        """A signed checkpoint at most ``checkpoint_interval`` after entries arrive (the Checkpointer
        decides; this only asks it often enough)."""
        assert self.checkpointer is not None
        while True:
            await asyncio.sleep(min(1.0, self.checkpointer.interval))
            await self._checkpoint(self.checkpointer.maybe_checkpoint)

    async def _checkpoint(self, how: Callable[[], Awaitable[object]]) -> None:
        try:
            if await how() is not None:
                self.metrics.checkpoints.inc()
        except Exception as exc:  # a key or disk problem: said, and the next interval tries again
            log.error("audit.checkpoint.failed", error=type(exc).__name__, message=str(exc)[:200])

    def _log(self) -> EventLog:
        assert self.log is not None
        return self.log

    # -- the collector's own events, readiness ---------------------------------------------------------

    async def append(self, events: list[Event]) -> list[LoggedEvent]:
        """The Appender (audit/pipeline.py): the collector's own events, durable on return."""
        assert self.collector is not None
        return await self.collector.append(events)

    async def _not_ready(self) -> list[str]:
        reasons = []
        if self.draining:
            reasons.append("draining")
        if self.collector is not None and self.collector.last_failure is not None:
            reasons.append(self.collector.last_failure)
        if self.index is not None and self.index.failing is not None:
            reasons.append(self.index.failing)
        return reasons

    def details(self) -> dict[str, Any]:
        return {"log_entries": self.log.size() if self.log is not None else 0}

    async def reload(self) -> None:
        raise ReloadUnsupported

    # -- drain -----------------------------------------------------------------------------------------

    async def drain(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()  # no new connections
        if self.intake is not None:
            await self.intake.drain(DRAIN_TIMEOUT)  # requests in flight answered, their appends done
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.feeder is not None:
            try:
                await asyncio.wait_for(self.feeder.flush(), STAGES_TIMEOUT)
            except TimeoutError:
                log.warn("audit.stages.unfinished", backlog=self.feeder.backlog)
            await self.feeder.close()
        for close in self.closers:  # their last events (responses) are appended before the checkpoint
            try:
                await close()
            except Exception as exc:
                log.error("audit.close.failed", error=type(exc).__name__, message=str(exc)[:200])
        if self.checkpointer is not None:
            await self._checkpoint(self.checkpointer.checkpoint)  # the head at exit is signed
        if self.admin is not None:
            await self.admin.close()
        size = self.log.size() if self.log is not None else 0
        await self._close_stores()
        log.log("audit.stopped", log_entries=size)

    async def _close_stores(self) -> None:
        if self.log is not None:
            await self.log.close()
        if self.engine is not None:
            await self.engine.dispose()


async def _guarded(work: Awaitable[None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a shipper's bug must not end the collector; it says so once
        log.error("audit.background.failed", error=type(exc).__name__, message=str(exc)[:200])


async def _follow_bundle(tls: ListenerTls) -> None:
    """The trust bundle checked every second: a mesh root rotation reaches the intake without a restart."""
    while True:
        await asyncio.sleep(BUNDLE_CHECK_INTERVAL)
        tls.refresh()


async def serve(loaded: LoadedConfig, ready_file: Path | None) -> int:
    """Run the collector until SIGTERM/SIGINT (core/runner.py)."""
    from garrison.audit.wiring import install_detection

    component = AuditComponent(loaded)
    component.setup.append(install_detection)
    audit = loaded.config.audit
    if audit is not None and audit.shipping.shippers:  # httpx and the shippers only when configured
        from garrison.audit.ship.service import install as install_shipping

        component.setup.append(install_shipping)
    return await run_component(component, ready_file)
