"""Baseline: the identity provider's tables as ``create_all`` made them before migrations.

Revision ID: identity_0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0001"
down_revision = None
branch_labels = None
depends_on = None


def baseline_metadata() -> sa.MetaData:
    """The tables of this revision, frozen here (later revisions change the live ones, not these)."""
    metadata = sa.MetaData()
    sa.Table(
        "identity_clients",
        metadata,
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("secret_digest", sa.String(64), nullable=True),  # HMAC-SHA256 under the server pepper
        # client_secret_basic, client_secret_post, private_key_jwt, or none (public clients: PKCE only)
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("jwks", sa.JSON, nullable=True),  # public keys for private_key_jwt
        sa.Column("grant_types", sa.JSON, nullable=False),
        sa.Column("redirect_uris", sa.JSON, nullable=False),
        sa.Column("post_logout_redirect_uris", sa.JSON, nullable=False),
        sa.Column("roles", sa.JSON, nullable=False),  # the scopes it may receive come from these roles
        sa.Column("require_mfa", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    sa.Table(
        "identity_roles",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("description", sa.String(200), nullable=False, default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    sa.Table(
        "identity_users",
        metadata,
        sa.Column("user_id", sa.String(64), primary_key=True),  # the `sub`: random, never reused
        sa.Column("username", sa.String(100), nullable=False, unique=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("password_hash", sa.String(200), nullable=False),  # argon2id, PHC string
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, default=False),
        sa.Column("totp_encrypted", sa.LargeBinary, nullable=True),  # the TOTP seed, encrypted
        sa.Column("totp_confirmed", sa.Boolean, nullable=False, default=False),
        sa.Column("totp_last_step", sa.Integer, nullable=True),  # a code is accepted once per time step
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    sa.Table(
        "identity_recovery_codes",
        metadata,
        sa.Column("code_digest", sa.String(64), primary_key=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey("identity_users.user_id", ondelete="CASCADE"), index=True
        ),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )

    sa.Table(
        "identity_throttle",
        metadata,
        sa.Column("key", sa.String(200), primary_key=True),  # "user:<username>" or "ip:<address>"
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    )

    sa.Table(
        "identity_codes",
        metadata,
        sa.Column("code_digest", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("nonce", sa.String(255), nullable=True),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(10), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amr", sa.JSON, nullable=False),
        sa.Column("family_id", sa.String(64), nullable=False),  # the tokens it leads to; revoked on reuse
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )

    sa.Table(
        "identity_token_families",
        metadata,
        sa.Column("family_id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False, index=True),
        sa.Column("user_id", sa.String(64), nullable=True, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(64), nullable=True),
    )

    sa.Table(
        "identity_refresh_tokens",
        metadata,
        sa.Column("token_digest", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(64), sa.ForeignKey("identity_token_families.family_id"), index=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )

    sa.Table(
        # Access tokens issued inside a family (authorization code, refresh), so reuse detection can
        # revoke them; client_credentials tokens are not recorded (nothing to revoke them with but jti).
        "identity_access_tokens",
        metadata,
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(64), nullable=False, index=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )

    sa.Table(
        "identity_revoked_tokens",
        metadata,
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    )

    sa.Table(
        "identity_signing_keys",
        metadata,
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False
        ),  # published in the JWKS from here
        sa.Column("activates_at", sa.DateTime(timezone=True), nullable=False),  # signs from here
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),  # signs no more from here
        sa.Column("unpublish_at", sa.DateTime(timezone=True), nullable=True),  # leaves the JWKS from here
    )

    sa.Table(
        # private_key_jwt assertions seen, so one cannot be replayed (RFC 7523 §3, item 7).
        "identity_assertion_jtis",
        metadata,
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )

    sa.Table(
        "identity_sessions",
        metadata,
        sa.Column("session_digest", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False, index=True),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amr", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )

    sa.Table(
        "identity_consents",
        metadata,
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )
    return metadata


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind(), checkfirst=False)
