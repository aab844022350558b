"""What a workload reads of its own certificate (SPIFFE ID, validity), without ``cryptography``.

Why by hand: ``cryptography`` costs a long-lived process about 10 MB resident (its Rust extension and
the X.509 modules), and a sidecar needs three fields of one certificate it already trusts (its own,
from its CA or its operator; peers' certificates are verified by OpenSSL and read through
``getpeercert()``). So this reads exactly those fields from the DER: the validity and the URI SANs of
the first certificate in a PEM file. Everything is bounds-checked; anything unexpected is a
``ValueError``, never a guess. Certificates are built and verified elsewhere (pki/authority.py in
short-lived or CA processes, OpenSSL in handshakes).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass

from garrison.pki.identity import spiffe_id

__all__ = ["CertificateInfo", "certificate_info", "leaf_info"]

_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
_SEQUENCE, _OID, _OCTET_STRING = 0x30, 0x06, 0x04
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_VERSION, _EXTENSIONS, _URI = 0xA0, 0xA3, 0x86  # [0] EXPLICIT, [3] EXPLICIT, GeneralName [6] IMPLICIT
_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


@dataclass(frozen=True)
class CertificateInfo:
    """The fields of a workload certificate its holder acts on."""

    spiffe_id: str | None  # its single spiffe:// URI SAN (pki/identity.spiffe_id's rule), else None
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime


def leaf_info(pem: bytes) -> CertificateInfo:
    """The first certificate of a PEM file (a chain, possibly followed by its key)."""
    start = pem.find(_BEGIN)
    end = pem.find(_END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate found")
    try:
        der = base64.b64decode(b"".join(pem[start + len(_BEGIN) : end].split()), validate=True)
    except binascii.Error:
        raise ValueError("a PEM certificate that is not base64") from None
    return certificate_info(der)


def certificate_info(der: bytes) -> CertificateInfo:
    """The SPIFFE ID and validity of one DER certificate (RFC 5280 §4.1)."""
    tag, start, end = _tlv(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("not a DER certificate")
    tag, start, end = _tlv(der, start)  # tbsCertificate
    if tag != _SEQUENCE:
        raise ValueError("not a DER certificate")
    fields = _children(der, start, end)
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) < 6:  # serial, signature, issuer, validity, subject, subjectPublicKeyInfo
        raise ValueError("a truncated certificate")
    validity = _children(der, fields[3][1], fields[3][2])
    if fields[3][0] != _SEQUENCE or len(validity) != 2:
        raise ValueError("a certificate without a validity")
    uris: list[str] = []
    for tag, start, end in fields[6:]:
        if tag == _EXTENSIONS:
            uris = _uris(der, start, end)
    return CertificateInfo(
        spiffe_id({"subjectAltName": [("URI", uri) for uri in uris]}),
        _time(der, *validity[0]),
        _time(der, *validity[1]),
    )


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at ``at``: its value is ``data[start:end]``."""
    if at + 2 > len(data):
        raise ValueError("a truncated DER element")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or at + count > len(data):
            raise ValueError("a DER length out of range")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("a truncated DER element")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    while start < end:
        element = _tlv(data, start)
        if element[2] > end:
            raise ValueError("a DER element overruns its parent")
        found.append(element)
        start = element[2]
    return found


def _uris(data: bytes, start: int, end: int) -> list[str]:
    """The URI SANs in ``[3] { SEQUENCE OF Extension }``."""
    outer = _children(data, start, end)
    if len(outer) != 1 or outer[0][0] != _SEQUENCE:
        raise ValueError("malformed extensions")
    for tag, first, last in _children(data, outer[0][1], outer[0][2]):
        parts = _children(data, first, last)  # extnID, critical (optional), extnValue
        if tag != _SEQUENCE or len(parts) < 2 or parts[0][0] != _OID:
            raise ValueError("a malformed extension")
        if data[parts[0][1] : parts[0][2]] != _SUBJECT_ALT_NAME:
            continue
        value = parts[-1]
        if value[0] != _OCTET_STRING:
            raise ValueError("a malformed extension")
        names = _children(data, value[1], value[2])
        if len(names) != 1 or names[0][0] != _SEQUENCE:
            raise ValueError("a malformed subjectAltName")
        general_names = _children(data, names[0][1], names[0][2])
        return [data[s:e].decode("ascii") for kind, s, e in general_names if kind == _URI]
    return []


def _time(data: bytes, tag: int, start: int, end: int) -> dt.datetime:
    """UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as DER has them."""
    text = data[start:end].decode("ascii")
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError("a certificate time in an unexpected form")
    if not text.endswith("Z") or not text[:-1].isdigit():
        raise ValueError("a certificate time in an unexpected form")
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(4, 14, 2))
    return dt.datetime(int(text[:4]), month, day, hour, minute, second, tzinfo=dt.UTC)
