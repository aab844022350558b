"""``garrison up``: every configured component as its own supervised process, on one machine.

Each component runs exactly as it would in production (``garrison gateway -c FILE``), so what
``up`` proves works is what gets deployed. This module is the thin layer above the one supervisor
(core/supervisor.py, which the gateway's ``workers: N`` uses too): it builds the list of components
from the config (the demo upstream, the identity provider, then the gateway, which fetches the
provider's keys before it serves), starts them in that order, waits for each ready file (core/ready.py),
prints where each listens, and on Ctrl-C or SIGTERM stops them all, the gateway first (SIGTERM, then
SIGKILL after a grace period).

A component that dies after it was up is restarted on its own, after a back-off
(core/restart.py: 1 s, doubling to 30 s, reset after 60 s up), while the others keep running: the
gateway keeps serving open routes and tokens it can verify with the keys it holds while the
identity provider comes back. Each death is logged as ``up.component.died`` (exit code or signal,
``restart_in``, ``restarts``) and each return as ``up.component.restarted`` (where it listens). A
component that keeps crashing is retried every 30 s for as long as ``up`` runs, one pair of log lines
per attempt; it is never given up on silently. A component that fails during the first start stops
``up`` instead: that is almost always a configuration error, which a restart would only repeat.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.core.runner import StartFailed
from garrison.core.supervisor import Child, ChildSpec, Supervisor
from garrison.telemetry import logging as log


def _demo_component(loaded: LoadedConfig) -> ChildSpec:
    script = loaded.source.parent / "demo_upstream.py"
    if not script.exists():
        raise RuntimeError(f"--demo needs {script} (the demo service ships in the repository's examples/)")
    service = loaded.config.services.get("demo")
    if service is None:
        raise RuntimeError("--demo needs a service named `demo` in the config (see examples/garrison.yaml)")
    from urllib.parse import urlsplit

    target = urlsplit(service.targets[0])
    host, port = target.hostname or "127.0.0.1", target.port or 80
    argv = [sys.executable, str(script), "--host", host, "--port", str(port)]
    return ChildSpec("demo upstream", argv, probe=(host, port))


def _garrison_component(command: str, loaded: LoadedConfig, run_dir: Path) -> ChildSpec:
    """``garrison COMMAND -c FILE --ready-file ...``, exactly as it runs in production."""
    ready = run_dir / f"up-{command}.ready"
    argv = [sys.executable, "-m", "garrison", command, "-c", str(loaded.source), "--ready-file", str(ready)]
    return ChildSpec(command, argv, ready_file=ready)


def _describe(listeners: dict[str, str]) -> str:
    return ", ".join(f"{name} {address}" for name, address in listeners.items())


def _table(children: list[Child]) -> Table:
    table = Table(title="Garrison is up", title_justify="left")
    table.add_column("component")
    table.add_column("pid", justify="right")
    table.add_column("listeners")
    for child in children:
        table.add_row(child.name, str(child.pid or "-"), _describe(child.listeners))
    return table


def build_components(loaded: LoadedConfig, demo: bool, run_dir: Path) -> list[ChildSpec]:
    """What ``up`` runs, in start order: each needs the one before it."""
    specs = [_demo_component(loaded)] if demo else []
    if loaded.config.identity is not None:
        specs.append(_garrison_component("identity", loaded, run_dir))
    specs.append(_garrison_component("gateway", loaded, run_dir))
    return specs


STARTING = {
    "demo upstream": "starting the demo upstream…",
    "identity": "starting the identity provider (keys and certificates on first run)…",
    "gateway": "starting the gateway (creating TLS certificates on first run)…",
}


def console_supervisor(console: Console) -> Supervisor:
    """The supervisor of ``up``, telling the terminal about deaths and returns as well as the log."""

    def died(child: Child, fields: dict[str, object]) -> None:
        how = ", ".join(f"{key} {value}" for key, value in fields.items() if key != "restart_in")
        delay = fields["restart_in"]
        console.print(f"[red]{child.name} (pid {child.pid}) died ({how}); restarting in {delay:g}s[/red]")

    def back(child: Child, fields: dict[str, object]) -> None:
        console.print(f"[green]{child.name} is back[/green] (pid {child.pid}): {_describe(child.listeners)}")

    return Supervisor("up.component", on_died=died, on_restarted=back)


def run_up(config_path: Path, demo: bool, console: Console) -> int:
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]cannot start[/red]:\n{exc}\nRun `garrison check -c {config_path}` for details.")
        return 2
    log.configure("up")
    run_dir = loaded.config.state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        specs = build_components(loaded, demo, run_dir)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    return asyncio.run(_up(loaded, specs, demo, console))


async def _up(loaded: LoadedConfig, specs: list[ChildSpec], demo: bool, console: Console) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    supervisor = console_supervisor(console)
    try:
        for spec in specs:
            child = supervisor.add(spec)
            with console.status(STARTING.get(spec.name, f"starting {spec.name}…")):
                if not await _unless_stopped(supervisor.start(child), stop):
                    return 0
        console.print(_table(supervisor.children))
        if demo:
            from garrison import demo as demo_flows

            gateway = supervisor.children[-1].listeners["gateway"]
            # They run their own event loop (asyncio.run): a thread of their own, while this one waits.
            await asyncio.to_thread(demo_flows.open_route, loaded.config, gateway, console)
            await asyncio.to_thread(demo_flows.protected_route, loaded.config, gateway, console)
        console.print("\nPress Ctrl-C to stop.")
        supervisor.supervise()
        await stop.wait()
        return 0
    except StartFailed as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        with console.status("stopping…"):
            await supervisor.stop()
        console.print("stopped.")


async def _unless_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``starting`` unless Ctrl-C/SIGTERM comes first (then cancel it): whether it finished."""
    task = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()  # StartFailed, raised here
    return True
