"""``garrison up``: every configured component as its own supervised process, on one machine.

Each component runs exactly as it would in production (``garrison gateway -c FILE``), so what
``up`` proves works is what gets deployed. This module is the thin layer above the one supervisor
(core/supervisor.py, which the gateway's ``workers: N`` uses too): it builds the list of components
from the config (with a ``mesh`` section: the workload CA, then a sidecar per service; with a
``audit`` section, the audit collector, before the components that send it events; with a
``vault`` section, the vault, before any app that reads its secrets; then the demo upstream and apps,
the identity provider, then the gateway, which fetches the provider's keys before it serves), starts
them in that order, waits for each ready file (core/ready.py),
prints where each listens (with ``--demo``, runs the demo's steps: demo.py, demo_vault.py, and last
demo_attack.py's attack, which the audit collector detects and answers), and on Ctrl-C or SIGTERM
stops them all in reverse order, the gateway first (SIGTERM, then SIGKILL after a grace period).

The mesh: ``up`` creates a CA under ``state_dir/ca`` if there is none (saying so: production runs
``garrison ca init --offline-root``). Before each start of a sidecar, it mints a short-lived join
token only when the sidecar has no usable saved identity (``state_dir/sidecars/<service>``): a
restarted sidecar renews from the identity it kept, and one whose certificate lapsed gets a new
token. The gateway gets a token for ``spiffe://<td>/gateway`` at each start; the vault one for
``spiffe://<td>/vault`` when it has no usable identity (``state_dir/vault/identity``), and so do
the demo apps that log in to the vault (``state_dir/apps/<service>``). Tokens travel in the
child's environment (``GARRISON_JOIN_TOKEN``), never on a command line or in a log line.

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
import datetime as dt
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from garrison.config.loader import ConfigError, LoadedConfig, load_config
from garrison.core.ready import read_ready
from garrison.core.runner import StartFailed
from garrison.core.supervisor import Child, ChildSpec, Supervisor
from garrison.mesh.enrolment import (
    EnrolmentError,
    ensure_ca,
    identity_usable,
    mint_join_token,
    sidecar_directory,
)
from garrison.pki.authority import trust_domain_id
from garrison.pki.workload import JOIN_TOKEN_ENV
from garrison.telemetry import logging as log

JOIN_TOKEN_TTL = dt.timedelta(minutes=5)  # spent within seconds of being minted; short if it leaks
MESH_APPS = ("orders", "payments")  # the demo's services with an app of their own (examples/demo_mesh_app.py)


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


def _garrison_component(
    command: str, loaded: LoadedConfig, run_dir: Path, *args: str, name: str | None = None
) -> ChildSpec:
    """``garrison COMMAND ARGS -c FILE --ready-file ...``, exactly as it runs in production."""
    name = name or command
    ready = run_dir / f"up-{name.replace(' ', '-')}.ready"
    argv = [sys.executable, "-m", "garrison", command, *args, "-c", str(loaded.source)]
    return ChildSpec(name, [*argv, "--ready-file", str(ready)], ready_file=ready)


def _environment(token: str | None) -> dict[str, str]:
    """up's environment for a child, with ``token`` as its join token (and never up's own)."""
    env = {key: value for key, value in os.environ.items() if key != JOIN_TOKEN_ENV}
    return env | ({JOIN_TOKEN_ENV: token} if token is not None else {})


async def _token_for(loaded: LoadedConfig, spec: ChildSpec, named: dict[str, str]) -> str | None:
    """A fresh join token for ``named``; None (and the reason logged) when the CA did not mint one."""
    try:
        token = await asyncio.to_thread(mint_join_token, loaded, named, JOIN_TOKEN_TTL)
    except EnrolmentError as exc:
        log.error("up.join_token.failed", name=spec.name, message=str(exc), **named)
        return None
    log.log("up.join_token.minted", name=spec.name, ttl=JOIN_TOKEN_TTL.total_seconds(), **named)
    return token


def _sidecar_component(loaded: LoadedConfig, run_dir: Path, service: str) -> ChildSpec:
    """``garrison sidecar --service SERVICE``, with a join token only when it has no usable identity."""
    spec = _garrison_component("sidecar", loaded, run_dir, "--service", service, name=f"sidecar {service}")
    directory = sidecar_directory(loaded.config, service)

    async def enrol(spec: ChildSpec) -> None:
        if identity_usable(directory):
            spec.env = _environment(None)  # it renews from what it saved
        else:
            spec.env = _environment(await _token_for(loaded, spec, {"service": service}))

    spec.prepare = enrol
    return spec


def _mesh_components(loaded: LoadedConfig, run_dir: Path) -> list[ChildSpec]:
    """The CA, then a sidecar per ``mesh.sidecars`` entry (none without a ``mesh`` section)."""
    mesh = loaded.config.mesh
    if mesh is None:
        return []
    specs = [_garrison_component("ca", loaded, run_dir, "serve")]
    return specs + [_sidecar_component(loaded, run_dir, service) for service in mesh.sidecars]


def _gateway_component(loaded: LoadedConfig, run_dir: Path) -> ChildSpec:
    """The gateway; with a mesh, a join token for ``spiffe://<td>/gateway`` at each start, so that it
    can call services through their sidecars with an identity of its own."""
    spec = _garrison_component("gateway", loaded, run_dir)
    if loaded.config.mesh is None:
        return spec
    spiffe_id = trust_domain_id(loaded.config.trust_domain) + "/gateway"

    async def enrol(spec: ChildSpec) -> None:
        spec.env = _environment(await _token_for(loaded, spec, {"spiffe_id": spiffe_id}))

    spec.prepare = enrol
    return spec


def _vault_component(loaded: LoadedConfig, run_dir: Path) -> ChildSpec:
    """The vault; with a mesh, a join token for ``spiffe://<td>/vault`` unless it can renew the
    identity it saved (it follows the CA's revocations with it, for cert logins)."""
    spec = _garrison_component("vault", loaded, run_dir)
    if loaded.config.mesh is None:
        return spec
    spiffe_id = trust_domain_id(loaded.config.trust_domain) + "/vault"
    directory = loaded.config.state_dir / "vault" / "identity"

    async def enrol(spec: ChildSpec) -> None:
        if identity_usable(directory):
            spec.env = _environment(None)
        else:
            spec.env = _environment(await _token_for(loaded, spec, {"spiffe_id": spiffe_id}))

    spec.prepare = enrol
    return spec


def _with_vault(loaded: LoadedConfig, spec: ChildSpec, service: str, vault: ChildSpec) -> None:
    """A demo app that logs in to the vault: at each start, the vault's address (from its ready
    file), a join token unless its saved identity is usable, and for orders the demo's secret."""
    from garrison import demo_vault

    base = list(spec.argv)
    directory = demo_vault.app_identity_directory(loaded.config, service)

    async def prepare(spec: ChildSpec) -> None:
        assert vault.ready_file is not None and loaded.config.vault is not None
        ready = read_ready(vault.ready_file)
        address = ready.listeners["vault"] if ready is not None else str(loaded.config.vault.listen)
        database = None
        if service == "orders":
            seeded = await asyncio.to_thread(demo_vault.seed_secret, loaded.config, address)
            log.log("up.demo.vault_secret", message=seeded)
            postgres = os.environ.get(demo_vault.POSTGRES_ENV)
            if postgres:
                done, database = await asyncio.to_thread(
                    demo_vault.configure_database, loaded.config, address, postgres
                )
                log.log("up.demo.vault_database", message=done)
        spec.argv = base + demo_vault.app_arguments(loaded.config, service, address, database)
        if identity_usable(directory):
            spec.env = _environment(None)
        else:
            spec.env = _environment(await _token_for(loaded, spec, {"service": service}))

    spec.prepare = prepare


def _demo_apps(loaded: LoadedConfig, vault: ChildSpec | None) -> list[ChildSpec]:
    """The demo's orders and payments apps (examples/demo_mesh_app.py), each calling its peers
    through its sidecar's outbound port; none without a mesh or without the script. With the
    vault, each logs in there with a workload certificate, and orders reads its password."""
    mesh, script = loaded.config.mesh, loaded.source.parent / "demo_mesh_app.py"
    if mesh is None or not script.exists():
        return []
    from urllib.parse import urlsplit

    specs = []
    for service in (name for name in MESH_APPS if name in mesh.sidecars and name in loaded.config.services):
        target = urlsplit(loaded.config.services[service].targets[0])
        host, port = target.hostname or "127.0.0.1", target.port or 80
        outbound = mesh.sidecars[service].outbound
        if outbound.endswith(":0"):
            raise RuntimeError(f"--demo needs a fixed port in mesh.sidecars.{service}.outbound")
        argv = [sys.executable, str(script), "--service", service, "--host", host, "--port", str(port)]
        spec = ChildSpec(f"{service} app", [*argv, "--outbound", outbound], probe=(host, port))
        if vault is not None:
            _with_vault(loaded, spec, service, vault)
        specs.append(spec)
    return specs


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
    """What ``up`` runs, in start order: each needs the one before it (the CA first, the gateway last)."""
    specs = _mesh_components(loaded, run_dir)
    if loaded.config.audit is not None:  # after the CA (its certificate, the bundle), before emitters
        specs.append(_garrison_component("audit", loaded, run_dir, "serve"))
    vault = _vault_component(loaded, run_dir) if loaded.config.vault is not None else None
    if vault is not None:
        specs.append(vault)  # after the CA (it joins the mesh), before the apps that read secrets
    if demo:
        specs += [_demo_component(loaded), *_demo_apps(loaded, vault)]
    if loaded.config.identity is not None:
        specs.append(_garrison_component("identity", loaded, run_dir))
    specs.append(_gateway_component(loaded, run_dir))
    return specs


STARTING = {
    "ca": "starting the workload CA…",
    "demo upstream": "starting the demo upstream…",
    "audit": "starting the audit collector (recovering its log)…",
    "vault": "starting the vault (migrating its storage on first run)…",
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
        _ensure_ca(loaded, console)
    except (RuntimeError, EnrolmentError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    return asyncio.run(_up(loaded, specs, demo, console))


def _ensure_ca(loaded: LoadedConfig, console: Console) -> None:
    """A CA for the mesh on first run (this machine holds its root: fine for a demo, not production)."""
    if loaded.config.mesh is None:
        return
    created = ensure_ca(loaded.config)
    if created is not None:
        console.print(
            f"created a CA for {loaded.config.trust_domain} under {created}; for production run "
            "`garrison ca init` with --offline-root",
            soft_wrap=True,
        )


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
            from garrison import demo_vault

            gateway = supervisor.children[-1].listeners["gateway"]
            # They run their own event loop (asyncio.run): a thread of their own, while this one waits.
            await asyncio.to_thread(demo_flows.open_route, loaded.config, gateway, console)
            await asyncio.to_thread(demo_flows.protected_route, loaded.config, gateway, console)
            await asyncio.to_thread(demo_flows.mesh_calls, loaded.config, console)
            vault = next((c.listeners["vault"] for c in supervisor.children if c.name == "vault"), None)
            if vault is not None:
                await asyncio.to_thread(demo_vault.vault_calls, loaded.config, console, vault, loaded.source)
            if loaded.config.audit is not None:
                from garrison import demo_attack

                await asyncio.to_thread(demo_attack.attack, loaded.config, gateway, console, loaded.source)
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
