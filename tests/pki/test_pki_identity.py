"""Certificate -> identity mapping, driven with getpeercert()-shaped dictionaries (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from garrison.pki.identity import (
    CertificateMap,
    NoCertificate,
    UnknownCertificate,
    certificate_names,
    spiffe_id,
)


def peercert(sans: list[tuple[str, str]], cn: str | None = None) -> dict[str, Any]:
    subject = ((("commonName", cn),),) if cn else ()
    return {"subjectAltName": tuple(sans), "subject": subject}


def test_names_cover_sans_then_common_name() -> None:
    cert = peercert([("DNS", "a.example"), ("URI", "spiffe://td/svc/a"), ("IP Address", "10.0.0.1")], "a")
    assert certificate_names(cert) == [
        ("dns", "a.example"),
        ("uri", "spiffe://td/svc/a"),
        ("common_name", "a"),
    ]


def test_map_finds_the_one_principal_whatever_name_matches() -> None:
    names = CertificateMap([(("dns", "a.example"), "alpha"), (("common_name", "a"), "alpha")])
    assert names.principal_for(peercert([("DNS", "a.example")], "a")) == "alpha"


def test_map_refuses_a_certificate_naming_two_principals() -> None:
    names = CertificateMap([(("dns", "a.example"), "alpha"), (("common_name", "b"), "beta")])
    with pytest.raises(UnknownCertificate):
        names.principal_for(peercert([("DNS", "a.example")], "b"))


def test_map_refuses_unknown_and_missing_certificates() -> None:
    names = CertificateMap([(("dns", "a.example"), "alpha")])
    with pytest.raises(UnknownCertificate):
        names.principal_for(peercert([("DNS", "b.example")]))
    with pytest.raises(NoCertificate):
        names.principal_for(None)
    with pytest.raises(NoCertificate):
        names.principal_for({})


def test_spiffe_id_is_the_single_spiffe_uri_san() -> None:
    assert spiffe_id(peercert([("URI", "spiffe://td/svc/orders"), ("DNS", "x")])) == "spiffe://td/svc/orders"
    # Two URI SANs is not an SVID: choosing one would let the certificate's holder choose.
    assert spiffe_id(peercert([("URI", "spiffe://td/svc/a"), ("URI", "spiffe://td/svc/b")])) is None
    assert spiffe_id(peercert([("URI", "https://td/svc/a")])) is None
    assert spiffe_id(None) is None
