"""``garrison up``: every configured component as its own supervised process, on one machine.

Each component runs exactly as it would in production (``garrison gateway -c FILE``), so what
``up`` proves works is what gets deployed. The supervisor waits for each to report ready (its
ready file), prints where each listens, and on Ctrl-C or SIGTERM stops them all, gateway first.

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

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.core.restart import RestartPolicy
from garrison.telemetry import logging as log

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.1  # how often the supervisor looks at its processes and ready files


@dataclass
class Component:
    name: str
    argv: list[str]
    ready_file: Path | None = None
    probe: tuple[str, int] | None = None  # ready when this port accepts (for a process without a ready file)
    listeners: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restart_at: float | None = None  # dead, waiting out its back-off until then (policy clock)
    ready_by: float | None = None  # restarted, waiting for its ready file until then (policy clock)

    def start(self) -> None:
        if self.ready_file is not None:
            # The component writes it afresh once it listens: a stale one would announce it too early.
            self.ready_file.unlink(missing_ok=True)
        # Its own session: Ctrl-C at the terminal reaches `up` only, which stops components in order.
        self.process = subprocess.Popen(self.argv, start_new_session=True)
        self.policy.started()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        """One non-blocking look: has it announced itself (ready file) or opened its port?"""
        if self.ready_file is not None:
            try:
                ready = json.loads(self.ready_file.read_text())
            except (OSError, ValueError):
                return False  # not there yet, or caught half-written (identity writes it in place)
            self.listeners = ready.get("listeners") or {"identity": ready["identity"]}
            return True
        if self.probe is not None and _port_open(*self.probe):
            self.listeners = {"http": f"{self.probe[0]}:{self.probe[1]}"}
            return True
        return False

    def reap_leftovers(self) -> None:
        """Kill what the dead process left in its session (a gateway's `workers: N` children), so
        the restarted one does not share its port with orphans running an old configuration."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout: float = 35.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_ready(component: Component, stopping: Callable[[], bool]) -> None:
    """The first start: block until ready (components start in order, each needing the one before)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stopping():
        if not component.alive():
            code = component.process.returncode if component.process else None
            raise RuntimeError(f"{component.name} exited with code {code} while starting (see its log above)")
        if component.is_ready():
            return
        time.sleep(0.05)
    if not stopping():
        raise RuntimeError(f"{component.name} did not become ready within {READY_TIMEOUT:.0f}s")


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _exit_fields(code: int | None) -> dict[str, object]:
    """Popen's returncode as people read it: an exit status, or the signal that ended it."""
    if code is not None and code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"exit_code": code}


def _describe(listeners: dict[str, str]) -> str:
    return ", ".join(f"{name} {address}" for name, address in listeners.items())


def tend(component: Component, console: Console) -> None:
    """One supervision step for one component: notice a death, restart after the back-off, and
    announce the return once it is ready again. Never blocks, so every other component (and Ctrl-C)
    is looked after while one waits out its back-off or starts."""
    now = component.policy.clock()
    if component.restart_at is not None:
        if now >= component.restart_at:
            component.restart_at = None
            component.start()
            component.ready_by = now + READY_TIMEOUT
        return
    process = component.process
    if process is None:
        return
    if process.poll() is not None:
        component.reap_leftovers()
        component.ready_by = None
        delay = component.policy.next_delay()
        component.restart_at = now + delay
        exit_fields = _exit_fields(process.returncode)
        log.error("up.component.died", name=component.name, pid=process.pid, **exit_fields,
                  restart_in=delay, restarts=component.policy.restarts)  # fmt: skip
        how = ", ".join(f"{key} {value}" for key, value in exit_fields.items())
        console.print(
            f"[red]{component.name} (pid {process.pid}) died ({how}); restarting in {delay:g}s[/red]"
        )
        return
    if component.ready_by is None:
        return
    if component.is_ready():
        component.ready_by = None
        log.log("up.component.restarted", name=component.name, pid=process.pid,
                listeners=component.listeners, restarts=component.policy.restarts)  # fmt: skip
        console.print(
            f"[green]{component.name} is back[/green] (pid {process.pid}): {_describe(component.listeners)}"
        )
    elif now > component.ready_by:
        # Hung while starting: kill it, and the next step sees a death and backs off as for a crash.
        log.error("up.component.unready", name=component.name, pid=process.pid, timeout=READY_TIMEOUT)
        process.kill()
        process.wait()


def stop_all(components: list[Component], console: Console) -> None:
    """Ctrl-C / SIGTERM: cancel pending restarts, then stop what runs, the last started first."""
    for component in components:
        if component.restart_at is not None:
            # Stopping wins over a pending restart: the back-off simply never ends.
            component.restart_at = None
            log.log("up.component.restart_cancelled", name=component.name)
    with console.status("stopping…"):
        for component in reversed(components):  # the gateway first: it stops taking requests
            component.stop()
    console.print("stopped.")


def _demo_component(loaded: LoadedConfig) -> Component:
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
    return Component("demo upstream", argv, probe=(host, port))


def _garrison_component(command: str, loaded: LoadedConfig, run_dir: Path) -> Component:
    """``garrison COMMAND -c FILE --ready-file ...``, exactly as it runs in production."""
    ready = run_dir / f"up-{command}.ready"
    argv = [sys.executable, "-m", "garrison", command, "-c", str(loaded.source), "--ready-file", str(ready)]
    return Component(command, argv, ready_file=ready)


def _table(components: list[Component]) -> Table:
    table = Table(title="Garrison is up", title_justify="left")
    table.add_column("component")
    table.add_column("pid", justify="right")
    table.add_column("listeners")
    for component in components:
        pid = str(component.process.pid) if component.process else "-"
        table.add_row(component.name, pid, _describe(component.listeners))
    return table


def run_up(config_path: Path, demo: bool, console: Console) -> int:
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]cannot start[/red]:\n{exc}\nRun `garrison check -c {config_path}` for details.")
        return 2
    log.configure("up")
    run_dir = loaded.config.state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    components: list[Component] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if demo:
            upstream = _demo_component(loaded)
            components.append(upstream)
            upstream.start()
            with console.status("starting the demo upstream…"):
                _wait_ready(upstream, lambda: stopping)
        if loaded.config.identity is not None and not stopping:
            # Before the gateway: the gateway fetches the provider's JWKS before it serves.
            identity = _garrison_component("identity", loaded, run_dir)
            components.append(identity)
            identity.start()
            with console.status("starting the identity provider (keys and certificates on first run)…"):
                _wait_ready(identity, lambda: stopping)
        if stopping:
            return 0
        gateway = _garrison_component("gateway", loaded, run_dir)
        components.append(gateway)
        gateway.start()
        with console.status("starting the gateway (creating TLS certificates on first run)…"):
            _wait_ready(gateway, lambda: stopping)
        if stopping:
            return 0
        console.print(_table(components))
        if demo:
            from garrison import demo as demo_flows

            demo_flows.open_route(loaded.config, gateway.listeners["gateway"], console)
            demo_flows.protected_route(loaded.config, gateway.listeners["gateway"], console)
        console.print("\nPress Ctrl-C to stop.")
        while not stopping:
            for component in components:
                tend(component, console)
            time.sleep(POLL_INTERVAL)
        return 0
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        stop_all(components, console)
