"""The vault's audit events for the collector (docs/audit.md, "Identity and vault events"), beside
its own audit file (audit.py), which keeps every request and answer with their data HMAC'd.

The collector gets less and sees further: one event per secret access and per login, named after
what happened, with no secret data at all (not even HMAC'd):

- ``secret.read`` / ``secret.write`` / ``secret.delete`` / ``secret.list`` for the KV engine at
  ``secret/`` and ``secret.read`` for ``database/creds/<role>`` (a dynamic credential);
- ``auth.login`` for ``auth/approle/login``, ``auth/cert/login`` and ``auth/token/create``.

``target`` is the API path; the outcome is ``success``, ``denied`` for a 403 (the "secret read
outside policy" a detection rule counts: a token whose policies do not cover the path, or no valid
token at all), ``failure`` for any other refusal. The actor is the token's display name (``subject``)
with its policies in ``details``; a token from a certificate login names its service by SPIFFE ID
(``actor.service``). ``actor.ip`` is the client address as the web layer resolved it.

Cost on the hot path: nothing at all without an ``audit`` section (``enabled`` is false and
``observe`` returns after one attribute read); otherwise a few prefix checks and one ``Event``,
queued by an emitter that never blocks (bench figures in docs/audit.md).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from garrison.events.emitter import Emitter, NullEmitter
from garrison.events.schema import Actor, Event, Outcome
from garrison.pki.authority import spiffe_id_of_certificate
from garrison.vault.answers import Answer, Call
from garrison.vault.tokens import TokenEntry

__all__ = ["VaultEvents", "classify"]

KV_PREFIX = "secret/"
CREDS_PREFIX = "database/creds/"
LOGINS = {
    "auth/approle/login": "approle",
    "auth/cert/login": "cert",
    "auth/token/create": "token",
    "auth/token/create-orphan": "token",
}
_KV_TYPES = {
    ("data", "read"): "secret.read",
    ("metadata", "read"): "secret.read",
    ("metadata", "list"): "secret.list",
    ("data", "create-or-update"): "secret.write",
    ("data", "patch"): "secret.write",
    ("metadata", "create-or-update"): "secret.write",
    ("metadata", "patch"): "secret.write",
    ("undelete", "create-or-update"): "secret.write",
    ("data", "delete"): "secret.delete",
    ("metadata", "delete"): "secret.delete",
    ("delete", "create-or-update"): "secret.delete",
    ("destroy", "create-or-update"): "secret.delete",
}


def classify(path: str, operation: str) -> str | None:
    """The event type of a request, or None when it is not one the collector gets."""
    if path.startswith(KV_PREFIX):
        section = path[len(KV_PREFIX) :].partition("/")[0]
        return _KV_TYPES.get((section, operation))
    if path.startswith(CREDS_PREFIX):
        return "secret.read" if operation == "read" else None
    if path in LOGINS:
        return "auth.login" if operation == "create-or-update" else None
    return None


def _outcome(status: int) -> Outcome:
    if status < 400:
        return "success"
    return "denied" if status == 403 else "failure"


def _caller(entry: TokenEntry | None) -> tuple[Actor, dict[str, Any]]:
    if entry is None:
        return Actor(), {"token": "missing_or_invalid"}
    meta = entry.meta or {}
    spiffe_id = meta.get("spiffe_id")
    details: dict[str, Any] = {"policies": ",".join(entry.policies)}
    if "role_name" in meta:
        details["role"] = meta["role_name"]
    return Actor(subject=entry.display_name, service=spiffe_id), details


class VaultEvents:
    """Turns answered requests into audit events for ``emitter`` (none: ``enabled`` is false)."""

    def __init__(self, emitter: Emitter | None = None, instance: str = "") -> None:
        self.emitter: Emitter = emitter if emitter is not None else NullEmitter()
        self.instance = instance
        self.enabled = not isinstance(self.emitter, NullEmitter)

    def __repr__(self) -> str:
        return f"VaultEvents(instance={self.instance!r}, enabled={self.enabled})"

    def observe(self, call: Call, answer: Answer) -> None:
        """After the answer is decided (and written to the audit file): its event, if it has one."""
        if not self.enabled:
            return
        kind = classify(call.path, call.operation)
        if kind is None:
            return
        if kind == "auth.login":
            actor, details = self._login(call, answer)
        else:
            actor, details = _caller(call.caller)
            if call.path.startswith(CREDS_PREFIX):
                details["engine"] = "database"
        details["status"] = answer.status
        self.emitter.emit(
            Event(
                component="vault",
                type=kind,
                outcome=_outcome(answer.status),
                actor=Actor(actor.subject, None, actor.service, call.remote_address or None),
                target=call.path,
                request_id=call.request_id,
                details=details,
                instance=self.instance,
            )
        )

    def _login(self, call: Call, answer: Answer) -> tuple[Actor, dict[str, Any]]:
        """A login's actor: who logged in (the new token's metadata) or, for a token created by another
        token, that token; ``details.method`` is the auth method."""
        method = LOGINS[call.path]
        auth = (answer.payload or {}).get("auth") if answer.status < 400 else None
        created: dict[str, Any] = auth if isinstance(auth, dict) else {}
        meta = created.get("metadata") or {}
        details: dict[str, Any] = {"method": method}
        if created.get("policies"):
            details["token_policies"] = ",".join(created["policies"])
        if method == "token":
            actor, caller = _caller(call.caller)
            return actor, details | caller
        if method == "cert":
            service = meta.get("spiffe_id") or _spiffe_id(call.client_certificate)
            return Actor(subject=meta.get("cert_name"), service=service), details
        role = meta.get("role_name")
        return Actor(subject=f"approle-{role}" if role else None), details | ({"role": role} if role else {})


def _spiffe_id(pem: str | None) -> str | None:
    """The SPIFFE ID of a certificate that failed to log in (the handshake verified it), if any."""
    if not pem:
        return None
    try:
        return spiffe_id_of_certificate(x509.load_pem_x509_certificate(pem.encode("ascii")))
    except ValueError:
        return None
