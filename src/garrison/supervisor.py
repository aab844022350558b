"""``garrison up``: every configured component as its own supervised process, on one machine.

Each component runs exactly as it would in production (``garrison gateway -c FILE``), so what
``up`` proves works is what gets deployed. The supervisor waits for each to report ready (its
ready file), prints where each listens, and on Ctrl-C or SIGTERM stops them all, gateway first.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from garrison.config.loader import ConfigError, LoadedConfig, load_config

READY_TIMEOUT = 30.0


@dataclass
class Component:
    name: str
    argv: list[str]
    ready_file: Path | None = None
    listeners: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.argv, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

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


def _wait_ready(component: Component, probe: tuple[str, int] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not component.alive():
            code = component.process.returncode if component.process else None
            raise RuntimeError(f"{component.name} exited with code {code} while starting (see its log above)")
        if component.ready_file is not None and component.ready_file.exists():
            ready = json.loads(component.ready_file.read_text())
            component.listeners = ready.get("listeners") or {"identity": ready["identity"]}
            return
        if probe is not None and _port_open(*probe):
            component.listeners = {"http": f"{probe[0]}:{probe[1]}"}
            return
        time.sleep(0.05)
    raise RuntimeError(f"{component.name} did not become ready within {READY_TIMEOUT:.0f}s")


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _demo_component(loaded: LoadedConfig) -> tuple[Component, tuple[str, int]]:
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
    return Component("demo upstream", argv), (host, port)


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
        listeners = ", ".join(f"{name} {address}" for name, address in component.listeners.items())
        table.add_row(component.name, pid, listeners)
    return table


def run_up(config_path: Path, demo: bool, console: Console) -> int:
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]cannot start[/red]:\n{exc}\nRun `garrison check -c {config_path}` for details.")
        return 2
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
            upstream, probe = _demo_component(loaded)
            components.append(upstream)
            upstream.start()
            with console.status("starting the demo upstream…"):
                _wait_ready(upstream, probe)
        if loaded.config.identity is not None:
            # Before the gateway: the gateway fetches the provider's JWKS before it serves.
            identity = _garrison_component("identity", loaded, run_dir)
            components.append(identity)
            identity.start()
            with console.status("starting the identity provider (keys and certificates on first run)…"):
                _wait_ready(identity)
        gateway = _garrison_component("gateway", loaded, run_dir)
        components.append(gateway)
        gateway.start()
        with console.status("starting the gateway (creating TLS certificates on first run)…"):
            _wait_ready(gateway)
        console.print(_table(components))
        if demo:
            from garrison import demo as demo_flows

            demo_flows.open_route(loaded.config, gateway.listeners["gateway"], console)
            demo_flows.protected_route(loaded.config, gateway.listeners["gateway"], console)
        console.print("\nPress Ctrl-C to stop.")
        while not stopping:
            for component in components:
                if not component.alive():
                    console.print(f"[red]{component.name} stopped unexpectedly; stopping the rest[/red]")
                    return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        with console.status("stopping…"):
            for component in reversed(components):
                component.stop()
        console.print("stopped.")
