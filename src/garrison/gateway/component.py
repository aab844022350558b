"""The gateway as a component of the core (core/runner.py): one process, or one worker of ``workers: N``.

A worker is told so by the supervisor (``gateway/workers.py``) through ``GARRISON_GATEWAY_WORKER``: it
binds the shared port with SO_REUSEPORT, leaves the admin and redirect listeners to the supervisor, and
answers the supervisor's metrics scrape on a unix socket in the run directory.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from garrison.config.loader import LoadedConfig
from garrison.core.sockets import bind_socket
from garrison.gateway.server import GatewayServer
from garrison.telemetry import logging as log
from garrison.web.simplehttp import SimpleHttpProtocol

WORKER_ENV = "GARRISON_GATEWAY_WORKER"  # "index|listen-address|run-dir", set by the worker supervisor only


def worker_settings() -> tuple[int, str, Path] | None:
    """(index, listen address, run dir) when this process is a worker started by the supervisor."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    index, listen, run_dir = value.split("|", 2)
    return int(index), listen, Path(run_dir)


class GatewayComponent:
    """One gateway process (or one worker under ``workers: N``), run by core/runner.py: SIGHUP
    reloads, SIGTERM drains."""

    name = "gateway"

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.server: GatewayServer | None = None

    async def start(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        gateway = self.loaded.config.gateway
        for warning in self.loaded.warnings:
            log.warn("config.warning", problem=warning.render(str(self.loaded.source)))
        worker = worker_settings()
        host = socket.gethostname()
        # A stable name (its spool survives a restart): the host, and the worker's index under workers: N.
        instance = host if worker is None else f"{host}:w{worker[0]}"
        server = self.server = GatewayServer(self.loaded, loop, audit_instance=instance)
        if worker is None:
            listeners = await server.start(bind_socket(gateway.listen, reuse_port=gateway.workers > 1))
        else:
            # A worker under `workers: N`: the supervisor owns the admin and redirect listeners.
            index, listen, run_dir = worker
            listeners = await server.start(bind_socket(listen, reuse_port=True), with_side_listeners=False)
            metrics_path = run_dir / f"worker-{index}.sock"
            metrics_path.unlink(missing_ok=True)
            server.servers.append(
                await loop.create_unix_server(
                    lambda: SimpleHttpProtocol(server.admin_handler), str(metrics_path)
                )
            )
        log.log("gateway.listening", listeners=listeners, pid=os.getpid())
        return listeners

    def details(self) -> dict[str, Any]:
        return {}

    async def reload(self) -> None:
        assert self.server is not None
        await self.server.reload("SIGHUP")  # a failure is logged there; the old config keeps serving

    async def drain(self) -> None:
        assert self.server is not None
        timeout = self.loaded.config.gateway.drain_timeout
        log.log("gateway.draining", timeout=timeout)
        await self.server.drain(timeout)
        log.log("gateway.stopped")
