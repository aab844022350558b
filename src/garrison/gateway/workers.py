"""``workers: N``: N gateway processes on one port, and a small supervisor above them.

Each worker binds the listening port itself with SO_REUSEPORT, so the kernel spreads new
connections over them with no hand-off through the supervisor. The supervisor owns what must
exist once: the admin listener (it gathers every worker's metrics over a private Unix socket and
labels them ``worker="i"``), the HTTPS redirect listener, signals (SIGHUP is passed on, SIGTERM
drains every worker), and restarting a worker that dies. The redirect listener's host names come
from the config, so the supervisor reloads them when the workers reload theirs (SIGHUP, and a
change of the file while ``watch_config`` is on).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from garrison.admin.api import AdminApi
from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.core.restart import RestartPolicy
from garrison.gateway.listeners import address_of, bind_socket, open_admin_listener
from garrison.gateway.redirect import HttpsRedirect
from garrison.gateway.server import WATCH_INTERVAL, WORKER_ENV, GatewayServer, create_tables, write_ready_file
from garrison.store.db import make_engine
from garrison.telemetry import logging as log
from garrison.telemetry.metrics import admin_denied_family
from garrison.web.simplehttp import SimpleHttpProtocol, SimpleRequest, SimpleResponse


class WorkerSupervisor:
    def __init__(self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.loaded = loaded
        self.loop = loop
        self.count = loaded.config.gateway.workers
        # A short private directory (0700) for the ready files and metrics sockets: a Unix socket
        # path must fit in 108 bytes, which a deep state_dir would not.
        self.run_dir = Path(tempfile.mkdtemp(prefix="garrison-gw-"))
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.admin_denied: dict[str, int] = {}  # the admin guard's refusals, by reason
        # Used for the redirect listener and the shared security headers; never serves the main port.
        self.shell = GatewayServer(loaded, loop)
        self._config_mtime = _mtime(loaded.source)
        gateway = loaded.config.gateway  # whether the listener exists is fixed until a restart
        self.serves_redirect = bool(gateway.redirect_http) and not gateway.tls.insecure_disable
        # The workers' admin API, answered here: reads are gathered from every worker, changes fanned out.
        self.admin_api = AdminApi(self.not_ready_reasons, self.gather_metrics)
        self.admin_api.register("/blocklist", self.fan_out)
        self.admin_api.register("/revocations", self.fan_out)

    def metrics_socket(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    async def spawn(self, index: int, listen: str) -> None:
        env = dict(os.environ, **{WORKER_ENV: f"{index}|{listen}|{self.run_dir}"})
        ready = self.run_dir / f"worker-{index}.ready"
        ready.unlink(missing_ok=True)
        self.processes[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "garrison", "gateway", "-c", str(self.loaded.source),
            "--ready-file", str(ready), env=env,
        )  # fmt: skip

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = self.loop.time() + timeout
        for index in range(self.count):
            ready = self.run_dir / f"worker-{index}.ready"
            while not ready.exists():
                process = self.processes[index]
                if process.returncode is not None:
                    raise RuntimeError(
                        f"gateway worker {index} exited with {process.returncode} while starting"
                    )
                if self.loop.time() > deadline:
                    raise RuntimeError(f"gateway worker {index} did not become ready in {timeout:.0f}s")
                await asyncio.sleep(0.05)

    async def watch(self, index: int, listen: str) -> None:
        """Restart a worker that dies, until the supervisor stops, on the back-off every Garrison
        supervisor shares (core/restart.py): 1 s, doubling to 30 s for a worker that keeps dying."""
        policy = RestartPolicy(clock=self.loop.time)  # the loop's clock is monotonic
        policy.started()  # spawned by _supervise just before this task
        while not self.stopping:
            process = self.processes[index]
            code = await process.wait()
            if self.stopping:
                return
            delay = policy.next_delay()
            log.error("gateway.worker.died", worker=index, exit_code=code, action="restarting",
                      restart_in=delay, restarts=policy.restarts)  # fmt: skip
            await asyncio.sleep(delay)
            if self.stopping:
                return  # SIGTERM came during the back-off: the restart is cancelled, not raced
            await self.spawn(index, listen)
            policy.started()

    def signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    def reload(self) -> None:
        """SIGHUP: every worker reloads; the redirect listener here takes the new host names."""
        self.signal_all(signal.SIGHUP)
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


async def supervise(loaded: LoadedConfig, ready_file: Path | None) -> int:
    supervisor = WorkerSupervisor(loaded, asyncio.get_running_loop())
    try:
        return await _supervise(supervisor, ready_file)
    finally:
        shutil.rmtree(supervisor.run_dir, ignore_errors=True)


async def _supervise(supervisor: WorkerSupervisor, ready_file: Path | None) -> int:
    loop = supervisor.loop
    gateway = supervisor.loaded.config.gateway
    if any(route.auth.require == "api_key" for route in supervisor.loaded.config.routes):
        # Create the API-key tables once, before the workers race to do it.
        engine = make_engine(gateway.api_keys.database, supervisor.loaded.config.state_dir)
        try:
            await create_tables(engine, supervisor.loaded.config.store, supervisor.loaded.source)
        finally:
            await engine.dispose()
    # Hold the port (bound, not listening) so port 0 resolves once and every worker shares it.
    reserved = bind_socket(gateway.listen, reuse_port=True)
    listen = address_of(reserved)
    supervisor.shell.https_port = reserved.getsockname()[1]
    for index in range(supervisor.count):
        await supervisor.spawn(index, listen)
    try:
        await supervisor.wait_ready()
    except RuntimeError as exc:
        log.error("gateway.workers.failed", message=str(exc))
        supervisor.stopping = True
        supervisor.signal_all(signal.SIGTERM)
        return 1
    admin_sock, guard, admin_tls = open_admin_listener(
        supervisor.loaded.config, supervisor.loaded.source, supervisor.admin_handler
    )
    supervisor.admin_denied = guard.denied
    admin = await loop.create_server(lambda: SimpleHttpProtocol(guard), sock=admin_sock, ssl=admin_tls)
    listeners = {"gateway": listen, "admin": address_of(admin_sock)}
    servers = [admin]
    if supervisor.serves_redirect and gateway.redirect_http:
        shell = supervisor.shell
        security = shell.runtime.security_headers + shell.runtime.referrer_policy_line
        redirect_sock = bind_socket(gateway.redirect_http, reuse_port=False)
        servers.append(
            await loop.create_server(
                lambda: SimpleHttpProtocol(shell.redirect_handler, security), sock=redirect_sock
            )
        )
        listeners["redirect"] = address_of(redirect_sock)
    watchers = [loop.create_task(supervisor.watch(i, listen)) for i in range(supervisor.count)]
    if supervisor.serves_redirect and gateway.watch_config:
        watchers.append(loop.create_task(supervisor.follow_config()))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
    log.log("gateway.listening", listeners=listeners, workers=supervisor.count, pid=os.getpid())
    write_ready_file(ready_file, listeners)
    await stop.wait()
    supervisor.stopping = True
    for server in servers:
        server.close()
    supervisor.signal_all(signal.SIGTERM)
    async with asyncio.timeout(gateway.drain_timeout + 5):
        await asyncio.gather(*(p.wait() for p in supervisor.processes.values()))
    for task in watchers:
        task.cancel()
    reserved.close()
    log.log("gateway.stopped")
    return 0


def run_workers(loaded: LoadedConfig, ready_file: Path | None) -> int:
    return uvloop.run(supervise(loaded, ready_file))
