"""Keys and certificates shared by every component.

``tls`` builds the hardened server contexts, the ``auto`` local CA and certificates and the
client-certificate options; ``identity`` maps a verified peer certificate (SAN, CN, SPIFFE ID)
to the principal it names; ``kek`` seals values at rest under a key-encryption key.
"""
