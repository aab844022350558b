"""Entry point of ``garrison sidecar``: the settings (validated in a child, settings.py), the workload
identity, then run_component.

The identity is, with ``--cert-dir DIR``, ``DIR/cert.pem``, ``key.pem`` and ``bundle.pem`` (a static
identity, rotated by replacing the files and sending SIGHUP); otherwise the Garrison CA's workload
client (``garrison.pki.workload.WorkloadIdentity``: join with ``GARRISON_JOIN_TOKEN``, renewal in
place, the CA's state), kept under ``state_dir/sidecars/<service>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvloop

from garrison.core.runner import EXIT_START_FAILED, StartFailed, run_component
from garrison.mesh.sidecar.component import SidecarComponent
from garrison.mesh.sidecar.identity import FileIdentity, SidecarIdentity
from garrison.mesh.sidecar.settings import SidecarSettings, load_settings
from garrison.pki.workload import WorkloadIdentity
from garrison.telemetry import logging as log

__all__ = ["run"]


def run(config_path: str, service: str, ready_file: str | None, cert_dir: str | None) -> int:
    log.configure("sidecar")
    settings = load_settings(config_path)  # validated in a child: raises the loader's ConfigError
    ready = Path(ready_file) if ready_file else None
    code: int = uvloop.run(_run(settings, service, ready, cert_dir))
    return code


async def _run(settings: SidecarSettings, service: str, ready: Path | None, cert_dir: str | None) -> int:
    try:
        identity = (
            FileIdentity.from_directory(Path(cert_dir)) if cert_dir else await _joined(settings, service)
        )
        component = SidecarComponent(settings, service, identity)
    except (StartFailed, OSError, ValueError) as exc:
        log.error("sidecar.start_failed", message=str(exc), error=type(exc).__name__)
        sys.stderr.write(f"StartFailed: {exc}\n")  # as the runner words it
        return EXIT_START_FAILED
    return await run_component(component, ready)


async def _joined(settings: SidecarSettings, service: str) -> SidecarIdentity:
    """The CA's workload client (pki/workload.py), joined or restored, renewing in place."""
    if settings.ca_url is None:
        raise StartFailed("no mesh.ca configured: pass --cert-dir")
    state_dir = settings.state_dir
    identity = WorkloadIdentity(
        settings.ca_url, state_dir / "sidecars" / service, ca_bundle=state_dir / "ca" / "bundle.pem"
    )
    await identity.start()
    return identity
