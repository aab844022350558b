"""A JWKS server on loopback with its own ES256 keys, minting access tokens for tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

AUDIENCE = "shop-api"


class Issuer:
    """A JWKS server on loopback with its own ES256 keys; counts JWKS fetches.

    ``Issuer(port=held_port, serve=False)`` has its URL and keys (tokens can be minted) but nothing
    listens until ``serve()``: an issuer that is down, then comes up. ``held_port`` (tests/conftest.py)
    keeps the port from anyone else meanwhile; ``http.server`` binds with SO_REUSEADDR, so ``serve()``
    can still take it.
    """

    def __init__(self, port: int = 0, serve: bool = True) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.fetches = 0
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.add_key("k1")
        if serve:
            self.serve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                jwks = {"keys": [issuer.public_jwk(kid) for kid in issuer.keys]}
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def public_jwk(self, kid: str) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key()))
        return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "user-42",
            "client_id": "web",
            "scope": "orders:read",
            "iat": now,
            "exp": now + 300,
            "jti": f"t-{now}-{len(claims)}",
            **claims,
        }
        return jwt.encode(payload, self.keys[kid], "ES256", headers={"kid": kid, "typ": "at+jwt"})

    def stop(self) -> None:
        """Stop serving (new connections are refused); ``serve()`` starts again on the same port."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
