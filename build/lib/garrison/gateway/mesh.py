"""The gateway in the mesh: its workload identity, and which services it reaches through their sidecars.

A route whose service has ``mesh.sidecars.<service>`` is not sent to the service's targets: the
gateway dials the sidecar's address over mutual TLS, presents its own identity
``spiffe://<td>/gateway`` and sends the request only if the server's verified certificate is exactly
``spiffe://<td>/svc/<service>`` (the pool checks it: proxy/upstream/pool.py). The sidecar then
applies the mesh policy, which lets the gateway call a service with its routes' methods and paths.

The identity is ``pki.workload.WorkloadIdentity`` kept under ``state_dir/gateway/identity``: the first
start joins with ``GARRISON_JOIN_TOKEN``, later starts renew the saved certificate. Under
``workers: N`` the supervisor joins (or renews) once before starting the workers, which then load the
saved identity and each renew it in the background (a renewal is one small request; the file is
replaced atomically with chain and key together, so a worker always loads a matching pair). The
supervisor does not keep an identity running: it proxies nothing. The one-time token is spent once.
"""

from __future__ import annotations

from pathlib import Path

from garrison.config.model import GarrisonConfig
from garrison.pki.workload import WorkloadIdentity

__all__ = ["gateway_identity", "identity_directory", "sidecar_peers"]


def sidecar_peers(config: GarrisonConfig) -> dict[str, tuple[str, str]]:
    """service -> (sidecar address to dial, SPIFFE ID it must present), for every service a route
    targets that has a sidecar."""
    if config.mesh is None:
        return {}
    routed = {route.service for route in config.routes}
    return {
        name: (sidecar.dial_address(), f"spiffe://{config.trust_domain}/svc/{name}")
        for name, sidecar in config.mesh.sidecars.items()
        if name in routed
    }


def identity_directory(state_dir: Path) -> Path:
    return state_dir / "gateway" / "identity"


def gateway_identity(config: GarrisonConfig) -> WorkloadIdentity | None:
    """The gateway's identity (not started) when some route goes through a sidecar, else None."""
    if config.mesh is None or not sidecar_peers(config):
        return None
    assert config.mesh.ca.url is not None  # derived from ca.listen at load
    return WorkloadIdentity(
        config.mesh.ca.url,
        identity_directory(config.state_dir),
        ca_bundle=config.state_dir / "ca" / "bundle.pem",
    )
