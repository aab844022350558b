"""Who may use the admin listener: the admin token, the Host and Origin checks, and admin TLS.

The admin API can block any address and revoke any token, so it is guarded like a control plane
(Kong's admin API, Vault's ``X-Vault-Token``), not like a health endpoint:

- **A credential for every change.** ``POST``/``DELETE`` (anything but ``GET``/``HEAD``) needs
  ``Authorization: Bearer <admin token>``. The token is 256 random bits in a file written 0600
  (``gateway.admin.token_file``, default ``state_dir/admin.token``), created by whichever Garrison
  process needs it first; the CLI and the identity provider's revocation push read the same file.
  With ``gateway.admin.tls.client_ca`` a client certificate that chains to that CA is a credential
  too. Reads (``/metrics``, ``/live``, ``/ready``, listing blocks and revocations) stay open on a
  loopback listener, so local probes and scrapers need nothing; on any other listener every request
  needs the credential.
- **No browser can drive it.** A web page can make a browser send a ``POST`` with
  ``Content-Type: text/plain`` to ``http://127.0.0.1:9901`` (no CORS preflight) and, through DNS
  rebinding, even read answers under its own host name. So a request whose ``Origin`` is not the
  listener itself, or whose ``Host`` is not an address the listener answers on (an IP literal it is
  bound to, ``localhost`` on loopback, or a name in ``gateway.admin.hosts``), is refused before
  anything else happens — with or without a token.
- **No credential in clear on a network.** A listener that is not on loopback must have TLS
  (``gateway.admin.tls``); the config loader refuses one without it.

Why by hand: the admin listener is Garrison's own minimal responder (web/simplehttp.py); these are a
handful of header comparisons, and a web framework's middleware would bring more surface than it
saves.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import ssl
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from garrison.config.addresses import is_loopback_host
from garrison.config.shapes import AdminShape
from garrison.pki.server_tls import server_context
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = [
    "AdminGuard",
    "AdminTokenError",
    "admin_client_context",
    "admin_server_context",
    "admin_token_path",
    "guard_for",
    "load_or_create_admin_token",
    "read_admin_token",
]

TOKEN_BYTES = 32
READ_METHODS = (b"GET", b"HEAD")
JSON = b"application/json"

if TYPE_CHECKING:  # the whole model only for the gateway's helpers below; a sidecar passes an AdminShape
    from garrison.config.model import GarrisonConfig

Handler = Callable[[SimpleRequest], SimpleResponse | Awaitable[SimpleResponse]]


class AdminTokenError(Exception):
    """The admin token file is unusable (the message names the file and the fix, never the token)."""


def admin_token_path(config: GarrisonConfig) -> Path:
    """Where this config's admin token lives: ``gateway.admin.token_file`` (the loader resolves it
    against the config file's directory) or ``state_dir/admin.token``."""
    configured = config.gateway.admin.token_file
    return config.state_dir / "admin.token" if configured is None else Path(configured)


