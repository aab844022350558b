"""The vault in the mesh: its own workload identity (``spiffe://<td>/vault``), through which it follows
the CA's published state, so that ``auth/cert/login`` refuses a revoked identity or a quarantined
service within a second of ``garrison ca revoke`` / ``garrison quarantine``, as the sidecars do.

Only when ``mesh`` is configured: the identity is ``pki.workload.WorkloadIdentity`` kept under
``state_dir/vault/identity``. The first start joins with ``GARRISON_JOIN_TOKEN`` (``garrison ca
join-token --spiffe-id spiffe://<td>/vault``); later starts renew the saved certificate. Until the
first state has arrived, cert logins are refused (fail closed: the vault cannot yet tell a revoked
certificate from a good one); when the CA is unreachable later, the last state known keeps applying.
Without a token or a saved identity the vault still starts (tokens and AppRole work) and logs
``vault.mesh.no_identity``; cert logins stay refused until it restarts with one.
"""

from __future__ import annotations

from garrison.config.model import GarrisonConfig
from garrison.pki.workload import WorkloadIdentity

__all__ = ["vault_identity"]


def vault_identity(config: GarrisonConfig) -> WorkloadIdentity | None:
    """The vault's identity (not started) when the mesh is configured, else None."""
    if config.mesh is None or config.mesh.ca.url is None:
        return None
    return WorkloadIdentity(
        config.mesh.ca.url,
        config.state_dir / "vault" / "identity",
        ca_bundle=config.state_dir / "ca" / "bundle.pem",
    )
