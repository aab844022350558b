"""``workers: N``: N gateway processes on one port, and a small supervisor above them.

Each worker binds the listening port itself with SO_REUSEPORT, so the kernel spreads new
connections over them with no hand-off through the supervisor. The supervisor (a component run by
core/runner.py, its workers children of core/supervisor.py) owns what must exist once: the API-key
tables (created before the workers race to), the port itself (held bound so port 0 resolves once),
the admin listener (it gathers every worker's metrics over a private Unix socket and
labels them ``worker="i"``), the HTTPS redirect listener, signals (SIGHUP is passed on, SIGTERM
drains every worker), and restarting a worker that dies (``gateway.worker.died`` /
``gateway.worker.restarted``, on the back-off of core/restart.py). The redirect listener's host names come
from the config, so the supervisor reloads them when the workers reload theirs (SIGHUP, and a
change of the file while ``watch_config`` is on).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from garrison.admin.api import AdminApi
from garrison.admin.listener import admin_security_headers
from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.core.sockets import address_of, bind_socket
from garrison.core.supervisor import ChildSpec, Supervisor
from garrison.gateway.component import WORKER_ENV
from garrison.gateway.listeners import open_admin_listener
from garrison.gateway.redirect import HttpsRedirect
from garrison.gateway.server import WATCH_INTERVAL, GatewayServer, create_tables
from garrison.store.db import make_engine
from garrison.telemetry import logging as log
from garrison.telemetry.metrics import admin_denied_family
from garrison.web.simplehttp import SimpleHttpProtocol, SimpleRequest, SimpleResponse


class WorkerSupervisor:
    name = "gateway"

    def __init__(self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.loaded = loaded
        self.loop = loop
        self.count = loaded.config.gateway.workers
        # A short private directory (0700) for the ready files and metrics sockets: a Unix socket
        # path must fit in 108 bytes, which a deep state_dir would not.
        self.run_dir = Path(tempfile.mkdtemp(prefix="garrison-gw-"))
        # Workers stay in this process's session: whoever supervises the gateway kills them with it.
        grace = loaded.config.gateway.drain_timeout + 5
        self.workers = Supervisor("gateway.worker", grace=grace)
        self.stopping = False
        self.admin_denied: dict[str, int] = {}  # the admin guard's refusals, by reason
        # Used for the redirect listener and the shared security headers; never serves the main port.
        self.shell = GatewayServer(loaded, loop)
        self._config_mtime = _mtime(loaded.source)
        gateway = loaded.config.gateway  # whether the listener exists is fixed until a restart
        self.serves_redirect = bool(gateway.redirect_http) and not gateway.tls.insecure_disable
        self.servers: list[asyncio.Server] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.reserved: socket.socket | None = None
        # The workers' admin API, answered here: reads are gathered from every worker, changes fanned out.
        self.admin_api = AdminApi(self.not_ready_reasons, self.gather_metrics)
        self.admin_api.register("/blocklist", self.fan_out)
        self.admin_api.register("/revocations", self.fan_out)

    def metrics_socket(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    def worker_spec(self, index: int, listen: str) -> ChildSpec:
        env = dict(os.environ, **{WORKER_ENV: f"{index}|{listen}|{self.run_dir}"})
        argv = [sys.executable, "-m", "garrison", "gateway", "-c", str(self.loaded.source),
                "--ready-file", str(self.run_dir / f"worker-{index}.ready")]  # fmt: skip
        return ChildSpec(f"worker-{index}", argv, ready_file=self.run_dir / f"worker-{index}.ready",
                         env=env, own_session=False, fields={"worker": index})  # fmt: skip

    async def start(self) -> dict[str, str]:
        try:
            return await self._start()
        except BaseException:
            self.stopping = True
            await self.workers.stop(together=True)
            self._close()
            raise

    async def _start(self) -> dict[str, str]:
        config = self.loaded.config
        if any(route.auth.require == "api_key" for route in config.routes):
            # Create the API-key tables once, before the workers race to do it.
            engine = make_engine(config.gateway.api_keys.database, config.state_dir)
            try:
                await create_tables(engine, config.store, self.loaded.source)
            finally:
                await engine.dispose()
        if self.shell.identity is not None:
            # Join (or renew) once, here: the workers load the saved identity (gateway/mesh.py).
            await self.shell.identity.start()
            await self.shell.identity.close()
        # Hold the port (bound, not listening) so port 0 resolves once and every worker shares it.
        self.reserved = bind_socket(config.gateway.listen, reuse_port=True)
        listen = address_of(self.reserved)
        self.shell.https_port = self.reserved.getsockname()[1]
        workers = [self.workers.add(self.worker_spec(index, listen)) for index in range(self.count)]
        await self.workers.start(*workers)
        listeners = {"gateway": listen, **await self._side_listeners()}
        self.workers.supervise()
        if self.serves_redirect and config.gateway.watch_config:
            self.tasks.append(self.loop.create_task(self.follow_config()))
        log.log("gateway.listening", listeners=listeners, workers=self.count, pid=os.getpid())
        return listeners

    async def _side_listeners(self) -> dict[str, str]:
        config = self.loaded.config
        admin_sock, guard, admin_tls = open_admin_listener(config, self.loaded.source, self.admin_handler)
        self.admin_denied = guard.denied
        admin_headers = admin_security_headers(admin_tls is not None)  # as every admin listener
        self.servers.append(
            await self.loop.create_server(
                lambda: SimpleHttpProtocol(guard, admin_headers), sock=admin_sock, ssl=admin_tls
            )
        )
        listeners = {"admin": address_of(admin_sock)}
        if self.serves_redirect and config.gateway.redirect_http:
            shell = self.shell
            security = shell.runtime.security_headers + shell.runtime.referrer_policy_line
            redirect_sock = bind_socket(config.gateway.redirect_http)
            self.servers.append(
                await self.loop.create_server(
                    lambda: SimpleHttpProtocol(shell.redirect_handler, security), sock=redirect_sock
                )
            )
            listeners["redirect"] = address_of(redirect_sock)
        return listeners

    def details(self) -> dict[str, Any]:
        return {"workers": self.count}

    async def drain(self) -> None:
        """SIGTERM: every worker drains (SIGKILL after drain_timeout + 5 s), then the listeners close."""
        self.stopping = True
        for server in self.servers:
            server.close()
        await self.workers.stop(together=True)
        self._close()
        log.log("gateway.stopped")

    def _close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.reserved is not None:
            self.reserved.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def reload(self) -> None:
        """SIGHUP: every worker reloads; the redirect listener here takes the new host names."""
        self.workers.signal_all(signal.SIGHUP)
        if self.serves_redirect:
            self.reload_redirect()

    def reload_redirect(self) -> None:
        """A file that does not load keeps the names in use, as the workers keep their config."""
        self._config_mtime = _mtime(self.loaded.source)
        try:
            config = load_config(self.loaded.source).config
        except (ConfigError, ValueError, OSError):
            return  # the workers log why
        self.shell.runtime.redirect = HttpsRedirect.from_config(config)
        log.log("gateway.redirect.reloaded", public_host=config.gateway.public_host)

    async def follow_config(self) -> None:
        """With ``watch_config``, reload the redirect names when the file changes (the workers
        watch the same file for their own config)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if _mtime(self.loaded.source) != self._config_mtime:
                self.reload_redirect()

    async def admin_handler(self, request: SimpleRequest) -> SimpleResponse:
        response = self.admin_api(request)
        return response if isinstance(response, SimpleResponse) else await response

    async def not_ready_reasons(self) -> list[str]:
        """Every worker's own reasons: the kernel spreads connections over all of them, so the port is
        ready only when each worker is (one without keys would refuse its share of JWT requests)."""
        if self.stopping:
            return ["draining"]
        answers = await asyncio.gather(*(self._ask(i, b"GET", b"/ready") for i in range(self.count)))
        return [
            f"worker {index}: {_worker_reason(body)}"
            for index, (status, body) in enumerate(answers)
            if status != 200
        ]

    async def fan_out(self, request: SimpleRequest) -> SimpleResponse:
        """Apply an admin request to every worker (each may hold its own in-memory blocklist and
        revocations)."""
        answers = await asyncio.gather(
            *(self._ask(i, request.method, request.target) for i in range(self.count))
        )
        worst = max(answers, key=lambda answer: answer[0])  # a failure anywhere is reported
        status, body = worst
        return SimpleResponse(status, body, b"application/json")

    async def _ask(self, index: int, method: bytes, target: bytes) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(5.0):
                reader, writer = await asyncio.open_unix_connection(str(self.metrics_socket(index)))
                writer.write(b"%s %s HTTP/1.1\r\nHost: worker\r\n\r\n" % (method, target))
                data = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return 503, b'{"error":"a gateway worker did not answer"}\n'
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
        return status, body

    async def gather_metrics(self) -> bytes:
        texts = await asyncio.gather(*(self._fetch(i) for i in range(self.count)))
        # The guard runs here, in front of the workers: its refusals are the supervisor's own.
        return merge_worker_metrics(texts, [admin_denied_family(self.admin_denied)])

    async def _fetch(self, index: int) -> str:
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_unix_connection(str(self.metrics_socket(index)))
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\n\r\n")
                data = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return ""
        _, _, body = data.partition(b"\r\n\r\n")
        return body.decode("utf-8", "replace")


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _worker_reason(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("not ready: "):
        return text.removeprefix("not ready: ")
    return "did not answer"  # dead, hung, or restarting: its socket gave no readiness answer


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge_worker_metrics(texts: list[str], own: Sequence[Metric] = ()) -> bytes:
    """One exposition from many workers' expositions, each sample labelled with its worker, and the
    supervisor's ``own`` families (names no worker exposes) as they are."""
    merged: dict[str, Metric] = {family.name: family for family in own}
    for index, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                target.add_sample(sample.name, {**sample.labels, "worker": str(index)}, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(merged.values())))
    return generate_latest(registry)
