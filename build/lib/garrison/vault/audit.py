"""The audit file: every request and every answer, one JSON line each, written before the answer goes out.

As Vault's audit devices do, secret material is not written in clear: every string and number in the
request's and the answer's data, and every token and accessor, is replaced by ``hmac-sha256:<hex>``
under a per-vault salt (256 random bits kept in the barrier). An operator who holds a token or a
secret can compute its HMAC (``sys/audit-hash`` in Vault; here with the salt) and find where it was
used, while the file alone reveals none. While the vault is sealed there is no salt to use, so the
entries of sealed-time requests (``sys/unseal`` carries key shares) leave their data out altogether.

Fail closed (``vault.audit.fail_closed``, the default): a request whose entry cannot be written is
refused before anything is done, and an answer whose entry cannot be written is replaced by an error.
The file is opened for each line (``O_APPEND``, 0600), so a rotation that renames it is followed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from garrison.telemetry import logging as log
from garrison.vault.answers import Answer, Call
from garrison.vault.durations import rfc3339

__all__ = ["AuditFailed", "AuditLog"]

SALT_PATH = "sys/audit/salt"
REDACTED = "<redacted: sealed>"


class AuditFailed(Exception):
    """The audit entry could not be written."""


class AuditLog:
    def __init__(self, path: Path, fail_closed: bool) -> None:
        self.path = path
        self.fail_closed = fail_closed
        self.salt: bytes | None = None  # set while unsealed

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def hash(self, value: str) -> str:
        assert self.salt is not None
        return (
            "hmac-sha256:"
            + hmac.new(self.salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        )

    def _hashed(self, value: Any) -> Any:
        if self.salt is None:
            return REDACTED if value is not None else None
        if isinstance(value, dict):
            return {key: self._hashed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._hashed(item) for item in value]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, str | int | float):
            return self.hash(str(value))
        return self.hash(json.dumps(value, default=str))

    def _request(self, call: Call, policies: list[str] | None) -> dict[str, Any]:
        token = self._hashed(call.token) if call.token else ""
        return {
            "id": call.request_id,
            "operation": call.operation,
            "method": call.method,
            "path": call.path,
            "client_token": token,
            "remote_address": call.remote_address,
            "data": self._hashed(call.body) if call.body else None,
            "policies": policies,
        }

    def request(self, call: Call, policies: list[str] | None) -> None:
        self._write(
            {"time": rfc3339(time.time()), "type": "request", "request": self._request(call, policies)}
        )

    def response(self, call: Call, policies: list[str] | None, answer: Answer) -> None:
        payload = answer.audit_data if isinstance(answer.audit_data, dict) else None
        response: dict[str, Any] = {"status": answer.status}
        if payload is not None:
            for key in ("data", "auth", "errors"):
                if payload.get(key) is not None:
                    response[key] = payload[key] if key == "errors" else self._hashed(payload[key])
        entry = {
            "time": rfc3339(time.time()),
            "type": "response",
            "request": self._request(call, policies),
            "response": response,
        }
        self._write(entry)

    def _write(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("vault.audit.write_failed", path=str(self.path), error=type(exc).__name__)
            if self.fail_closed:
                raise AuditFailed("the audit log cannot be written") from None
