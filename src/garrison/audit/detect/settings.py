"""Each rule's effective settings: its built-in default, overridden by ``audit.detection.rules``.

The defaults and their reasons are documented in docs/audit.md ("Detection"); change them there too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from garrison.config.audit_detection import DetectionConfig, RuleConfig

__all__ = ["DEFAULTS", "SIGMA_DEFAULT", "RuleSettings", "settings_for"]


@dataclass(frozen=True, slots=True)
class RuleSettings:
    name: str
    enabled: bool
    threshold: int
    window: float
    severity: str
    responses: tuple[str, ...]
    rate_limit: int
    description: str = ""


def _rule(
    name: str, threshold: int, window: float, severity: str, responses: tuple[str, ...], what: str
) -> RuleSettings:
    return RuleSettings(name, True, threshold, window, severity, responses, 60, what)


DEFAULTS: dict[str, RuleSettings] = {
    r.name: r
    for r in (
        _rule("brute_force_account", 10, 300, "medium", ("lock_account",), "failed sign-ins to one account"),
        _rule("brute_force_ip", 20, 300, "high", ("block_ip",), "failed sign-ins from one address"),
        _rule(
            "credential_stuffing", 5, 600, "high", ("block_ip",), "distinct accounts failing from one address"
        ),
        _rule("mfa_failures", 5, 600, "high", ("lock_account",), "failed second factors for one account"),
        _rule("token_reuse", 1, 600, "high", ("revoke_tokens",), "a spent refresh token presented again"),
        _rule("revoked_token_use", 1, 600, "medium", (), "a revoked token presented"),
        _rule("scanning", 30, 60, "medium", ("block_ip",), "401/403/404 answers to one address"),
        _rule("lateral_movement", 5, 300, "high", ("quarantine_service",), "denied calls from one service"),
        _rule("secret_denied", 3, 600, "high", (), "secret accesses refused by policy for one caller"),
        _rule("new_service_edge", 1, 3600, "medium", (), "a caller -> callee pair outside the baseline"),
    )
}
SIGMA_DEFAULT = RuleSettings("sigma", True, 1, 600, "medium", (), 60, "a Sigma rule matched")


def _apply(base: RuleSettings, override: RuleConfig | None) -> RuleSettings:
    if override is None:
        return base
    changes = {k: v for k, v in override.model_dump().items() if v is not None}
    if "responses" in changes:
        changes["responses"] = tuple(changes["responses"])
    return replace(base, **changes)


def settings_for(config: DetectionConfig, name: str, base: RuleSettings | None = None) -> RuleSettings:
    """The settings of correlation rule ``name``, or of Sigma rule ``name`` (``sigma:<id>``) from
    ``base`` (its level as severity) and the ``sigma`` then ``sigma:<id>`` overrides."""
    if name in DEFAULTS:
        start = replace(DEFAULTS[name], rate_limit=config.rate_limit)
        return _apply(start, config.rules.get(name))
    start = replace(base or SIGMA_DEFAULT, name=name, rate_limit=config.rate_limit)
    return _apply(_apply(start, config.rules.get("sigma")), config.rules.get(name))
