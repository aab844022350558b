"""The identity provider's metrics, scraped from its admin listener's ``/metrics``.

Every label takes values from a fixed set: a client can choose a ``grant_type`` or make an error
happen, but never mint a new time series (anything unknown is counted as ``other``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["IdentityMetrics"]

GRANTS = frozenset({"authorization_code", "client_credentials", "refresh_token"})
# RFC 6749 §5.2, RFC 7009 §2.2.1 and RFC 6750 §3.1 error codes; Garrison's own pages add none here.
ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "unsupported_token_type",
        "invalid_token",
        "insufficient_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
LOGIN_OUTCOMES = frozenset({"success", "failure", "locked", "mfa_success", "mfa_failure", "mfa_locked"})
LIMITS = frozenset({"user", "ip", "otp", "client"})  # throttle key kinds (identity/throttle.py)


def _known(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


class IdentityMetrics:
    """Counters for one provider process, on a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tokens_issued = Counter(
            "garrison_identity_tokens_issued",
            "Tokens issued by the token endpoint, by grant type.",
            ["grant"],
            registry=self.registry,
        )
        self.token_errors = Counter(
            "garrison_identity_token_errors",
            "Token-endpoint requests answered with an OAuth error, by error code.",
            ["error"],
            registry=self.registry,
        )
        self.logins = Counter(
            "garrison_identity_logins",
            "Sign-in checks by outcome (password: success, failure, locked; one-time code: mfa_*).",
            ["outcome"],
            registry=self.registry,
        )
        self.introspections = Counter(
            "garrison_identity_introspections",
            "Token introspections answered, by result (active, inactive).",
            ["result"],
            registry=self.registry,
        )
        self.throttle_refusals = Counter(
            "garrison_identity_throttle_refusals",
            "Attempts refused unchecked because a throttle key is locked, by key kind "
            "(user, ip, otp, client).",
            ["limit"],
            registry=self.registry,
        )

    def token_issued(self, grant: str) -> None:
        self.tokens_issued.labels(_known(grant, GRANTS)).inc()

    def token_error(self, error: str) -> None:
        self.token_errors.labels(_known(error, ERRORS)).inc()

    def login(self, outcome: str) -> None:
        self.logins.labels(_known(outcome, LOGIN_OUTCOMES)).inc()

    def introspection(self, active: bool) -> None:
        self.introspections.labels("active" if active else "inactive").inc()

    def throttle_refused(self, limit: str) -> None:
        self.throttle_refusals.labels(_known(limit, LIMITS)).inc()
