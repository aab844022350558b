"""Keys and certificates shared by every component.

``tls`` builds the hardened server contexts, the ``auto`` local CA and certificates and the
client-certificate options; ``kek`` seals values at rest under a key-encryption key.
"""