def read_admin_token(path: Path) -> str:
    """The token in ``path``; AdminTokenError if it is missing, empty, or readable by others."""
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise AdminTokenError(
            f"no admin token at {path}: start the gateway once (it creates one), or write one there "
            "(mode 0600)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminTokenError(f"cannot read the admin token file {path}: {type(exc).__name__}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminTokenError(f"the admin token file {path} is accessible to other users: chmod 600 {path}")
    if len(text) < 16 or not text.isprintable() or " " in text:
        raise AdminTokenError(f"the admin token in {path} must be one line of at least 16 visible characters")
    return text


def load_or_create_admin_token(path: Path) -> str:
    """Read the token, creating the file (0600, 256 random bits) if it does not exist yet.

    Creation is O_EXCL, so two processes starting together (``garrison up``) agree on one token."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_admin_token(path)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


def admin_server_context(admin: AdminShape, config_dir: Path) -> ssl.SSLContext | None:
    """The admin listener's TLS context (None without ``gateway.admin.tls``)."""
    if admin.tls is None:
        return None

    def relative(name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else config_dir / path

    context = server_context(relative(admin.tls.cert), relative(admin.tls.key))
    if admin.tls.client_ca is not None:
        # Optional at the TLS level: a client without a certificate can still send the token.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=relative(admin.tls.client_ca))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def admin_client_context(admin: AdminShape, config_dir: Path) -> ssl.SSLContext | None:
    """How the CLI checks the admin listener it calls over TLS: the listener's own certificate
    chain file is the trust anchor (partial chains allowed), so a self-signed or privately issued
    admin certificate works without a CA file, and no other certificate is accepted. The name is not
    checked: the CLI dials the address in the config, and the pinned chain is what proves the peer."""
    if admin.tls is None:
        return None
    cert = Path(admin.tls.cert)
    context = ssl.create_default_context(cafile=cert if cert.is_absolute() else config_dir / cert)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _json(status: int, error: str, message: str, headers: bytes = b"") -> SimpleResponse:
    body = b'{"error":"%s","message":"%s"}\n' % (error.encode(), message.encode())
    return SimpleResponse(status, body, JSON, headers)


def _split_authority(value: str) -> tuple[str, int | None] | None:
    """(lower-cased host, port or None) of a Host header value; None if it is not one."""
    parts = urlsplit("//" + value)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return host.lower(), port


@dataclass
class AdminGuard:
    """Wraps an admin handler with the checks in the module docstring.

    ``bound_host``/``bound_port`` are the listener's real address (after binding, so port 0 is
    resolved); ``token`` is None only for a listener that accepts no token (never in practice: the
    gateway always has one)."""

    handler: Handler
    bound_host: str
    bound_port: int
    token: str | None
    names: frozenset[str] = frozenset()
    tls: bool = False
    denied: dict[str, int] = field(default_factory=dict)  # reason -> count, for the metrics

    def __repr__(self) -> str:  # the token never appears in a repr or a log line
        return f"AdminGuard(bound={self.bound_host}:{self.bound_port}, tls={self.tls})"

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.bound_host)

    def __call__(self, request: SimpleRequest) -> SimpleResponse | Awaitable[SimpleResponse]:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return self.handler(request)

    def _deny(self, reason: str, response: SimpleResponse) -> SimpleResponse:
        self.denied[reason] = self.denied.get(reason, 0) + 1
        return response

    def _refusal(self, request: SimpleRequest) -> SimpleResponse | None:
        host = request.headers.get(b"host")
        if host is None or not self._ours(host.decode("latin-1")):
            return self._deny(
                "host",
                _json(421, "misdirected_request", "the Host header does not name this admin listener"),
            )
        origin = request.headers.get(b"origin")
        if origin is not None and not self._same_origin(origin.decode("latin-1")):
            return self._deny("origin", _json(403, "forbidden", "cross-origin requests are refused"))
        if request.method in READ_METHODS and self.loopback:
            return None
        if self._authenticated(request):
            return None
        return self._deny(
            "credential",
            _json(
                401,
                "unauthorized",
                "this admin call needs the admin token (Authorization: Bearer, see gateway.admin.token_file)",
                b'www-authenticate: Bearer realm="garrison-admin"\r\n',
            ),
        )

    def _ours(self, value: str) -> bool:
        """Whether a Host (or Origin authority) names this listener: its port, and a host it answers on."""
        authority = _split_authority(value)
        if authority is None:
            return False
        host, port = authority
        if (port if port is not None else (443 if self.tls else 80)) != self.bound_port:
            return False
        if host in self.names:
            return True
        if host == "localhost":
            return self.loopback or self.bound_host in ("0.0.0.0", "::")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # any other name could be an attacker's, rebound to this address
        if self.bound_host in ("0.0.0.0", "::"):
            return True  # an IP literal cannot be rebound; a wildcard listener answers on every one
        return address == ipaddress.ip_address(self.bound_host)

    def _same_origin(self, origin: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme != ("https" if self.tls else "http") or parts.path or parts.query:
            return False
        return self._ours(parts.netloc)

    def _authenticated(self, request: SimpleRequest) -> bool:
        if request.peer_certificate:
            return True  # OpenSSL verified it against gateway.admin.tls.client_ca in the handshake
        header = request.headers.get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        if self.token is None or scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(presented.strip(), self.token.encode())


def admin_guard(
    handler: Handler, config: GarrisonConfig, bound: tuple[str, int], token: str | None
) -> AdminGuard:
    """The guard for this config's gateway admin listener, bound at ``bound``."""
    return guard_for(handler, config.gateway.admin, bound, token)


def guard_for(handler: Handler, admin: AdminShape, bound: tuple[str, int], token: str | None) -> AdminGuard:
    """The guard for the admin listener ``admin`` describes (any component's), bound at ``bound``."""
    return AdminGuard(
        handler,
        bound[0],
        bound[1],
        token,
        names=frozenset(name.lower() for name in admin.hosts),
        tls=admin.tls is not None,
    )
