"""Tokens and who presents them, shared by the gateway and the identity provider.

``jwks.JwksCache`` holds an issuer's signing keys (each pinned to one algorithm), ``jwt.JwtVerifier``
checks access tokens against them (with a verified-token cache and a revocation check),
``revocations`` holds the revocation sets and their Redis feed, and ``forwarded.TrustedProxies`` finds
the client's address behind trusted proxies.
"""
