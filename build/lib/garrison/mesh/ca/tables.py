"""The CA's tables (SQLAlchemy Core), on the shared ``store.db.metadata``.

- ``mesh_join_tokens``: one-time tokens a workload presents once to get its first certificate. Only a
  keyed digest of the token is stored (HMAC-SHA256 under the KEK's digest key), so a copy of the
  database cannot be used to join. Single use is enforced by the database:
  ``UPDATE ... SET used_at = :now WHERE digest = :d AND used_at IS NULL AND expires_at > :now``, and
  only the caller whose update changed one row gets a certificate.
- ``mesh_certificates``: every certificate issued (serial, SPIFFE ID, validity, how it was obtained),
  for audit and to answer "what does this service hold".
- ``mesh_revocations``: identities cut off; a revoked SPIFFE ID gets no renewal and its peers refuse it.
- ``mesh_quarantine``: services cut off from every peer by their sidecars (``garrison quarantine``).
- ``mesh_state``: one row, the version of what ``/v1/state`` publishes (revocations, quarantine, trust
  bundle). It moves on every change and lives in the database so a restarted CA never goes back to a
  version sidecars have already seen.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table

from garrison.store.db import UTCDateTime, metadata

DIGEST = 64

join_tokens = Table(
    "mesh_join_tokens",
    metadata,
    Column("digest", String(DIGEST), primary_key=True),
    Column("spiffe_id", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
)

certificates = Table(
    "mesh_certificates",
    metadata,
    Column("serial", String(40), primary_key=True),  # hex; random 159-bit serials
    Column("spiffe_id", String(255), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("obtained_by", String(16), nullable=False),  # "join" or "renewal"
    Index("mesh_certificates_by_identity", "spiffe_id", "not_after"),
)

revocations = Table(
    "mesh_revocations",
    metadata,
    Column("spiffe_id", String(255), primary_key=True),
    Column("revoked_at", UTCDateTime, nullable=False),
    Column("reason", String(200), nullable=False),
)

quarantine = Table(
    "mesh_quarantine",
    metadata,
    Column("service", String(63), primary_key=True),
    Column("quarantined_at", UTCDateTime, nullable=False),
    Column("reason", String(200), nullable=False),
)

state = Table(
    "mesh_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("version", BigInteger, nullable=False),
    Column("bundle_digest", String(64), nullable=False),  # SHA-256 of the bundle the version covers
)
