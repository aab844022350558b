"""pki/certinfo: the SPIFFE ID and validity read from DER by hand, compared with what ``cryptography``
reads from the same certificates (built here with every shape the reader must tell apart)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from garrison.pki.authority import new_intermediate, new_key, new_root, pem, request_for, sign_workload
from garrison.pki.certinfo import certificate_info, leaf_info

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)


def certificate(
    sans: list[x509.GeneralName] | None,
    not_before: dt.datetime = NOW,
    not_after: dt.datetime = NOW + dt.timedelta(hours=1),
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return builder.sign(key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_workload_certificate_from_the_authority_with_its_chain_and_key() -> None:
    root = new_root("shop.local", now=NOW)
    intermediate = new_intermediate(root, "shop.local", now=NOW)
    key = new_key()
    leaf = sign_workload(intermediate, request_for(key), "spiffe://shop.local/svc/orders", now=NOW)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = leaf_info(pem(leaf, intermediate.certificate) + key_pem)  # identity.pem's layout
    assert info.spiffe_id == "spiffe://shop.local/svc/orders"
    assert info.not_before == leaf.not_valid_before_utc
    assert info.not_after == leaf.not_valid_after_utc


@pytest.mark.parametrize(
    ("sans", "expected"),
    [
        ([x509.UniformResourceIdentifier("spiffe://td/svc/a")], "spiffe://td/svc/a"),
        (
            [x509.DNSName("a.example"), x509.UniformResourceIdentifier("spiffe://td/svc/a")],
            "spiffe://td/svc/a",
        ),
        (
            [
                x509.UniformResourceIdentifier("spiffe://td/svc/a"),
                x509.UniformResourceIdentifier("spiffe://td/b"),
            ],
            None,  # two URI SANs: not an SVID
        ),
        ([x509.UniformResourceIdentifier("https://td/svc/a")], None),
        ([x509.DNSName("a.example")], None),
        (None, None),  # no SAN extension at all
    ],
)
def test_the_spiffe_id_follows_the_svid_rule(
    sans: list[x509.GeneralName] | None, expected: str | None
) -> None:
    assert certificate_info(der(certificate(sans))).spiffe_id == expected


def test_both_time_encodings() -> None:
    # UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)
    late = dt.datetime(2051, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    early = dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    info = certificate_info(der(certificate(None, early, late)))
    assert (info.not_before, info.not_after) == (early, late)


def test_malformed_input_is_a_value_error() -> None:
    good = der(certificate([x509.UniformResourceIdentifier("spiffe://td/svc/a")]))
    for bad in (b"", good[:-1], good[:40], b"\x30\x84\xff\xff\xff\xff" + good[2:], good + b"\x00"):
        with pytest.raises(ValueError):
            certificate_info(bad)
    with pytest.raises(ValueError, match="no PEM certificate"):
        key_only = new_key().private_bytes(  # generated here: a PEM file with a key and no certificate
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        leaf_info(key_only)
    with pytest.raises(ValueError, match="base64"):
        leaf_info(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_reader(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        certificate_info(data)


@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255))
def test_a_corrupted_certificate_reads_as_before_or_fails_cleanly(at: int, value: int) -> None:
    good = bytearray(der(CORRUPTIBLE))
    good[at % len(good)] = value
    with contextlib.suppress(ValueError):
        certificate_info(bytes(good))


CORRUPTIBLE = certificate([x509.UniformResourceIdentifier("spiffe://td/svc/a")])
