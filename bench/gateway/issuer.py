"""A stand-in token issuer for the garrison-chain column: a key made at run time, its JWKS, one token.

The EC P-256 key is generated when the run starts and never leaves this process; its public half is
served as ``{"keys": [...]}`` by a small ``http.server`` thread on 127.0.0.1 (Garrison accepts plain
http for a JWKS on loopback). ``mint`` signs an RFC 9068 access token (ES256, ``typ: at+jwt``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

JWKS_PATH = "/jwks"


def _handler(body: bytes) -> type[BaseHTTPRequestHandler]:
    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != JWKS_PATH:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the gateway fetches rarely; nothing worth printing over the benchmark's output

    return JwksHandler


class Issuer:
    """Serves its JWKS from the moment it is built until ``close`` (or the end of a ``with`` block)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = f"bench-{secrets.token_hex(4)}"
        jwk = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        body = json.dumps({"keys": [jwk]}).encode()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(body))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="bench-jwks", daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    def mint(self, audience: str, scope: str, lifetime: int = 3600) -> str:
        """One access token for `audience` carrying `scope`, valid for `lifetime` seconds from now."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": audience,
            "sub": "bench-client",
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "at+jwt"})

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Issuer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
