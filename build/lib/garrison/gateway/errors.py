"""The gateway's own responses: small JSON bodies with strict security headers.

An error never echoes request data (no path, no header value) and never names an internal host,
exception or stack: the body is a fixed code, a fixed message and the request id to quote in a
support ticket.
"""

from __future__ import annotations

import json

from garrison.proxy.http1 import status_line

ERROR_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

MESSAGES: dict[str, str] = {
    "bad_request": "The request is malformed.",
    "not_found": "No route matches this request.",
    "unauthorized": "An access token is required.",
    "invalid_token": "The access token is not valid here.",
    "invalid_request": "The credentials in this request are ambiguous or misplaced.",
    "insufficient_scope": "These credentials do not grant access to this route.",
    "authentication_unavailable": "Access tokens cannot be checked yet; retry after the time in Retry-After.",
    "client_certificate_required": "This route requires a client certificate.",
    "unknown_client_certificate": "This client certificate is not accepted here.",
    "forbidden": "Requests from this address are not allowed.",
    "method_not_allowed": "This method is not allowed on this route.",
    "request_timeout": "The request was not received in time.",
    "payload_too_large": "The request body is larger than allowed.",
    "uri_too_long": "The request target is too long.",
    "header_fields_too_large": "The request headers are larger than allowed.",
    "misdirected_request": "The request target's host does not match the Host header.",
    "too_many_requests": "Too many requests; retry after the time in Retry-After.",
    "rate_limiter_unavailable": "The rate limiter is unavailable; retry later.",
    "bad_gateway": "The upstream service failed to answer.",
    "service_unavailable": "The upstream service is unavailable.",
    "gateway_timeout": "The upstream service did not answer in time.",
    "too_many_connections": "The gateway is at its connection limit.",
    "not_implemented": "This request is not supported by the gateway.",
    "internal_error": "The gateway failed to handle the request.",
    "http_version_not_supported": "Only HTTP/1.1 and HTTP/1.0 are supported.",
}


def error_body(code: str, request_id: bytes | None) -> bytes:
    payload: dict[str, str] = {"error": code, "message": MESSAGES[code]}
    if request_id:
        payload["request_id"] = request_id.decode()
    return json.dumps(payload, separators=(",", ":")).encode()


def error_response(
    status: int,
    code: str,
    *,
    request_id: bytes | None,
    security_headers: bytes,
    close: bool,
    extra_headers: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 error response. ``security_headers`` is the pre-rendered common block."""
    body = error_body(code, request_id)
    head = b"".join(
        (
            status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\ncontent-security-policy: " + ERROR_CSP + b"\r\n",
            security_headers,
            b"x-request-id: %s\r\n" % request_id if request_id else b"",
            extra_headers,
            b"connection: close\r\n" if close else b"",
            b"\r\n",
        )
    )
    return head if head_only else head + body
