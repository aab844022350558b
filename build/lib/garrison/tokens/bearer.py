"""Where a request carries its bearer token (RFC 6750): the Authorization header, or the query when
a route allows it; two differing tokens are refused rather than one picked."""

from __future__ import annotations

import re
from collections.abc import Sequence

from garrison.tokens.jwt import TokenRejected

__all__ = ["extract_bearer"]

_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")


def _token_syntax(value: bytes) -> str:
    if not _B64TOKEN.fullmatch(value):
        raise TokenRejected("bad_authorization")
    return value.decode("ascii")


def extract_bearer(
    authorization_values: Sequence[bytes], query_token: bytes | None, allow_query: bool
) -> str | None:
    """The bearer token of a request (RFC 6750 §2.1 header, or §2.3 query when allowed), or None.

    ``query_token`` is the already percent-decoded ``access_token`` query parameter. Differing
    Authorization headers, or a header token and a query token together, are ``invalid_request`` (400):
    which of two credentials the request meant is not for the gateway to guess. A non-Bearer
    Authorization header (Basic, ApiKey) yields None here.
    """
    header_token: str | None = None
    if authorization_values:
        if any(value != authorization_values[0] for value in authorization_values[1:]):
            raise TokenRejected("two_tokens")
        scheme, _, credentials = authorization_values[0].strip(b" \t").partition(b" ")
        if scheme.lower() == b"bearer":
            header_token = _token_syntax(credentials.lstrip(b" "))
    if query_token is None:
        return header_token
    if not allow_query:
        raise TokenRejected("query_token")
    if header_token is not None:
        raise TokenRejected("two_tokens")
    return _token_syntax(query_token)
