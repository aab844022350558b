"""Certificate -> identity: the names a verified peer certificate carries, and the one it maps to.

The TLS handshake (OpenSSL, with the CA the listener trusts) has already verified the chain; what is
left is policy: which configured principal does this certificate name? The gateway's mTLS clients map
a SAN or the subject CN to a client; the mesh maps a workload certificate's SPIFFE ID (its only URI
SAN) to a service. Both go through ``CertificateMap``, which refuses a certificate that names two
different principals rather than resolving it by an order nobody configured.

Input is ``ssl.SSLObject.getpeercert()``'s dictionary: it is what the standard library hands over for
a verified peer on the hot path, so no DER re-parse is needed per connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

NameKind = Literal["uri", "dns", "email", "common_name"]
CertificateName = tuple[NameKind, str]

# ssl's names for the SAN kinds a mapping can select on, in the order they are tried.
_SAN_KINDS: tuple[tuple[str, NameKind], ...] = (("URI", "uri"), ("DNS", "dns"), ("email", "email"))
SPIFFE_SCHEME = "spiffe://"


class NoCertificate(Exception):
    """The peer presented no (verified) certificate."""


class UnknownCertificate(Exception):
    """The certificate names no configured principal, or names more than one."""


def certificate_names(peercert: Mapping[str, Any]) -> list[CertificateName]:
    """Every SAN of a kind we map (URI, DNS, email), then the subject common name(s)."""
    names: list[CertificateName] = []
    for kind, value in peercert.get("subjectAltName", ()):
        for ssl_kind, ours in _SAN_KINDS:
            if kind == ssl_kind and isinstance(value, str):
                names.append((ours, value))
    for rdn in peercert.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName" and isinstance(value, str):
                names.append(("common_name", value))
    return names


def spiffe_id(peercert: Mapping[str, Any] | None) -> str | None:
    """The SPIFFE ID of an X.509 SVID: its single ``spiffe://`` URI SAN, else None.

    The SPIFFE X.509-SVID standard (§2) allows exactly one URI SAN; a certificate with two is not an
    SVID, and picking one of them would let whoever got it issued choose which identity counts.
    """
    if not peercert:
        return None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1 or not isinstance(uris[0], str) or not uris[0].startswith(SPIFFE_SCHEME):
        return None
    return uris[0]


class CertificateMap:
    """Configured (kind, name) -> principal id, compiled once per config load; one lookup per connection.

    Principals are plain ids (a client id, a service name): the caller keeps its own object per id,
    and two names configured for the same id are the same principal.
    """

    __slots__ = ("_by_name",)

    def __init__(self, entries: Iterable[tuple[CertificateName, str]]) -> None:
        self._by_name: dict[CertificateName, str] = dict(entries)

    def __len__(self) -> int:
        return len(self._by_name)

    def principal_for(self, peercert: Mapping[str, Any] | None) -> str:
        """The one principal a verified certificate names; NoCertificate or UnknownCertificate otherwise.

        Every name is looked up; names mapping to two different principals are a refusal.
        """
        if not peercert:
            raise NoCertificate
        found = {principal for key in certificate_names(peercert) if (principal := self._by_name.get(key))}
        if len(found) != 1:
            raise UnknownCertificate
        return next(iter(found))
