"""The identity provider's tables (SQLAlchemy Core), on the shared ``store.db.metadata``.

One module holds them all so the schema reads in one place. Conventions:

- Secrets are never stored: client secrets, authorization codes, refresh tokens, recovery codes and
  session ids are kept as hex digests (``*_digest``); private signing keys and TOTP seeds are kept
  encrypted (``*_encrypted``, AES-GCM under the key-encryption key, see identity/keys.py).
- Single use is enforced by the database: a code or refresh token is spent by
  ``UPDATE ... SET used_at = :now WHERE digest = :d AND used_at IS NULL`` and only the caller whose
  update changed one row may go on, so N parallel presentations let at most one succeed.
- Times are timezone-aware UTC (``UTCDateTime``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from garrison.store.db import UTCDateTime, metadata

DIGEST = 64  # hex SHA-256 / HMAC-SHA256

clients = Table(
    "identity_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("secret_digest", String(DIGEST), nullable=True),  # HMAC-SHA256 under the server pepper
    # client_secret_basic, client_secret_post, private_key_jwt, or none (public clients: PKCE only)
    Column("auth_method", String(32), nullable=False),
    Column("jwks", JSON, nullable=True),  # public keys for private_key_jwt
    Column("grant_types", JSON, nullable=False),
    Column("redirect_uris", JSON, nullable=False),
    Column("post_logout_redirect_uris", JSON, nullable=False),
    Column("roles", JSON, nullable=False),  # the scopes it may receive come from these roles
    Column("require_mfa", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

roles = Table(
    "identity_roles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("scopes", JSON, nullable=False),
    Column("description", String(200), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

users = Table(
    "identity_users",
    metadata,
    Column("user_id", String(64), primary_key=True),  # the `sub`: random, never reused
    Column("username", String(100), nullable=False, unique=True),
    Column("email", String(254), nullable=True),
    Column("password_hash", String(200), nullable=False),  # argon2id, PHC string
    Column("roles", JSON, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("totp_encrypted", LargeBinary, nullable=True),  # the TOTP seed, encrypted
    Column("totp_confirmed", Boolean, nullable=False, default=False),
    Column("totp_last_step", Integer, nullable=True),  # a code is accepted once per time step
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

recovery_codes = Table(
    "identity_recovery_codes",
    metadata,
    Column("code_digest", String(DIGEST), primary_key=True),
    Column("user_id", String(64), ForeignKey("identity_users.user_id", ondelete="CASCADE"), index=True),
    Column("used_at", UTCDateTime, nullable=True),
)

throttle = Table(
    "identity_throttle",
    metadata,
    Column("key", String(200), primary_key=True),  # "user:<username>" or "ip:<address>"
    Column("failures", Integer, nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Column("locked_until", UTCDateTime, nullable=True),
)

codes = Table(
    "identity_codes",
    metadata,
    Column("code_digest", String(DIGEST), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("nonce", String(255), nullable=True),
    Column("code_challenge", String(128), nullable=False),
    Column("code_challenge_method", String(10), nullable=False),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("amr", JSON, nullable=False),
    Column("family_id", String(64), nullable=False),  # the tokens it leads to; revoked on reuse
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
)

token_families = Table(
    "identity_token_families",
    metadata,
    Column("family_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False, index=True),
    Column("user_id", String(64), nullable=True, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_reason", String(64), nullable=True),
)

refresh_tokens = Table(
    "identity_refresh_tokens",
    metadata,
    Column("token_digest", String(DIGEST), primary_key=True),
    Column("family_id", String(64), ForeignKey("identity_token_families.family_id"), index=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=True),
    Column("scope", Text, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
)

access_tokens = Table(
    # Access tokens issued inside a family (authorization code, refresh), so reuse detection can
    # revoke them; client_credentials tokens are not recorded (nothing to revoke them with but jti).
    "identity_access_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False, index=True),
    Column("expires_at", UTCDateTime, nullable=False),
)

revoked_tokens = Table(
    "identity_revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("revoked_at", UTCDateTime, nullable=False),
)

signing_keys = Table(
    "identity_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_encrypted", LargeBinary, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),  # published in the JWKS from here
    Column("activates_at", UTCDateTime, nullable=False),  # signs from here
    Column("retired_at", UTCDateTime, nullable=True),  # signs no more from here
    Column("unpublish_at", UTCDateTime, nullable=True),  # leaves the JWKS from here
)

assertion_jtis = Table(
    # private_key_jwt assertions seen, so one cannot be replayed (RFC 7523 §3, item 7).
    "identity_assertion_jtis",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

sessions = Table(
    "identity_sessions",
    metadata,
    Column("session_digest", String(DIGEST), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("amr", JSON, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
)

consents = Table(
    "identity_consents",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("client_id", String(64), primary_key=True),
    Column("scopes", JSON, nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
)

account_locks = Table(
    # Accounts an administrator (or an automated response) has locked until a moment: sign-in is
    # refused as for a throttle lockout (account_locks.py). Bounded by MAX_LOCKS.
    "identity_account_locks",
    metadata,
    Column("username", String(200), primary_key=True),  # as throttle.user_key folds it, without "user:"
    Column("locked_at", UTCDateTime, nullable=False),
    Column("until", UTCDateTime, nullable=False, index=True),
    Column("reason", String(200), nullable=False),
)
