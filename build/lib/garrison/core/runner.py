"""Running one component process: start, announce, serve until told to stop, drain.

Every component (``garrison gateway``, ``garrison identity``, and those to come) runs through
``run_component``, so all of them behave the same under a supervisor, systemd or a terminal:

- ``start()`` binds and serves and returns the listeners; then the ready file is written
  (core/ready.py). A start that raises ends the process with ``StartFailed: ...`` on stderr, the
  ``<name>.start_failed`` log line and exit code 2 (a supervisor stops on a first-start failure).
- SIGTERM or SIGINT: ``drain()`` (stop accepting, finish what is in flight), then exit 0.
- SIGHUP: ``reload()``. A component that cannot reload raises ``ReloadUnsupported`` and the runner
  logs ``<name>.reload.unsupported``: a stray SIGHUP never kills a process.
- Started by a Garrison supervisor: SIGTERM when that supervisor dies, however it died (core/parent.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, Protocol

from garrison.core.parent import end_with_supervisor
from garrison.core.ready import Ready, write_ready
from garrison.telemetry import logging as log

__all__ = ["EXIT_START_FAILED", "Component", "ReloadUnsupported", "StartFailed", "run_component"]

EXIT_START_FAILED = 2  # as for a configuration error: restarting it would only fail the same way


class StartFailed(Exception):
    """A component could not start (a port in use, an unreadable certificate, a database down)."""


class ReloadUnsupported(Exception):
    """Raised by ``Component.reload`` of a component that reloads nothing."""


class Component(Protocol):
    """What a component process is to the runner."""

    name: str  # "gateway", "identity": the ready file's `component` and the log events' prefix

    async def start(self) -> dict[str, str]:
        """Bind and serve; return listener name -> bound address."""

    def details(self) -> dict[str, Any]:
        """What the ready file adds to the listeners (may be empty)."""

    async def drain(self) -> None:
        """Stop accepting, finish or close what is in flight, release everything."""

    async def reload(self) -> None:
        """Take the configuration again (SIGHUP), or raise ReloadUnsupported."""


async def run_component(component: Component, ready_file: Path | None = None) -> int:
    """Run ``component`` until SIGTERM/SIGINT; the process's exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def on_reload() -> None:
        task = loop.create_task(_reload(component))
        reloads.add(task)  # held: the loop keeps only a weak reference to a task
        task.add_done_callback(reloads.discard)

    # Installed before start(): a SIGTERM during a slow start drains as soon as it has started.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    end_with_supervisor()  # after the handlers: a supervisor already gone means a clean drain
    try:
        try:
            listeners = await component.start()
        except Exception as exc:  # whatever it was, the process cannot serve: say what, exit non-zero
            failure = StartFailed(f"{component.name} could not start: {exc}")
            log.error(f"{component.name}.start_failed", message=str(failure), error=type(exc).__name__)
            sys.stderr.write(f"StartFailed: {failure}\n")
            return EXIT_START_FAILED
        if ready_file is not None:
            write_ready(ready_file, Ready(component.name, os.getpid(), listeners, component.details()))
        await stop.wait()
        await component.drain()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _reload(component: Component) -> None:
    try:
        await component.reload()
    except ReloadUnsupported:
        log.warn(f"{component.name}.reload.unsupported", message="SIGHUP ignored: restart to reconfigure")
    except Exception as exc:  # a failed reload keeps the running configuration, and the process
        log.error(f"{component.name}.reload.failed", problems=[str(exc)])
