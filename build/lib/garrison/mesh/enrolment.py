"""What ``garrison up`` needs from the mesh to start its workloads: a CA, and join tokens.

- ``ensure_ca``: a CA under ``state_dir/ca`` (root and intermediate on this machine) when there is
  none yet, so that ``up`` works on a fresh checkout; production runs ``garrison ca init`` with
  ``--offline-root``.
- ``identity_usable``: whether a workload's saved identity (``identity.pem``, ``bundle.pem``, as
  pki/workload.py keeps them) can still renew, so that a restarted sidecar gets no new token.
- ``mint_join_token``: a one-time token, through the running CA's admin API (so it is counted and
  logged there) or, when nothing listens, in the CA's database, as ``garrison ca join-token`` does.

Tokens are returned to the caller, which hands them to one child's environment; they are never
logged, and no repr holds one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509

from garrison.admin.auth import AdminTokenError
from garrison.config.loader import LoadedConfig
from garrison.config.model import GarrisonConfig
from garrison.mesh.ca.admin import identity_of
from garrison.mesh.ca.admin_client import AdminUnreachable, ca_admin_call
from garrison.mesh.ca.server import ca_files, open_ca
from garrison.pki.authority_files import AuthorityFilesError

__all__ = ["EnrolmentError", "ensure_ca", "identity_usable", "mint_join_token", "sidecar_directory"]

# A certificate this close to its end is treated as lapsed: the child would start with it and lose
# it before its first renewal lands.
LAPSE_MARGIN = dt.timedelta(seconds=30)


class EnrolmentError(Exception):
    """No token could be minted (the message says why; it never holds a token)."""


def sidecar_directory(config: GarrisonConfig, service: str) -> Path:
    """Where ``garrison sidecar --service SERVICE`` keeps its identity (mesh/sidecar/main.py)."""
    return Path(config.state_dir) / "sidecars" / service


def ensure_ca(config: GarrisonConfig) -> Path | None:
    """Create the CA if ``state_dir/ca`` holds none: its directory when it was created, else None."""
    assert config.mesh is not None
    files = ca_files(config)
    if files.exists():
        return None
    try:
        files.init(
            config.trust_domain,
            now=dt.datetime.now(dt.UTC),
            offline_root=None,
            intermediate_lifetime=dt.timedelta(seconds=config.mesh.ca.intermediate_ttl),
        )
    except AuthorityFilesError as exc:
        raise EnrolmentError(f"cannot create the CA: {exc}") from None
    return files.directory


def identity_usable(directory: Path, now: dt.datetime | None = None) -> bool:
    """A saved identity the workload can start from and renew: present, and not (about to be) lapsed."""
    identity, bundle = directory / "identity.pem", directory / "bundle.pem"
    try:
        certificate = x509.load_pem_x509_certificates(identity.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return False
    if not bundle.exists():
        return False
    return certificate.not_valid_after_utc - LAPSE_MARGIN > (now or dt.datetime.now(dt.UTC))


def mint_join_token(loaded: LoadedConfig, named: dict[str, str], ttl: dt.timedelta) -> str:
    """A token for ``named`` (``{"service": S}`` or ``{"spiffe_id": ID}``), valid for ``ttl``.

    Blocking (an HTTP call or a database transaction): call it from a thread."""
    seconds = max(1, int(ttl.total_seconds()))
    try:
        answer = ca_admin_call(loaded, "POST", "/join-tokens", {**named, "ttl": f"{seconds}s"})
        return str(answer["token"])
    except AdminUnreachable:
        pass
    except (ValueError, OSError, KeyError, AdminTokenError) as exc:
        raise EnrolmentError(f"the CA did not mint a join token: {exc}") from None
    try:
        spiffe_id = identity_of(loaded.config.trust_domain, named)
    except ValueError as exc:
        raise EnrolmentError(str(exc)) from None
    return asyncio.run(_mint_in_database(loaded.config, spiffe_id, ttl))


async def _mint_in_database(config: GarrisonConfig, spiffe_id: str, ttl: dt.timedelta) -> str:
    from garrison.core.runner import StartFailed
    from garrison.mesh.ca.join_tokens import TooManyJoinTokens

    try:
        parts = await open_ca(config)
    except StartFailed as exc:
        raise EnrolmentError(str(exc)) from None
    try:
        return await parts.tokens.mint(spiffe_id, ttl)
    except (ValueError, TooManyJoinTokens) as exc:
        raise EnrolmentError(str(exc)) from None
    finally:
        await parts.engine.dispose()
