"""The workload CA's certificates: what they carry, what is refused, and a real mutual-TLS handshake."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from garrison.pki.authority import (
    Authority,
    CsrRefused,
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_workload,
    workload_id,
)
from garrison.pki.identity import spiffe_id

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DOMAIN = "shop.local"


@pytest.fixture(scope="module")
def intermediate() -> Authority:
    return new_intermediate(new_root(DOMAIN, now=NOW), DOMAIN, now=NOW)


def test_a_workload_certificate_is_an_x509_svid(intermediate: Authority) -> None:
    cert = sign_workload(intermediate, request_for(new_key()), workload_id(DOMAIN, "orders"), now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop.local/svc/orders"]
    assert san.get_values_for_type(x509.DNSName) == []
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - NOW == dt.timedelta(hours=1)
    assert cert.issuer == intermediate.certificate.subject


def test_names_asked_for_in_the_csr_are_ignored(intermediate: Authority) -> None:
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://shop.local/svc/payments")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert = sign_workload(intermediate, csr, workload_id(DOMAIN, "orders"), now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop.local/svc/orders"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_refusals(intermediate: Authority) -> None:
    orders = workload_id(DOMAIN, "orders")
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
    )
    with pytest.raises(CsrRefused, match="P-256"):
        sign_workload(intermediate, rsa_csr, orders, now=NOW)
    p384 = request_for(ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]
    with pytest.raises(CsrRefused, match="P-256"):
        sign_workload(intermediate, p384, orders, now=NOW)
    with pytest.raises(CsrRefused, match="root signs intermediates only"):
        sign_workload(new_root(DOMAIN, now=NOW), request_for(new_key()), orders, now=NOW)
    with pytest.raises(CsrRefused, match="trust domain"):
        sign_workload(intermediate, request_for(new_key()), workload_id("evil.local", "orders"), now=NOW)
    with pytest.raises(CsrRefused, match="trust domain"):
        sign_workload(intermediate, request_for(new_key()), "spiffe://shop.local", now=NOW)
    with pytest.raises(CsrRefused, match="between"):
        sign_workload(intermediate, request_for(new_key()), orders, now=NOW, lifetime=dt.timedelta(days=2))


def test_a_csr_signed_by_another_key_is_refused(intermediate: Authority) -> None:
    """Proof of possession: a CSR whose signature does not match its public key is not signed."""
    genuine = request_for(new_key()).public_bytes(serialization.Encoding.DER)
    other = request_for(new_key()).public_bytes(serialization.Encoding.DER)
    # Splice the other CSR's signature onto the first one's body (both are ECDSA over P-256).
    forged = x509.load_der_x509_csr(_with_signature_of(genuine, other))
    with pytest.raises(CsrRefused, match="signature"):
        sign_workload(intermediate, forged, workload_id(DOMAIN, "orders"), now=NOW)


def test_no_certificate_outlives_its_issuer() -> None:
    root = new_root(DOMAIN, now=NOW, lifetime=dt.timedelta(days=10))
    intermediate = new_intermediate(root, DOMAIN, now=NOW, lifetime=dt.timedelta(days=365))
    assert intermediate.certificate.not_valid_after_utc == root.certificate.not_valid_after_utc
    late = NOW + dt.timedelta(days=10) - dt.timedelta(minutes=10)
    cert = sign_workload(intermediate, request_for(new_key()), workload_id(DOMAIN, "a"), now=late)
    assert cert.not_valid_after_utc == intermediate.certificate.not_valid_after_utc


def test_service_names_that_cannot_be_a_path_segment_are_refused() -> None:
    for bad in ["", "..", "a/b", "a b", "é"]:
        with pytest.raises(ValueError, match="service name"):
            workload_id(DOMAIN, bad)
    with pytest.raises(ValueError, match="trust domain"):
        workload_id("Shop.Local", "orders")


def test_repr_shows_no_key(intermediate: Authority) -> None:
    shown = repr(intermediate)
    assert "intermediate" in shown
    assert "PRIVATE" not in shown and "key" not in shown.lower()


@pytest.mark.process
def test_mutual_tls_between_two_workloads_names_each_peer(tmp_path: Path) -> None:
    """OpenSSL verifies both chains to the root; each side reads the other's SPIFFE ID."""
    asyncio.run(_mutual_tls(tmp_path))


