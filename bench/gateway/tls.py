"""TLS for the gateway benchmark's TLS columns: the run's certificate, and checks of what was negotiated.

Both TLS proxies (nginx and Garrison) present the same certificate, made at run time in the run's
temporary directory with garrison.pki.authority (EC P-256: a root, an intermediate and a server
certificate for 127.0.0.1 and localhost, as Garrison's own `auto` certificates are); the key is
written 0600 and removed with the directory. None is ever committed.

A "same run, same work" comparison needs the same handshake on both sides: `negotiated` asks
`openssl s_client` what a fresh connection gets (protocol, cipher suite, key-exchange group),
`resumes` whether a second connection resumes the first one's session (wrk tries to: it keeps the
session across reconnects), and `closes_after_answer` checks that a column asked for a new
connection per request really closes it after each answer (wrk only reconnects when a response is
not keep-alive).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from garrison.pki.authority import new_intermediate, new_key, new_root, pem, sign_server

TRUST_DOMAIN = "bench.local"
LIFETIME = dt.timedelta(hours=4)
CLOSE_TIMEOUT = 5.0  # seconds a server may take to close a connection after answering


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the root, to check the servers' certificate
    cert: Path  # the server certificate and the intermediate
    key: Path  # its private key (0600)


def make_certificate(directory: Path) -> TlsFiles:
    """One server certificate (EC P-256) for 127.0.0.1 and localhost, with its chain, in directory."""
    now = dt.datetime.now(dt.UTC)
    root = new_root(TRUST_DOMAIN, now=now)
    ca = new_intermediate(root, TRUST_DOMAIN, now=now)
    key = new_key()
    cert = sign_server(
        ca,
        key.public_key(),
        f"spiffe://{TRUST_DOMAIN}/gateway",
        dns_names=["localhost"],
        addresses=["127.0.0.1"],
        now=now,
        lifetime=LIFETIME,
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(pem(root.certificate))
    files.cert.write_bytes(pem(cert, *ca.chain()))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    return files


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that checks the run's certificate (for readiness checks, not for the load)."""
    return ssl.create_default_context(cafile=str(ca))


_BRIEF = {
    "protocol": re.compile(r"^Protocol version: (\S+)", re.MULTILINE),
    "cipher": re.compile(r"^Ciphersuite: (\S+)", re.MULTILINE),
    # OpenSSL 3.0 prints the group as "Server Temp Key: X25519, 253 bits"; later ones "Negotiated ... group".
    "group": re.compile(
        r"^(?:Server|Peer) Temp Key: ([^,\n]+)|^Negotiated TLS1\.3 group: (\S+)", re.MULTILINE
    ),
}


def parse_brief(text: str) -> str:
    """ "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519" from `openssl s_client -brief` output ("?": not found)."""
    parts = []
    for pattern in _BRIEF.values():
        match = pattern.search(text)
        parts.append(next((g for g in match.groups() if g), "?") if match else "?")
    return " ".join(parts)


def negotiated(address: str, ca: Path) -> str:
    """What a fresh TLS connection to address negotiates, as `openssl s_client` sees it (a full handshake)."""
    argv = [
        "openssl",
        "s_client",
        "-brief",
        "-connect",
        address,
        "-CAfile",
        str(ca),
        "-servername",
        "localhost",
    ]
    try:
        done = subprocess.run(argv, input="", capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (openssl s_client: {exc})"
    return parse_brief(done.stderr + done.stdout)


def closes_after_answer(address: str, ca: Path | None, headers: dict[str, str]) -> str | None:
    """None if the server answers GET / (sent with headers) and then closes the connection; else why not."""
    host, port = address.rsplit(":", 1)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET / HTTP/1.1\r\nHost: {address}\r\n{head}\r\n".encode()
    try:
        with socket.create_connection((host, int(port)), timeout=CLOSE_TIMEOUT) as raw:
            sock = client_context(ca).wrap_socket(raw, server_hostname=host) if ca else raw
            sock.sendall(request)
            received = b""
            while chunk := _recv(sock):
                received += chunk
    except TimeoutError:
        return f"kept the connection open {CLOSE_TIMEOUT:.0f} s after answering"
    except (OSError, ssl.SSLError) as exc:
        return f"GET / failed: {exc}"
    if not received.startswith(b"HTTP/1.1 200"):
        return f"GET / answered {received[:60]!r}"
    return None


def _recv(sock: socket.socket) -> bytes:
    """What the server sent next; b"" once it closed (with or without a TLS close_notify)."""
    try:
        return sock.recv(65536)
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return b""


def resumes(address: str, ca: Path) -> bool:
    """Whether a second connection resumes the session of a first one (a TLS 1.3 ticket or a cached
    session), as wrk's reconnects try to: it keeps its session across reconnects."""
    host, port = address.rsplit(":", 1)
    context = client_context(ca)
    request = f"GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
    session = None
    for _ in range(2):
        with (
            socket.create_connection((host, int(port)), timeout=CLOSE_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host, session=session) as sock,
        ):
            sock.sendall(request)
            while _recv(sock):  # read to the end: TLS 1.3 tickets come after the handshake
                pass
            if session is not None:
                return bool(sock.session_reused)
            session = sock.session
    return False
