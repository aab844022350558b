"""The security headers every Garrison HTTP response carries: the ONE place they are defined.

The gateway (pre-rendered bytes on its hot path), the identity provider and the admin/vault/audit
APIs (web/app.py) all take them from here, so a hardening change lands everywhere at once.
Each header earns its place:

- ``X-Content-Type-Options: nosniff``: a browser never guesses a script or page out of a JSON body.
- ``Referrer-Policy``: URLs (codes, state) do not leak to other sites through ``Referer``.
- ``X-Frame-Options: DENY`` and ``frame-ancestors 'none'``: no clickjacking in a hidden frame.
- ``Content-Security-Policy: default-src 'none'`` on API answers: a response opened as a page runs
  nothing. HTML pages bring their own, stricter-than-default policy.
- ``Strict-Transport-Security`` only over TLS (RFC 6797 §7.2: ignored, and misleading, over HTTP).
"""

from __future__ import annotations

__all__ = ["API_CSP", "DEFAULT_HSTS", "hsts_value", "render", "security_headers"]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
DEFAULT_HSTS = "max-age=31536000; includeSubDomains"

Header = tuple[str, str]


def hsts_value(max_age: float, include_subdomains: bool, preload: bool) -> str:
    """A ``Strict-Transport-Security`` value (the gateway's `gateway.hsts` settings)."""
    value = f"max-age={int(max_age)}"
    if include_subdomains:
        value += "; includeSubDomains"
    if preload:
        value += "; preload"
    return value


def security_headers(
    *, hsts: str | None, referrer_policy: str | None = "no-referrer", frame_deny: bool = True
) -> list[Header]:
    """The common headers in their fixed order; ``hsts`` None (no TLS) leaves HSTS out, and
    ``referrer_policy``/``frame_deny`` are off where the caller adds them its own way (the gateway
    keeps an upstream's own Referrer-Policy and framing decisions)."""
    headers = [("x-content-type-options", "nosniff")]
    if referrer_policy is not None:
        headers.append(("referrer-policy", referrer_policy))
    if frame_deny:
        headers.append(("x-frame-options", "DENY"))
    if hsts is not None:
        headers.append(("strict-transport-security", hsts))
    return headers


def render(headers: list[Header]) -> bytes:
    """HTTP/1.1 header lines for a pre-rendered block."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