async def _mutual_tls(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)  # the handshake checks validity against the real clock
    root = new_root(DOMAIN, now=now)
    issuing = new_intermediate(root, DOMAIN, now=now)
    server_ctx = _context(tmp_path / "server", issuing, root, "payments", ssl.PROTOCOL_TLS_SERVER, now)
    client_ctx = _context(tmp_path / "client", issuing, root, "orders", ssl.PROTOCOL_TLS_CLIENT, now)
    seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(spiffe_id(writer.get_extra_info("peercert")))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        assert spiffe_id(writer.get_extra_info("peercert")) == "spiffe://shop.local/svc/payments"
        assert await asyncio.wait_for(seen, 10) == "spiffe://shop.local/svc/orders"
        writer.close()


@pytest.mark.process
def test_a_certificate_from_another_ca_fails_the_handshake(tmp_path: Path) -> None:
    asyncio.run(_stranger(tmp_path))


async def _stranger(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    root, stranger_root = new_root(DOMAIN, now=now), new_root(DOMAIN, now=now)
    ours, theirs = new_intermediate(root, DOMAIN, now=now), new_intermediate(stranger_root, DOMAIN, now=now)
    accepted: list[str | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(spiffe_id(writer.get_extra_info("peercert")))
        writer.close()

    # A server whose certificate another CA signed: the client refuses it during the handshake.
    impostor = _context(tmp_path / "impostor", theirs, root, "payments", ssl.PROTOCOL_TLS_SERVER, now)
    client = _context(tmp_path / "client", ours, root, "orders", ssl.PROTOCOL_TLS_CLIENT, now)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=impostor)
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1], ssl=client)
    # A client whose certificate another CA signed: the server never hands the connection on.
    genuine = _context(tmp_path / "server", ours, root, "payments", ssl.PROTOCOL_TLS_SERVER, now)
    stranger = _context(tmp_path / "stranger", theirs, root, "orders", ssl.PROTOCOL_TLS_CLIENT, now)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=genuine)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=stranger)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            # TLS 1.3: the refusal comes after the client has sent its Finished.
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert accepted == []


def _context(
    directory: Path, issuing: Authority, root: Authority, service: str, protocol: int, now: dt.datetime
) -> ssl.SSLContext:
    directory.mkdir()
    key = new_key()
    cert = sign_workload(issuing, request_for(key), workload_id(DOMAIN, service), now=now)
    (directory / "cert.pem").write_bytes(pem(cert, *issuing.chain()))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "key.pem").write_bytes(key_pem)
    (directory / "root.pem").write_bytes(pem(root.certificate))
    context = ssl.SSLContext(protocol)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    context.load_verify_locations(directory / "root.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False  # SPIFFE: the peer is named by its URI SAN, checked by the caller
    return context


def _with_signature_of(body_der: bytes, signature_der: bytes) -> bytes:
    """A CSR with ``body_der``'s request info and ``signature_der``'s signature (DER surgery)."""
    body_info, _algorithm, _signature = _sequence_items(body_der)
    _info, algorithm, signature = _sequence_items(signature_der)
    return _der_sequence(body_info + algorithm + signature)


def _sequence_items(der: bytes) -> list[bytes]:
    content = _der_content(der)
    items = []
    while content:
        length = _der_length(content)
        items.append(content[:length])
        content = content[length:]
    return items


def _der_content(der: bytes) -> bytes:
    header = _der_length(der) - len(der)  # 0 for a well-formed single element
    assert header == 0
    if der[1] < 0x80:
        return der[2:]
    size = der[1] & 0x7F
    return der[2 + size :]


def _der_length(der: bytes) -> int:
    """The total length (header included) of the DER element at the start of ``der``."""
    if der[1] < 0x80:
        return 2 + der[1]
    size = der[1] & 0x7F
    return 2 + size + int.from_bytes(der[2 : 2 + size], "big")


def _der_sequence(content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return b"\x30" + bytes([length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(encoded)]) + encoded + content
