"""The vault's HTTP face: Vault's API under ``/v1/`` as one ASGI app on the shared web layer.

The web layer (web/app.py) reads the request (body bounded by ``vault.max_request_body``, repeated
Authorization, Content-Type or query parameters refused) and writes the answer with the common security
headers; this module turns the request into a ``Call``, answers in Vault's envelope and error shape,
and keeps the order every request goes through:

1. ``sys/health``, ``sys/seal-status``, ``sys/init``, ``sys/unseal`` need no token;
2. anything else on a sealed (or uninitialised) vault: 503 ``Vault is sealed``; then the logins
   (``auth/approle/login``, ``auth/cert/login``), which need no token either;
3. the token (``X-Vault-Token``, or ``Authorization: Bearer``): missing, unknown or expired, 403;
4. the request is written to the audit file, and refused (500) if it cannot be (fail closed);
5. the handler, which checks the token's policies for its path and capability (default deny);
6. the answer is written to the audit file before it is sent.

Methods: GET read (``?list=true``: list), LIST list, POST/PUT create-or-update, PATCH patch, DELETE
delete, HEAD only on ``sys/health``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from garrison.telemetry import logging as log
from garrison.vault.answers import Answer, Call, VaultError
from garrison.vault.audit import AuditFailed
from garrison.vault.audit_events import VaultEvents
from garrison.vault.auth_api import LOGIN_PATHS, auth_mounts, login
from garrison.vault.core import KV_MOUNT, VaultCore
from garrison.vault.database_api import database_api
from garrison.vault.kv_api import kv_api
from garrison.vault.leases_api import PREFIX as LEASES_PREFIX
from garrison.vault.leases_api import leases_api
from garrison.vault.sys_api import UNAUTHENTICATED, authenticated_sys, unauthenticated_sys
from garrison.vault.token_api import token_api
from garrison.vault.transit import transit_for
from garrison.vault.transit_api import transit_api
from garrison.web.app import Receive, Scope, Send, WebApp
from garrison.web.headers import API_CSP
from garrison.web.http import HttpError, HttpRequest, HttpResponse

__all__ = ["VaultApp"]

OPERATIONS = {"GET": "read", "LIST": "list", "POST": "create-or-update", "PUT": "create-or-update"}
OPERATIONS |= {"PATCH": "patch", "DELETE": "delete", "HEAD": "head"}
MAX_PATH = 768  # leaves room for the storage prefixes within the 1024-character storage path


class VaultApp(WebApp):
    def __init__(
        self, core: VaultCore, *, hsts: bool, max_body: int, events: VaultEvents | None = None
    ) -> None:
        super().__init__(hsts, max_body=max_body, form_posts=False)
        self.core = core
        self.events = events if events is not None else VaultEvents()
        # What the web layer adds to a JSON answer without headers of its own (every answer here so
        # far), encoded once rather than per request.
        self._json_headers = [
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", API_CSP.encode()),
            *((name.encode(), value.encode()) for name, value in self.common_headers),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            request = await self._read(scope, receive)
            response = await self.answer(request, _client_certificate(scope))
        except HttpError as exc:  # the web layer's own refusals (body too large, repeated header)
            response = _render(Answer(exc.status, {"errors": [exc.description]}))
        await self._write(send, response)

    async def _write(self, send: Send, response: HttpResponse) -> None:
        """As the web layer writes an answer, with the header block made once, and a Content-Length
        (uvicorn would frame a body without one as chunked: more bytes and work on both sides)."""
        if response.headers or response.content_type != "application/json":
            await super()._write(send, response)
            return
        headers = self._json_headers
        if response.status not in (204, 304):  # which must not carry one
            headers = [*headers, (b"content-length", b"%d" % len(response.body))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def answer(self, request: HttpRequest, client_certificate: str | None = None) -> HttpResponse:
        request_id = str(uuid.uuid4())
        try:
            call = _call(request, request_id, client_certificate)
        except VaultError as exc:
            return _render(_error(exc))
        policies: list[str] | None = None
        try:
            answer, policies = await self._handle(call)
        except VaultError as exc:
            answer = _error(exc)
        except AuditFailed:
            return _render(Answer(500, {"errors": ["internal error: the request could not be audited"]}))
        except Exception as exc:  # a bug answers 500 in Vault's shape; the log names the type only
            log.error("vault.request_failed", path=call.path, error=type(exc).__name__)
            answer = Answer(500, {"errors": ["internal error"]})
        try:
            self.core.audit.response(call, policies, answer)
        except AuditFailed:
            return _render(Answer(500, {"errors": ["internal error: the response could not be audited"]}))
        self.events.observe(call, answer)
        return _render(answer)

    async def _handle(self, call: Call) -> tuple[Answer, list[str] | None]:
        core = self.core
        if call.path in UNAUTHENTICATED:
            core.audit.request(call, None)
            return await unauthenticated_sys(core, call), None
        unsealed = core.unsealed
        if unsealed is None:
            core.audit.request(call, None)
            raise VaultError(503, "Vault is sealed")
        if call.path in LOGIN_PATHS:  # no token: a login is how a client gets one
            core.audit.request(call, None)
            return await login(unsealed, core.cert_login, call), None
        entry = call.caller = await unsealed.tokens.lookup(call.token) if call.token else None
        if entry is None:
            core.audit.request(call, None)
            raise VaultError(403, "permission denied")
        core.audit.request(call, entry.policies)
        acl = await unsealed.acl(entry)
        if call.operation == "head":
            raise VaultError(405, "unsupported operation")
        if call.path.startswith(LEASES_PREFIX):
            return await leases_api(unsealed, call, acl), entry.policies
        if call.path == "sys/auth" or call.path.startswith(("sys/auth/", "auth/approle/", "auth/cert/")):
            return await auth_mounts(unsealed, call, acl), entry.policies
        if call.path.startswith("sys/"):
            return await authenticated_sys(core, call, acl), entry.policies
        if call.path.startswith("auth/token/"):
            return await token_api(unsealed, call, acl, entry), entry.policies
        if call.path == KV_MOUNT or call.path.startswith(KV_MOUNT + "/"):
            return await kv_api(unsealed.kv, call, acl), entry.policies
        if call.path == "database" or call.path.startswith("database/"):
            return await database_api(unsealed, call, acl, entry), entry.policies
        if call.path.partition("/")[0] == "transit":
            return await transit_api(
                transit_for(unsealed, unsealed.storage, core.clock), call, acl
            ), entry.policies
        if not acl.capabilities(call.path):
            raise VaultError(403, "permission denied")  # as Vault: the ACL answers before the router
        raise VaultError(404, f'no handler for route "{call.path}". route entry not found.')


def _client_certificate(scope: Scope) -> str | None:
    """The verified client certificate the listener put in the ASGI ``tls`` extension, if any."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    return str(chain[0]) if chain else None


