"""Client authentication building blocks for the gateway: authorization and API keys.

Pure objects that the gateway's filter chain composes with the token verifier of ``garrison.tokens``
(``tokens.jwks.JwksCache``, ``tokens.jwt.JwtVerifier``): ``authz.Requirement`` checks a route's
scopes, roles and claims on the verified token, and ``apikeys`` stores API keys as hashes and looks
them up.
"""
