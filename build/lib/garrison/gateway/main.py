"""``garrison gateway``: one process, or a supervisor of N workers sharing the port; either way a
component run by core/runner.py (ready file, SIGHUP reloads, SIGTERM drains, exit 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from garrison.config.loader import LoadedConfig, load_config
from garrison.core.runner import run_component
from garrison.gateway.component import GatewayComponent, worker_settings
from garrison.telemetry import logging as log


def run(config_path: str, ready_file: str | None = None) -> int:
    log.configure("gateway")
    loaded = load_config(config_path)
    code: int = uvloop.run(_run(loaded, Path(ready_file) if ready_file else None))
    return code


async def _run(loaded: LoadedConfig, ready_file: Path | None) -> int:
    if loaded.config.gateway.workers > 1 and worker_settings() is None:
        from garrison.gateway.workers import WorkerSupervisor

        return await run_component(WorkerSupervisor(loaded, asyncio.get_running_loop()), ready_file)
    return await run_component(GatewayComponent(loaded), ready_file)
