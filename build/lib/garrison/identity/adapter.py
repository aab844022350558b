"""The framework side of the authorization server: requests and responses as Authlib sees them.

Authlib does the protocol and leaves the request/response adapters to the framework; these are
Garrison's. web.py turns each HTTP request into an ``IdentityRequest`` and writes each
``EndpointResponse`` back (authserver.py's ``IdentityServer`` creates them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oauth2 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload

from garrison.web.http import Headers


class IdentityRequest(OAuth2Request):  # type: ignore[misc]
    """One HTTP request as Authlib sees it. Token-endpoint parameters come from the form body only."""

    def __init__(
        self,
        method: str,
        url: str,
        headers: Headers,
        form: Mapping[str, str],
        args: Mapping[str, str],
        client_ip: str = "",
    ) -> None:
        super().__init__(method=method, uri=url, headers=headers)
        self.client_ip = client_ip  # the TCP peer or what a trusted proxy names: the throttle's address
        self._form = dict(form)
        self._args = dict(args)
        self.payload = BasicOAuth2Payload(self._form if method == "POST" else self._args)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(slots=True)
class EndpointResponse:
    status: int
    body: Any  # dict (JSON) or str
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        """The redirect target; Authlib's RFC 9207 extension reads and rewrites it to add ``iss``."""
        return next((value for name, value in self.headers if name.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(n, v) for n, v in self.headers if n.lower() != "location"] + [("Location", value)]


__all__ = ["EndpointResponse", "Headers", "IdentityRequest"]
