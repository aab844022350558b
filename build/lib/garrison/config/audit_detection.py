"""``audit.detection``: which rules run over the collected events, with which thresholds.

Every rule has a default (docs/audit.md, "Detection", says what each catches and why its threshold
is what it is); ``rules`` overrides any of its settings by name. The names are checked here, so a
misspelt rule is an error rather than a rule silently left at its default. ``sigma`` sets what every
Sigma rule shares; ``sigma:<rule id>`` one Sigma rule (checked when the collector loads the rules).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from garrison.config.common import Strict
from garrison.config.units import Duration

__all__ = ["CORRELATION_RULES", "RESPONSES", "SEVERITIES", "DetectionConfig", "RuleConfig"]

CORRELATION_RULES = (
    "brute_force_account",
    "brute_force_ip",
    "credential_stuffing",
    "mfa_failures",
    "token_reuse",
    "revoked_token_use",
    "scanning",
    "lateral_movement",
    "secret_denied",
    "new_service_edge",
)
SEVERITIES = ("low", "medium", "high", "critical")
RESPONSES = ("block_ip", "revoke_tokens", "quarantine_service", "lock_account")

Severity = Literal["low", "medium", "high", "critical"]
Response = Literal["block_ip", "revoke_tokens", "quarantine_service", "lock_account"]


class RuleConfig(Strict):
    """Overrides of one rule's defaults; an unset field keeps the default."""

    enabled: bool | None = Field(None, description="Run the rule.")
    threshold: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Events (or distinct accounts) within `window` that raise an alert.",
    )
    window: Duration | None = Field(
        None,
        gt=0,
        le=86400,
        description="The sliding window; also how long an alert deduplicates its repeats.",
    )
    severity: Severity | None = Field(None, description="low, medium, high or critical.")
    responses: list[Response] | None = Field(
        None,
        description="Responses the alert names: block_ip, revoke_tokens, quarantine_service, lock_account.",
    )
    rate_limit: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most alerts of this rule per minute; more are counted, not raised.",
    )


class DetectionConfig(Strict):
    """Detection rules over the collected events."""

    enabled: bool = Field(True, description="Run the detection rules.")
    rules: dict[str, RuleConfig] = Field(
        default_factory=dict,
        description="Per-rule overrides by name: " + ", ".join(CORRELATION_RULES) + "; `sigma` for every "
        "Sigma rule, `sigma:<rule id>` for one.",
    )
    sigma_builtin: bool = Field(True, description="Load the curated SigmaHQ web rules shipped with Garrison.")
    sigma_dirs: list[str] = Field(
        default_factory=list,
        description="More directories of Sigma rules (`category: webserver`), relative to the config file.",
    )
    baseline_learning: Duration = Field(
        86400.0,
        gt=0,
        description="How long the service-to-service baseline learns caller -> callee pairs before a new "
        "pair raises an alert (from the first pair seen; kept in state_dir/audit/baseline.json).",
    )
    rate_limit: int = Field(60, ge=1, le=100_000, description="Most alerts per rule per minute (default).")
    max_keys: int = Field(
        10_000, ge=100, le=10_000_000, description="Keys (accounts, addresses, services) each rule tracks."
    )
    max_baseline_edges: int = Field(10_000, ge=10, le=1_000_000, description="Pairs the baseline holds.")
    max_suppressions: int = Field(1000, ge=1, le=100_000, description="Suppressions in force at once.")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, RuleConfig]) -> dict[str, RuleConfig]:
        for name in value:
            if name not in CORRELATION_RULES and name != "sigma" and not name.startswith("sigma:"):
                raise ValueError(
                    f"unknown rule {name!r}: one of {', '.join(CORRELATION_RULES)}, sigma or sigma:<rule id>"
                )
        return value
