"""Client authentication building blocks for the gateway: JWKS keys, JWT access tokens, authorization.

Pure objects that the gateway's filter chain composes: ``jwks.JwksCache`` holds the issuer's signing
keys (each pinned to one algorithm), ``jwt.JwtVerifier`` checks access tokens against them (with a
verified-token cache and a revocation list), ``authz.Requirement`` checks a route's scopes, roles
and claims on the verified token, and ``apikeys`` stores API keys as hashes and looks them up.
"""
