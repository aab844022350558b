"""Vault's HTTP envelope: the request a handler sees (``Call``), the answer it gives (``Answer``), and
the error (``VaultError``), rendered as Vault renders them.

Success: ``{"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings",
"auth", "mount_type"}``; no content: 204 with no body (hvac treats 204 as "no body"); errors:
``{"errors": [...]}`` with Vault's status codes (400 malformed, 403 permission denied, 404 no such
path or secret, 405, 413, 500, 503 sealed), always ``Content-Type: application/json`` exactly, which
is the one type hvac parses error bodies from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Call", "VaultError", "envelope", "ok"]


@dataclass
class Call:
    method: str  # the HTTP method (LIST for `?list=true` too)
    operation: str  # read, list, create-or-update, patch, delete
    path: str  # below /v1/, no leading or trailing slash
    body: dict[str, Any]
    query: dict[str, str]
    token: str  # "" when none was sent
    remote_address: str
    request_id: str
    content_type: str = ""
    client_certificate: str | None = None  # the TLS client certificate (PEM), verified by the handshake
    caller: Any = None  # the caller's TokenEntry once its token is looked up (for the audit events)


@dataclass
class Answer:
    status: int
    payload: dict[str, Any] | None  # None: no body (204, or HEAD)
    audit_data: Any = None  # what the audit entry records of the answer (secrets are HMAC'd there)
    headers: list[tuple[str, str]] = field(default_factory=list)


class VaultError(Exception):
    def __init__(self, status: int, *errors: str, body: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(errors))
        self.status, self.errors, self.body = status, list(errors), body


PERMISSION_DENIED = "permission denied"


def envelope(
    request_id: str,
    data: Any = None,
    auth: Any = None,
    warnings: list[str] | None = None,
    mount_type: str = "",
    lease_duration: int = 0,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "lease_id": "",
        "renewable": False,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": None,
        "warnings": warnings,
        "auth": auth,
        "mount_type": mount_type,
    }


def ok(call: Call, data: Any = None, auth: Any = None, mount_type: str = "") -> Answer:
    payload = envelope(call.request_id, data, auth, mount_type=mount_type)
    return Answer(200, payload, payload)


def no_content() -> Answer:
    return Answer(204, None)
