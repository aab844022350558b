"""Where each response is sent and with which credential: the admin listeners this config describes.

An ``AdminTarget`` is one admin listener: its base URL, the file holding its admin token (read at
every call, so a token created or replaced after the collector started is still used), and how its
TLS certificate is checked. The token files are the ones the components themselves read:
``garrison.admin.auth.admin_token_path(config)`` (``gateway.admin.token_file``, else
``state_dir/admin.token``), or the CA's and the identity provider's own ``admin.token_file`` when
set. Over https the listener's own certificate chain (its ``admin.tls.cert``) is the trust anchor,
as the CLI does (``admin_client_context``); a URL given in ``audit.responses`` for a listener this
file does not configure with TLS is checked against the system's trust store.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from garrison.admin.auth import admin_client_context, admin_token_path
from garrison.config.addresses import parse_listen
from garrison.config.assembly import GarrisonConfig
from garrison.config.common import AdminConfig

__all__ = ["AdminTarget", "Targets", "targets_for"]


@dataclass(frozen=True)
class AdminTarget:
    """One admin listener. ``repr`` shows the URL and token path, never the token."""

    url: str  # scheme://host:port, no trailing slash
    token_file: Path
    verify: ssl.SSLContext | bool = True  # True: the system trust store (https URLs only)


@dataclass(frozen=True)
class Targets:
    """Every admin listener responses may call; an empty ``gateways`` or a None means "not known"."""

    gateways: tuple[AdminTarget, ...]
    identity: AdminTarget | None
    ca: AdminTarget | None


def targets_for(config: GarrisonConfig, config_dir: Path) -> Targets:
    """The targets of ``audit.responses`` (explicit URLs) or, unset, of this file's admin listeners."""
    responses = config.audit.responses if config.audit is not None else None
    shared_token = admin_token_path(config)
    gateway_admin = config.gateway.admin
    gateway_urls = responses.gateways if responses is not None else None
    if gateway_urls is None:
        derived = _listener_url(gateway_admin)
        gateway_urls = [derived] if derived is not None else []
    gateways = tuple(
        _target(url, shared_token, gateway_admin, config_dir) for url in dict.fromkeys(gateway_urls)
    )
    identity = ca = None
    if config.identity is not None:
        admin = config.identity.admin
        url = responses.identity_admin if responses is not None else None
        url = url or _listener_url(admin)
        token = Path(admin.token_file) if admin.token_file else shared_token
        identity = _target(url, token, admin, config_dir) if url else None
    if config.mesh is not None:
        mesh_admin = config.mesh.ca.admin
        url = responses.ca_admin if responses is not None else None
        url = url or _listener_url(mesh_admin)
        token = Path(mesh_admin.token_file) if mesh_admin.token_file else shared_token
        ca = _target(url, token, mesh_admin, config_dir) if url else None
    return Targets(gateways, identity, ca)


def _listener_url(admin: AdminConfig) -> str | None:
    """``http(s)://host:port`` of a listener; None on port 0 (its address is known only once bound)."""
    host, port = parse_listen(admin.listen)
    if port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "localhost": "127.0.0.1"}.get(host, host)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{'https' if admin.tls is not None else 'http'}://{authority}"


def _target(url: str, token_file: Path, admin: AdminConfig, config_dir: Path) -> AdminTarget:
    url = url.rstrip("/")
    verify: ssl.SSLContext | bool = True
    if url.startswith("https://"):
        verify = admin_client_context(admin, config_dir) or True
    return AdminTarget(url, token_file, verify)