def _call(request: HttpRequest, request_id: str, client_certificate: str | None = None) -> Call:
    if not request.path.startswith("/v1/"):
        raise VaultError(404)
    path = request.path[len("/v1/") :].strip("/")
    if (
        not path
        or len(path) > MAX_PATH
        or "//" in path
        or any(part in (".", "..") for part in path.split("/"))
    ):
        raise VaultError(404)
    operation = OPERATIONS.get(request.method)
    if operation is None:
        raise VaultError(405, "unsupported operation")
    if request.headers.get("x-vault-wrap-ttl"):
        # Refused rather than ignored: a client asking for a wrapped answer must not get the secret bare.
        raise VaultError(400, "response wrapping is not supported")
    query = dict(request.query)
    if operation == "read" and query.pop("list", "") == "true":
        operation = "list"
    return Call(
        method=request.method,
        operation=operation,
        path=path,
        body=_body(request),
        query=query,
        token=_token(request),
        remote_address=request.client_ip,
        request_id=request_id,
        content_type=request.headers.get("content-type", ""),
        client_certificate=client_certificate,
    )


def _token(request: HttpRequest) -> str:
    token: str = request.headers.get("x-vault-token", "")
    if token:
        return token.strip()
    scheme, _, value = str(request.headers.get("authorization", "")).partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        parsed = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise VaultError(400, "failed to parse JSON input") from None
    if parsed is None:  # `bao write -f PATH` (a write with no fields) sends `null`; Vault reads it as {}
        return {}
    if not isinstance(parsed, dict):
        raise VaultError(400, "failed to parse JSON input: expected an object")
    return parsed


def _error(exc: VaultError) -> Answer:
    payload = exc.body if exc.body is not None else {"errors": exc.errors}
    return Answer(exc.status, payload, payload)


def _render(answer: Answer) -> HttpResponse:
    if answer.payload is None:
        return HttpResponse(answer.status, b"", "application/json", answer.headers)
    body = json.dumps(answer.payload, separators=(",", ":")).encode()
    return HttpResponse(answer.status, body, "application/json", answer.headers)
