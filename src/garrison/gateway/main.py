"""``garrison gateway``: one process, or a supervisor of N workers sharing the port."""

from __future__ import annotations

from pathlib import Path

import uvloop

from garrison.config.loader import load_config
from garrison.gateway.server import serve, worker_settings
from garrison.telemetry import logging as log


def run(config_path: str, ready_file: str | None = None) -> int:
    log.configure("gateway")
    loaded = load_config(config_path)
    ready = Path(ready_file) if ready_file else None
    if loaded.config.gateway.workers > 1 and worker_settings() is None:
        from garrison.gateway.workers import run_workers

        return run_workers(loaded, ready)
    code: int = uvloop.run(serve(loaded, ready))
    return code
