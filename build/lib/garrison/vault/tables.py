"""The vault's tables (SQLAlchemy Core), on the shared ``store.db.metadata``.

- ``vault_entries``: everything the vault keeps (secrets, token entries, policies, engine state), one row
  per storage path, the value sealed by the barrier (barrier.py) with the path as associated data. The
  paths themselves are not secret by design (``kv/secret/...``, digests of tokens), as in Vault.
- ``vault_core``: what must be read before the barrier opens: the seal configuration (shares and
  threshold, in clear), the root key sealed under the unseal key, the keyring sealed under the root key.
"""

from __future__ import annotations

from sqlalchemy import Column, LargeBinary, String, Table

from garrison.store.db import metadata

entries = Table(
    "vault_entries",
    metadata,
    Column("path", String(1024), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

core = Table(
    "vault_core",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
